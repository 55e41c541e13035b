"""An img2img request's images, prepared as A1111 prepares them, before the request is queued.

- Init images: transparent parts flattened onto the `img2img_background_color` setting; then, for img2img and
  whole-picture inpainting, fitted to width x height by `resize_mode` 0-2 with the engine's `sd_core.resize.fit`
  (the `upscaler_for_img2img` setting enlarging), so the engine gets them at the size it works at; resize mode 3
  (latent upscale, img2img only) leaves them at their own size for the engine (`resize_mode="latent"`). Width and
  height default to the first init image's size rounded to a multiple of 8 (this server's rule, as for the
  engine's own img2img); an inpainting request that gives neither keeps the image's own size, as the engine's
  inpainting does.
- Several init images: one per image of the batch, as A1111 (batch_size becomes their number; more images than
  batch_size is refused, where A1111 fails with a RuntimeError).
- The mask: an RGBA mask with transparency is its alpha (hard at 128 with `mask_round`), else its luminance;
  inverted with `inpainting_mask_invert`; a mask of another size is fitted like the image (whole picture: to width x
  height; only masked: to the init image's size).
- Nothing to do: `denoising_strength` 0, or a mask with nothing white, returns the prepared init images unchanged
  (`Images.unchanged`), without sampling. (A1111 still runs one sampling step at the lowest noise for strength 0;
  with an empty mask and `inpaint_full_res` it falls back to plain img2img; both look like the input.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from sd_core import limits, resize

from .api_error import invalid
from .codec import decode_image
from .prepare import Prepared
from .resize import flatten, to_mask
from .schemas import Img2ImgRequest
from .upscalers import Upscaler, get

PIXEL_MODES = {0: "resize", 1: "crop", 2: "fill"}  # A1111 resize_mode -> `limits.RESIZE_MODES`; 3 is refused


def fit(mode: int, img: Image.Image, width: int, height: int, upscaler: Upscaler | str | None = None) -> Image.Image:
    return resize.fit(img, width, height, PIXEL_MODES.get(mode, "resize"), upscaler)


@dataclass
class Images:
    """The images an img2img request hands the engine."""

    images: list[Image.Image]  # one, or one per image of the batch
    mask: Image.Image | None  # L, white = repaint; None for img2img
    width: int | None  # the size the engine works at (None: its own rule, only-masked inpainting's native size)
    height: int | None
    unchanged: bool = False  # nothing to repaint: the images come back as they are
    latent: bool = False  # resize mode 3: the engine encodes each at its own size and resizes the latents


def image_side(pixels: int) -> int:
    """An init image's side as the default size: the nearest multiple of 8, within the engine's limits."""
    rounded = max(1, int(pixels / limits.SIDE_MULTIPLE + 0.5)) * limits.SIDE_MULTIPLE
    return min(max(rounded, limits.MIN_SIDE), limits.MAX_SIDE)


def _mask(req: Img2ImgRequest, max_pixels: int) -> Image.Image | None:
    if req.mask is None:
        return None
    mask = to_mask(decode_image(req.mask, "mask", max_pixels), bool(req.mask_round))
    if req.inpainting_mask_invert:
        mask = mask.point(lambda v: 255 - v)
    return mask


def prepare_images(req: Img2ImgRequest, p: Prepared, max_pixels: int) -> Images:
    """Decode and fit the init images and the mask; 422 naming the field for anything unusable."""
    background = p.settings["img2img_background_color"]
    name = p.settings["upscaler_for_img2img"]
    upscaler = get(name, "upscaler_for_img2img", p.upscaler_choices) if name is not None else None
    decoded = [decode_image(text, f"init_images[{i}]", max_pixels) for i, text in enumerate(req.init_images)]
    images = [flatten(img, background) for img in decoded]
    if len(images) > 1 and len(images) > (req.batch_size or 1):
        raise invalid(
            "init_images",
            f"init_images: {len(images)} images for a batch_size of {req.batch_size}: A1111 takes one image per "
            "image of the batch (or one image for the whole batch)",
        )
    mask = _mask(req, max_pixels)
    mode = req.resize_mode or 0
    only_masked = mask is not None and bool(req.inpaint_full_res)
    own_size = mask is not None and p.width is None and p.height is None
    if only_masked or own_size:
        # only masked: width x height is the working size of the masked area; no size at all: the engine inpaints
        # at the image's size rounded to a multiple of 8 and puts the result back at the image's own size
        width, height = p.width, p.height
        size = images[0].size
        images = [img if img.size == size else fit(mode % 3, img, *size, upscaler) for img in images]
        if mask.size != size:
            mask = fit(mode % 3, mask, *size)
    else:
        width = p.width or image_side(images[0].width)
        height = p.height or image_side(images[0].height)
        if mode != 3 or mask is not None:  # (3 with a mask is refused)
            images = [fit(mode % 3, img, width, height, upscaler) for img in images]
        if mask is not None:
            mask = fit(mode % 3, mask, width, height)
    empty = mask is not None and mask.getextrema()[1] == 0
    unchanged = empty or req.denoising_strength == 0
    latent = mode == 3 and mask is None
    if latent and unchanged:  # returned as they are: at the size asked for
        images = [fit(0, img, width, height, upscaler) for img in images]
    return Images(images, mask, width, height, unchanged, latent)


def copies(images: Images, batch_size: int) -> list[Image.Image]:
    """What an "unchanged" run returns for one batch: each init image as it was prepared (one image: batch_size
    copies)."""
    chosen = images.images if len(images.images) > 1 else images.images * batch_size
    return [img.copy() for img in chosen]


def engine_inputs(images: Images) -> list[tuple[Image.Image, Any]]:
    """(image, mask) for each engine call of one batch."""
    return [(img, images.mask) for img in images.images]
