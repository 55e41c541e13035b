"""`LoraError`, on its own so that every module of the package can raise it."""

from __future__ import annotations


class LoraError(ValueError):
    """A LoRA that cannot be applied: the message names the file (or the name asked for) and why."""
