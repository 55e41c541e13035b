"""Exceptions shared across sd_core."""

from __future__ import annotations


class Cancelled(Exception):
    """Raised by a progress callback to stop a run. Samplers do not catch it: it reaches the caller unchanged."""
