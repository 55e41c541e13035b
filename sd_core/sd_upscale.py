"""A1111's "SD upscale", on tiled denoising: enlarge an image with an upscaler, then img2img the whole enlarged
image in overlapping tiles the model's size (`GenerationSettings.tile`).

    from sd_core import TileOptions, sd_upscale
    big = sd_upscale.upscale(image, 2, "Lanczos")
    out = pipe.img2img(big, "a red brick wall", strength=0.3, tile=TileOptions(512, 512, overlap=64))[0]

A1111's script runs an independent img2img per tile and pastes the tiles back with a feathered overlap, so tiles
that disagree leave seams; here every step of one img2img sees the tiles' blended estimate, so neighbouring tiles
agree on the overlap (MultiDiffusion, `sd_core.tiled_denoising`) and one noise field covers the whole image.
"""

from __future__ import annotations

from PIL import Image

from . import upscalers


def upscale(
    image: Image.Image, scale: float, upscaler: str | upscalers.Upscaler = "Lanczos", seamless: str | None = None
) -> Image.Image:
    """`image` enlarged by `scale` with `upscaler` (a pixel upscaler's name, or an `upscalers.Upscaler`, e.g. a model
    from `upscalers.Upscalers(folders).find(name)`) to A1111's size (each side times `scale`, floored to a multiple
    of 8); "None" leaves it as it is, as in A1111's script. `seamless` ("x", "y", "xy"): the image wraps on those
    axes, and so does the result (the upscaler sees the far edge's pixels across the wrap)."""
    found = upscaler if isinstance(upscaler, upscalers.Upscaler) else upscalers.find(upscaler)
    if found.name == upscalers.NONE:
        return image
    if not seamless:
        return found.upscale(image, scale)
    w, h = image.size
    return upscalers.resize(image, int(w * scale // 8 * 8), int(h * scale // 8 * 8), found, seamless=seamless)
