"""`sd_core.sd_upscale.upscale`: A1111's sizes, "None" as A1111's script, and a seamless image still seamless."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sd_core import sd_upscale, upscalers
from sd_core.training import evaluate
from sd_core.training.data import TextureSpec

TEXTURES = [TextureSpec("checkerboard", "blue", "yellow", "small"), TextureSpec("bricks", "red", "white", "large")]


def texture(spec: TextureSpec, size: int = 64) -> Image.Image:
    return Image.fromarray(evaluate.reference_texture(spec, 0, size))


def test_sizes_are_a1111s_and_none_keeps_the_image():
    img = Image.new("RGB", (100, 60), "red")
    for seamless in (None, "x", "xy"):
        assert sd_upscale.upscale(img, 1.5, "Lanczos", seamless).size == (144, 88)  # floored to multiples of 8
        assert sd_upscale.upscale(img, 2, "None", seamless) is img
    assert sd_upscale.upscale(img, 2, "Nearest").size == upscalers.find("Nearest").upscale(img, 2).size


def test_a_seamless_image_upscales_seamless():
    """The wrap-aware upscale is the middle of the upscaled 3x3 tiling (the image as it repeats); a plain upscale
    sees the image's border at the wrap edge instead, and the seam measure shows it."""
    wrapped, plain = [], []
    for spec in TEXTURES:
        img = texture(spec)
        ours = np.asarray(sd_upscale.upscale(img, 2, "Lanczos", "xy"), dtype=np.float64)
        tiled = Image.new("RGB", (192, 192))
        for x in range(3):
            for y in range(3):
                tiled.paste(img, (64 * x, 64 * y))
        middle = np.asarray(tiled.resize((384, 384), Image.Resampling.LANCZOS), dtype=np.float64)[128:256, 128:256]
        assert np.abs(ours - middle).mean() < 1.0
        wrapped.append(ours)
        plain.append(np.asarray(sd_upscale.upscale(img, 2, "Lanczos")))
    assert evaluate.wrap_ratio(wrapped) < evaluate.wrap_ratio(plain)  # measured 0.77 and 1.32


def test_one_axis_wraps_the_other_is_a1111s():
    """Seamless in x only: the middle of the upscaled 3x1 tiling (the plain upscale's edges at the top and bottom)."""
    img = texture(TEXTURES[1])
    x_only = np.asarray(sd_upscale.upscale(img, 2, "Lanczos", "x"), dtype=np.float64)
    row = Image.new("RGB", (192, 64))
    for x in range(3):
        row.paste(img, (64 * x, 0))
    middle = np.asarray(row.resize((384, 128), Image.Resampling.LANCZOS), dtype=np.float64)[:, 128:256]
    assert np.abs(x_only - middle).mean() < 1.0
