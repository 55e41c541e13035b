"""A1111's resize modes: an input picture (or mask) brought to the generation size before img2img or inpainting.

`fit(img, width, height, mode, upscaler)`, `mode` one of `limits.RESIZE_MODES` (A1111's `resize_mode` 0-2):

- "resize" (0, "Just resize"): stretched to width x height.
- "crop" (1, "Crop and resize"): scaled to cover width x height, centred, the overflow cropped.
- "fill" (2, "Resize and fill"): scaled to fit inside, centred, the bands around it filled by stretching the fitted
  picture's outermost rows or columns.

The scaling itself is A1111's (`upscalers.resize`): Lanczos, an enlargement going through `upscaler` first when one
is named (masks always Lanczos). A picture keeps its PIL mode, so a mask ("L" or "F") stays a mask. The engine fits
its input with it (`sd_core.modes`), the server its init images and masks.
"""

from __future__ import annotations

from PIL import Image

from . import limits, upscalers


def fit(
    img: Image.Image, width: int, height: int, mode: str = "resize", upscaler: upscalers.Upscaler | str | None = None
) -> Image.Image:
    """`img` brought to width x height by resize mode `mode` ("resize", "crop" or "fill")."""
    limits.check_choice("resize_mode", mode, limits.RESIZE_MODES)
    if mode == "resize":
        return upscalers.resize(img, width, height, upscaler)
    wide = width / height > img.width / img.height  # the target is wider than the picture
    if (mode == "crop") == wide:  # cover (crop) a wider target, or fit into a taller one: full width
        w, h = width, img.height * width // img.width
    else:
        w, h = img.width * height // img.height, height
    scaled = upscalers.resize(img, w, h, upscaler)
    out = Image.new(scaled.mode, (width, height))
    left, top = width // 2 - w // 2, height // 2 - h // 2
    out.paste(scaled, (left, top))
    if mode == "fill":  # the bands around the fitted picture: its outermost rows or columns stretched
        if top > 0:
            out.paste(scaled.resize((width, top), box=(0, 0, width, 0)), (0, 0))
            out.paste(scaled.resize((width, top), box=(0, h, width, h)), (0, top + h))
        elif left > 0:
            out.paste(scaled.resize((left, height), box=(0, 0, 0, height)), (0, 0))
            out.paste(scaled.resize((left, height), box=(w, 0, w, height)), (left + w, 0))
    return out
