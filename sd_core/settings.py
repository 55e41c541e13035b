"""What a generation is asked to do, as one frozen, self-checking object that every boundary builds once.

The Python API (`StableDiffusion.txt2img` and friends), the CLI, the server and the plugins all turn their input into
a `GenerationSettings`, and the engine takes it whole (`StableDiffusion.generate`). Fields left as None mean "the
model's own default" and are filled in by `resolve` once the model and the input image are known:

- `cfg_scale`: the model's default (`ModelDefaults.cfg_scale`: 7.5, or what the model file names).
- `width`/`height`: txt2img and only-masked inpainting work at the model's native size (512 for SD1, 768 for SD2
  v-prediction, or what the model file names); img2img and whole-picture inpainting at the input image's own size
  rounded to a multiple of 8 (and kept within 64-8192).
- `strength`: 0.75 for img2img, 1.0 for inpainting.
- `seed`: a random one. Image k of a batch has the seed `seed + k` (A1111), so the last must be a valid seed too.

Limits come from `sd_core.limits`; the sampler name is resolved here, once (`samplers.resolve`), so `sampler` and
`schedule` hold canonical names afterwards ("DPM++ 2M Karras" -> "dpmpp_2m", "karras").
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from . import limits, samplers
from .images import round_to_multiple

MODES = ("txt2img", "img2img", "inpaint")
DEFAULT_CFG_SCALE = 7.5
"""The CFG scale when the model file names none (diffusers' default; A1111's is 7)."""
CFG_SCALE_KEY = "sd_core.cfg_scale"
"""`.safetensors` metadata key with a model's own default CFG scale (a decimal string, e.g. "3")."""
RESOLUTION_KEY = "sd_core.resolution"
"""`.safetensors` metadata key with a model's native size: "512", or "768x512" (width x height)."""
DEFAULT_STRENGTH = {"img2img": 0.75, "inpaint": 1.0}


@dataclass(frozen=True)
class ModelDefaults:
    """A model's own defaults, read from its file's metadata where it names them (`sd_core.loader`)."""

    cfg_scale: float = DEFAULT_CFG_SCALE
    width: int = 512
    height: int = 512


@dataclass(frozen=True)
class InpaintOptions:
    """How inpainting prepares the region and puts it back (A1111's inpaint settings; see `sd_core.inpainting`).

    `mask_blur`: Gaussian radius in pixels; `only_masked` with `padding`: work on the mask's box plus `padding`
    pixels, scaled to the working size; `fill`: what the masked area holds before sampling (`limits.FILLS`);
    `color_match`: match the new content's colours to the surroundings."""

    mask_blur: float = 4
    only_masked: bool = False
    padding: int = 32
    fill: str = "original"
    color_match: bool = False

    def __post_init__(self) -> None:
        limits.check_number("mask_blur", self.mask_blur, 0, limits.MAX_MASK_BLUR)
        limits.check_int("padding", self.padding, 0, limits.MAX_SIDE)
        limits.check_choice("fill", self.fill, limits.FILLS)
        for name in ("only_masked", "color_match"):
            if not isinstance(getattr(self, name), bool):
                raise limits.SettingError(name, f"{name} must be true or false, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class TileOptions:
    """Tiled denoising (`sd_core.tiled_denoising`): the UNet sees overlapping tiles of the latent canvas at every step
    and their clean-latent estimates are blended with feather weights, so an image far larger than the model's
    comfortable size (or the device's memory) is sampled as one picture. An axis the tile covers is not tiled, so
    tiles at least as large as the image give exactly the untiled result: `tile` doubles as the size threshold.

    `width`/`height`: the tile in pixels (multiples of 8; None: the model's native size); `overlap`: pixels that
    neighbouring tiles share (a multiple of 8, less than the tile; None: a quarter of the tile's smaller side);
    `batch`: tiles per UNet call (None: as many as a quarter of the free memory holds; on a CPU, up to 16 tiles of
    64x64 latents or the same area in smaller ones)."""

    width: int | None = None
    height: int | None = None
    overlap: int | None = None
    batch: int | None = None

    def __post_init__(self) -> None:
        for side in (self.width, self.height):
            if side is not None:
                limits.check_side("tile", side)
        if self.overlap is not None:
            limits.check_int("tile_overlap", self.overlap, 0, limits.MAX_SIDE)
            if self.overlap % limits.SIDE_MULTIPLE:
                raise limits.SettingError("tile_overlap", f"tile_overlap must be a multiple of 8, got {self.overlap}")
            smaller = min(side for side in (self.width, self.height, limits.MAX_SIDE) if side is not None)
            if self.overlap >= smaller:
                raise limits.SettingError(
                    "tile_overlap", f"tile_overlap ({self.overlap}) must be less than the tile's side ({smaller})"
                )
        if self.batch is not None:
            limits.check_int("tile_batch", self.batch, 1, limits.MAX_TILE_BATCH)

    def resolve(self, defaults: ModelDefaults) -> TileOptions:
        """These options with the model's native size as the tile where none was given, and the default overlap."""
        width, height = self.width or defaults.width, self.height or defaults.height
        overlap = min(width, height) // 4 // limits.SIDE_MULTIPLE * limits.SIDE_MULTIPLE
        return replace(self, width=width, height=height, overlap=overlap if self.overlap is None else self.overlap)

    def applies(self, width: int, height: int) -> bool:
        """Whether a width x height image is tiled (the tile is smaller on some axis); resolved options only."""
        assert self.width is not None and self.height is not None, "resolve the tile options first"
        return self.width < width or self.height < height


@dataclass(frozen=True)
class GenerationSettings:
    """One generation's settings, checked when made; `resolve` fills in the model's defaults."""

    prompt: str = ""
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int = 20
    sampler: str = "euler"
    schedule: str | None = None
    cfg_scale: float | None = None
    seed: int | None = None
    batch_size: int = 1
    clip_skip: int = 1
    tiling: str | None = None
    strength: float | None = None
    inpaint: InpaintOptions | None = None
    tile: TileOptions | None = None
    choice: samplers.SamplerChoice = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        limits.check_prompt("prompt", self.prompt)
        limits.check_prompt("negative_prompt", self.negative_prompt)
        for name in ("width", "height"):
            if getattr(self, name) is not None:
                limits.check_side(name, getattr(self, name))
        limits.check_int("steps", self.steps, 1, limits.MAX_STEPS)
        if not isinstance(self.sampler, str):
            raise limits.SettingError("sampler", f"sampler must be a name, got {self.sampler!r}")
        choice = samplers.resolve(self.sampler, self.schedule)
        if self.cfg_scale is not None:
            limits.check_number("cfg_scale", self.cfg_scale, -limits.MAX_CFG_SCALE, limits.MAX_CFG_SCALE)
        limits.check_int("batch_size", self.batch_size, 1, limits.MAX_BATCH)
        limits.check_int("clip_skip", self.clip_skip, limits.MIN_CLIP_SKIP, limits.MAX_CLIP_SKIP)
        if self.strength is not None:
            limits.check_number("strength", self.strength, 0.0, 1.0, low_open=True)
        if self.inpaint is not None and not isinstance(self.inpaint, InpaintOptions):
            raise limits.SettingError("inpaint", f"inpaint must be InpaintOptions, got {type(self.inpaint).__name__}")
        if self.tile is not None and not isinstance(self.tile, TileOptions):
            raise limits.SettingError("tile", f"tile must be TileOptions, got {type(self.tile).__name__}")
        set_field = object.__setattr__  # frozen: normalised values are set once, here
        set_field(self, "choice", choice)
        set_field(self, "sampler", choice.name)
        set_field(self, "schedule", choice.schedule)
        set_field(self, "seed", limits.check_seed(self.seed))
        if self.seed is not None and self.seed + self.batch_size - 1 > limits.MAX_SEED:
            last = f"seed + batch_size - 1 must be at most {limits.MAX_SEED}"
            raise limits.SettingError("seed", f"image k of a batch has the seed seed + k: {last}")
        set_field(self, "tiling", limits.tiling_axes(self.tiling))

    def resolve(
        self, mode: str, defaults: ModelDefaults, image_size: tuple[int, int] | None = None
    ) -> GenerationSettings:
        """These settings with every default filled in, for `mode` ("txt2img", "img2img" or "inpaint") on a model
        with `defaults`; `image_size` (width, height) is the input image's. A setting that does not apply to the mode
        is an error naming it (strength without an input image, inpaint options without a mask)."""
        limits.check_choice("mode", mode, MODES)
        if mode == "txt2img" and self.strength is not None:
            raise limits.SettingError("strength", "strength applies to img2img and inpainting (txt2img has no image)")
        if mode != "inpaint" and self.inpaint is not None:
            raise limits.SettingError("inpaint", f"inpaint options apply to inpainting, not to {mode} (no mask given)")
        if mode != "txt2img" and image_size is None:
            raise ValueError(f"{mode} needs an input image")
        inpaint = (self.inpaint or InpaintOptions()) if mode == "inpaint" else None
        native = mode == "txt2img" or (inpaint is not None and inpaint.only_masked)
        if native:
            width, height = self.width or defaults.width, self.height or defaults.height
        else:
            assert image_size is not None
            width = self.width or _image_side(image_size[0])
            height = self.height or _image_side(image_size[1])
        return replace(
            self,
            width=limits.check_side("width", width),
            height=limits.check_side("height", height),
            cfg_scale=defaults.cfg_scale if self.cfg_scale is None else self.cfg_scale,
            seed=random.randrange(limits.RANDOM_SEED_RANGE) if self.seed is None else self.seed,
            strength=DEFAULT_STRENGTH.get(mode) if self.strength is None else self.strength,
            inpaint=inpaint,
            tile=None if self.tile is None else self.tile.resolve(defaults),
        )

    @classmethod
    def from_kwargs(cls, prompt: str, **kwargs: Any) -> GenerationSettings:
        """Settings from the Python API's keyword arguments: the inpaint options (`mask_blur`, `only_masked`,
        `padding`, `fill`, `color_match`) may be given flat; an unknown name is an error naming it."""
        inpaint_names = set(InpaintOptions.__dataclass_fields__)
        names = set(cls.__dataclass_fields__) - {"choice", "inpaint", "prompt"}
        unknown = sorted(set(kwargs) - names - inpaint_names)
        if unknown:
            raise TypeError(f"unknown generation setting(s): {', '.join(unknown)}")
        inpaint = {k: kwargs.pop(k) for k in list(kwargs) if k in inpaint_names}
        return cls(prompt=prompt, inpaint=InpaintOptions(**inpaint) if inpaint else None, **kwargs)


def _image_side(pixels: int) -> int:
    """An input image's side as a generation size: the nearest multiple of 8, kept within the size limits."""
    return min(max(round_to_multiple(pixels), limits.MIN_SIDE), limits.MAX_SIDE)
