"""A1111's "SD upscale" script on /sdapi/v1/img2img (`script_name: "SD upscale"`), on the engine's tiled denoising.

`script_args` as A1111's script lays them out: [info (ignored), tile overlap in pixels (64), upscaler index into
/sdapi/v1/upscalers or its name (0, "None"), scale factor (2)]; arguments left out take those defaults. The first
init image is enlarged by the scale with the upscaler (by the worker, before sampling; "None" keeps its size, as
A1111's script does), then one img2img of the whole enlarged image runs in tiles of the request's width x height
(left out: 512, A1111's default) overlapping by the overlap (floored to a multiple of 8), tiles wrapping around with
`tiling`. `batch_size` above 1 is the tiles per UNet call (A1111: tiles per batch; 1, the default: as many as
memory allows); each of `n_iter` upscales runs with seed + n, as A1111's.

Not A1111's way: A1111 runs an independent img2img per tile (seed + 1 per batch of tiles) and pastes the results
with a feathered overlap, so neighbouring tiles can disagree and leave seams. Here the tiles are denoised together
(`sd_core.tiled_denoising`: at every step each tile sees the blended estimate of its neighbours over the overlap)
and one noise field covers the image, so there are none. The infotext carries A1111's "SD upscale overlap" and
"SD upscale upscaler" and the image's own size (A1111 writes the tile's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sd_core import TileOptions, limits, sd_upscale

from .api_error import invalid
from .codec import decode_image
from .img2img import Images, image_side
from .prepare import Prepared
from .resize import flatten
from .schemas import Img2ImgRequest
from .upscalers import NONE, Upscaler, Upscalers, get

TITLE = "sd upscale"
DEFAULT_TILE = 512  # A1111's width and height when a request leaves them out
DEFAULTS = (None, 64, 0, 2.0)  # info, overlap, upscaler index, scale factor (A1111's UI defaults)


@dataclass(frozen=True)
class SdUpscale:
    """A checked "SD upscale" request: the upscaler, the scale, the tiles and the upscaled size."""

    overlap: int
    upscaler: Upscaler
    scale: float
    tile: TileOptions
    size: tuple[int, int]

    def params(self) -> dict[str, Any]:
        """A1111's `extra_generation_params` for the infotext."""
        return {"SD upscale overlap": self.overlap, "SD upscale upscaler": self.upscaler.name}

    def upscale(self, images: Images, seamless: str | None) -> Images:
        """The init image enlarged (worker side): what the engine samples, or returns as it is for strength 0."""
        image = sd_upscale.upscale(images.images[0], self.scale, self.upscaler, seamless)
        return Images([image], None, image.width, image.height, images.unchanged)


def is_sd_upscale(req: Any) -> bool:
    return isinstance(req, Img2ImgRequest) and (req.script_name or "").lower() == TITLE


def _arg(args: list[Any], index: int) -> Any:
    return args[index] if index < len(args) and args[index] is not None else DEFAULTS[index]


def _number(value: Any, index: int, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(f"script_args[{index}]", f"script_args[{index}]: {what} must be a number, got {value!r}")
    return float(value)


def _upscaler(value: Any, choices: Upscalers) -> Upscaler:
    """An upscaler by name, or by its index in /sdapi/v1/upscalers (A1111's script takes the index)."""
    if isinstance(value, str):
        return get(value, "script_args[2]", choices)
    found = list(choices.all().values())
    index = _number(value, 2, "the upscaler index")
    if index != int(index) or not 0 <= index < len(found):
        raise invalid("script_args[2]", f"script_args[2]: upscaler index {value!r} is not one of 0..{len(found) - 1}")
    return found[int(index)]


def prepare(req: Img2ImgRequest, p: Prepared, max_pixels: int, choices: Upscalers) -> tuple[SdUpscale, Images]:
    """Check the script's arguments and the request against them (upscalers among `choices`); decode the init
    image (not fitted: the tile is the width x height). 422s name the field at fault."""
    if req.mask is not None:
        raise invalid("mask", "mask: the SD upscale script takes no mask (it upscales the whole image)")
    args = list(req.script_args or [])
    overlap = _number(_arg(args, 1), 1, "the tile overlap")
    upscaler = _upscaler(_arg(args, 2), choices)
    scale = _number(_arg(args, 3), 3, "the scale factor")
    if scale <= 0:
        raise invalid("script_args[3]", f"script_args[3]: the scale factor must be above 0, got {scale:g}")
    width, height = p.width or DEFAULT_TILE, p.height or DEFAULT_TILE
    overlap_px = int(overlap) // limits.SIDE_MULTIPLE * limits.SIDE_MULTIPLE
    if not 0 <= overlap_px < min(width, height):
        raise invalid("script_args[1]", f"script_args[1]: the overlap must be 0 or more and less than the tile's "
                      f"side ({min(width, height)}), got {overlap:g}")  # fmt: skip
    image = flatten(
        decode_image(req.init_images[0], "init_images[0]", max_pixels), p.settings["img2img_background_color"]
    )
    if upscaler.name == NONE:
        size = (image_side(image.width), image_side(image.height))
    else:
        size = (int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8))
    for side in size:
        if not limits.MIN_SIDE <= side <= limits.MAX_SIDE:
            raise invalid("script_args[3]", f"script_args[3]: scaling {image.width}x{image.height} by {scale:g} "
                          f"gives {size[0]}x{size[1]}, outside {limits.MIN_SIDE}-{limits.MAX_SIDE}")  # fmt: skip
    batch = req.batch_size if req.batch_size and req.batch_size > 1 else None
    tile = TileOptions(width=width, height=height, overlap=overlap_px, batch=batch)
    unchanged = req.denoising_strength == 0
    return SdUpscale(overlap_px, upscaler, scale, tile, size), Images([image], None, *size, unchanged=unchanged)
