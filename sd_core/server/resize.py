"""Init images and masks as A1111 prepares them before img2img: transparency flattened, masks made from alpha or
luminance. Fitting them to the size (`resize_mode` 0-2) is the engine's `sd_core.resize.fit` (`img2img.fit`);
resize mode 3 ("Just resize (latent upscale)") is the engine's `resize_mode="latent"` (the image encoded at its own
size, the latents resized), refused with a mask (`refusals.py`).
"""

from __future__ import annotations

from PIL import Image


def flatten(img: Image.Image, background: str) -> Image.Image:
    """RGB: transparent parts of an RGBA image laid over `background` (A1111's `img2img_background_color`)."""
    if img.mode == "RGBA":
        base = Image.new("RGBA", img.size, background)
        base.paste(img, mask=img)
        return base.convert("RGB")
    return img.convert("RGB")


def to_mask(img: Image.Image, round_alpha: bool) -> Image.Image:
    """A mask image -> L, white = repaint: an RGBA mask with any transparency is its alpha channel (hard at 128 with
    A1111's `mask_round`), anything else its luminance."""
    if img.mode == "RGBA" and img.getextrema()[-1] != (255, 255):
        alpha = img.getchannel("A")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round_alpha else alpha
    return img.convert("L")
