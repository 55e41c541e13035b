"""Exceptions shared across sd_core."""

from __future__ import annotations


class Cancelled(Exception):
    """Raised by a progress callback to stop a run. Samplers do not catch it: it reaches the caller unchanged."""


class Interrupted(Exception):
    """Raised by a progress callback to stop sampling early and finish with what there is: the run's images are made
    from the model's latest clean estimate (A1111's "interrupt"), flagged `info["interrupted"] = True`."""
