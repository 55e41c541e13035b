"""Init images and masks as A1111 prepares them before img2img: flattened, turned into a mask, fitted to the size.

`resize_mode` (A1111's four modes; the first three are done here, on pixels):

- 0 "Just resize": stretched to width x height.
- 1 "Crop and resize": scaled to cover width x height, centred, the overflow cropped.
- 2 "Resize and fill": scaled to fit inside, centred, the gaps filled by stretching the edge rows or columns.
- 3 "Just resize (latent upscale)": done by the engine (`resize_mode="latent"`: the image encoded at its own size,
  the latents resized); with a mask it is refused for now (`refusals.py`).

Enlarging goes through the `upscaler_for_img2img` setting's upscaler when one is chosen (`upscalers.resize`).
"""

from __future__ import annotations

from PIL import Image

from . import upscalers


def fit(
    mode: int, img: Image.Image, width: int, height: int, upscaler: upscalers.Upscaler | str | None = None
) -> Image.Image:
    """`img` brought to width x height by A1111 resize mode 0, 1 or 2 (enlarged through `upscaler`: a pixel
    upscaler's name, or a model upscaler); a mask (mode L) stays a mask."""
    if mode == 0:
        return upscalers.resize(img, width, height, upscaler)
    wide = width / height > img.width / img.height  # the target is wider than the image
    if (mode == 1) == wide:  # cover (crop) a wider target, or fit a taller one: full width
        w, h = width, img.height * width // img.width
    else:
        w, h = img.width * height // img.height, height
    scaled = upscalers.resize(img, w, h, upscaler)
    out = Image.new("RGB", (width, height))
    left, top = width // 2 - w // 2, height // 2 - h // 2
    out.paste(scaled, (left, top))
    if mode != 1:  # fill the bands around the fitted image by stretching its outermost rows or columns
        if top > 0:
            out.paste(scaled.resize((width, top), box=(0, 0, width, 0)), (0, 0))
            out.paste(scaled.resize((width, top), box=(0, h, width, h)), (0, top + h))
        elif left > 0:
            out.paste(scaled.resize((left, height), box=(0, 0, 0, height)), (0, 0))
            out.paste(scaled.resize((left, height), box=(w, 0, w, height)), (left + w, 0))
    return out.convert("L") if img.mode == "L" else out


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
