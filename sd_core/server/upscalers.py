"""The server's view of the engine's upscalers (`sd_core.upscalers`): A1111's list shape, and a 422 naming the
request field for an unknown name."""

from __future__ import annotations

from typing import Any

from sd_core import limits, upscalers
from sd_core.upscalers import NONE, REGISTRY, Upscaler, resize

from .errors import invalid

__all__ = ["NONE", "REGISTRY", "Upscaler", "get", "items", "resize"]


def items() -> list[dict[str, Any]]:
    return [u.item() for u in REGISTRY.values()]


def get(name: str, field: str) -> Upscaler:
    """The upscaler called `name` (exactly, as A1111), or a 422 naming `field` and listing the ones there are."""
    try:
        return upscalers.find(name, field)
    except limits.SettingError as exc:
        raise invalid(field, str(exc)) from None
