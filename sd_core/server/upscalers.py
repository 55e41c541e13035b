"""The server's view of the engine's upscalers (`sd_core.upscalers`): the ones a request can use (the pixel ones, then
the ESRGAN-family files of `--upscaler-dir`, read afresh for each request so that new files show without a restart),
A1111's list shapes, and a 422 naming the request field for a name that is not there or a file that is not usable."""

from __future__ import annotations

from typing import Any

from sd_core import limits, upscalers
from sd_core.upscalers import BUILTIN, NONE, REGISTRY, Upscaler, Upscalers, resize

from .api_error import invalid
from .settings import ServerSettings

__all__ = ["NONE", "REGISTRY", "Upscaler", "Upscalers", "available", "get", "items", "realesrgan_items", "resize"]


def available(settings: ServerSettings | None) -> Upscalers:
    """The upscalers of one request: the pixel ones and the models of the server's upscaler folders, run on its
    device (the CPU when it names none); the folders are read when first needed."""
    if settings is None or not settings.upscaler_dirs:
        return BUILTIN
    return Upscalers(settings.upscaler_dirs, settings.device)


def items(choices: Upscalers = BUILTIN) -> list[dict[str, Any]]:
    """A1111's `/sdapi/v1/upscalers`: the pixel upscalers, then the models."""
    return [u.item() for u in choices.all().values()]


def realesrgan_items(choices: Upscalers = BUILTIN) -> list[dict[str, Any]]:
    """A1111's `/sdapi/v1/realesrgan-models`: the models in the Real-ESRGAN (BasicSR) key layout."""
    return [
        {"name": u.name, "path": u.model_path, "scale": u.scale}
        for u in choices.models
        if u.model_name == upscalers.BASICSR
    ]


def get(name: str, field: str, choices: Upscalers = BUILTIN) -> Upscaler:
    """The upscaler called `name` (exactly, as A1111), or a 422 naming `field` and listing the ones there are (or
    naming the file of that name that is not usable, and why)."""
    try:
        return upscalers.find(name, field, choices)
    except limits.SettingError as exc:
        raise invalid(field, str(exc)) from None
