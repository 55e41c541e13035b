"""Upscalers, in one place for the engine, the CLI and the server: A1111's pixel upscalers and its latent modes.

Pixel upscalers (`find(name)`): "None" (a plain Lanczos resize when resizing to a size; no upscale at all in
extras), "Lanczos" and "Nearest", and model upscalers (the ESRGAN family) added to `REGISTRY`. Each upscales as
A1111's `Upscaler.upscale` does: the target is the scaled size floored to a multiple of 8; the upscaler's own step
runs (up to three times while short of the target, once when the scale is 1), and whatever size it reached is
Lanczos-resized to the target. Latent modes (`latent.LATENT_MODES`) resize latents instead of pixels (hires fix,
img2img's latent upscale).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..limits import SettingError

Step = Callable[[Image.Image, float], Image.Image]
NONE = "None"


@dataclass(frozen=True)
class Upscaler:
    """One entry of A1111's upscaler list; `step` enlarges an image by about `scale` (None: leaves it as it is)."""

    name: str
    step: Step | None = None
    scale: float = 4
    model_name: str | None = None
    model_path: str | None = None

    def item(self) -> dict[str, Any]:
        """The A1111 `/sdapi/v1/upscalers` entry."""
        return {
            "name": self.name,
            "model_name": self.model_name,
            "model_path": self.model_path,
            "model_url": None,
            "scale": self.scale,
        }

    def upscale(self, img: Image.Image, scale: float) -> Image.Image:
        """`img` scaled by `scale` to A1111's target size (floored to a multiple of 8)."""
        target = (int(img.width * scale // 8 * 8), int(img.height * scale // 8 * 8))
        if target[0] < 1 or target[1] < 1:
            raise ValueError(f"scaling {img.width}x{img.height} by {scale:g} leaves no pixels")
        for attempt in range(3):
            if self.step is None:
                break
            if img.width >= target[0] and img.height >= target[1] and (attempt > 0 or scale != 1):
                break
            before = img.size
            img = self.step(img, scale)
            if img.size == before:
                break
        if img.size != target:
            img = img.resize(target, Image.Resampling.LANCZOS)
        return img


def _resampler(method: Image.Resampling) -> Step:
    def step(img: Image.Image, scale: float) -> Image.Image:
        return img.resize((int(img.width * scale), int(img.height * scale)), method)

    return step


REGISTRY: dict[str, Upscaler] = {
    u.name: u
    for u in (
        Upscaler(NONE),
        Upscaler("Lanczos", _resampler(Image.Resampling.LANCZOS)),
        Upscaler("Nearest", _resampler(Image.Resampling.NEAREST)),
    )
}


def find(name: str, setting: str = "upscaler") -> Upscaler:
    """The upscaler called `name` (exactly, as A1111), or a `SettingError` naming `setting` and listing them."""
    found = REGISTRY.get(name)
    if found is None:
        raise SettingError(
            setting, f"{setting}: could not find upscaler named {name!r}; upscalers: {', '.join(REGISTRY)}"
        )
    return found


def resize(img: Image.Image, width: int, height: int, upscaler: str | None) -> Image.Image:
    """A1111's resize inside `resize_image`: Lanczos, except that an enlargement goes through `upscaler` first (a
    model upscaler, or one of the pixel ones) when one is chosen; masks (mode L) are always resized with Lanczos."""
    if upscaler is None or upscaler == NONE or img.mode == "L":
        return img.resize((width, height), Image.Resampling.LANCZOS)
    scale = max(width / img.width, height / img.height)
    if scale > 1.0:
        img = find(upscaler).upscale(img, scale)
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    return img
