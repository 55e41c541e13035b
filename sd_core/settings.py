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

`hires` (txt2img only, `HiresOptions`) adds A1111's hires fix: a second, img2img pass at a larger size
(`sd_core.hires`). `fixed_steps` picks the img2img step rule (`denoising_steps`), `resize_mode` how img2img fits its
input image to the size ("resize": a Lanczos resize of the pixels; "latent": A1111's "latent upscale").

Limits come from `sd_core.limits`; the sampler name is resolved here, once (`samplers.resolve`), so `sampler` and
`schedule` hold canonical names afterwards ("DPM++ 2M Karras" -> "dpmpp_2m", "karras").
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from . import limits, samplers, upscalers
from .controlnet.unit import check_controls
from .images import round_to_multiple
from .lora.tags import check_loras
from .upscalers import latent

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
    """A model's own defaults, read from its file's metadata where it names them (`sd_core.loader`); `sizes`: the
    (width, height) choices a UI offers for it (SDXL: its training sizes), the native size first."""

    cfg_scale: float = DEFAULT_CFG_SCALE
    width: int = 512
    height: int = 512
    sizes: tuple[tuple[int, int], ...] = ()


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
class HiresOptions:
    """A1111's hires fix: the txt2img image is made at the settings' size, upscaled, and sampled again as img2img at
    the larger size (`sd_core.hires`). Errors name the setting with a `hires_` prefix (`hires_scale`, ...).

    `scale`: the upscale factor when neither `width` nor `height` is given (A1111's hr_scale). `width`/`height`: the
    target size (A1111's hr_resize_x/y; 0 or None: from the other side keeping the aspect ratio, or from `scale`;
    both: upscaled to cover them, then centre-cropped). `upscaler`: a latent mode (`upscalers.latent.LATENT_MODES`:
    "Latent", "Latent (bicubic)", ...), a pixel upscaler's name ("None" is a plain Lanczos resize, "Lanczos",
    "Nearest"), or an `upscalers.Upscaler` (a model upscaler: `upscalers.Upscalers(folders).find(name)`,
    `upscalers.model_upscaler(path)`). `steps`: the second pass's steps (0 or None: the first pass's);
    `strength`: its denoising strength (0: no second-pass sampling, the upscaled first pass as it is, as A1111).
    `prompt`, `negative_prompt`, `sampler`, `schedule`: the second pass's (None: the first pass's; a second-pass
    sampler without a schedule keeps the first pass's schedule unless that one was its sampler's default, A1111's
    inheritance)."""

    scale: float = 2.0
    width: int | None = None
    height: int | None = None
    upscaler: str | upscalers.Upscaler = "Latent"
    steps: int | None = None
    strength: float = 0.75
    prompt: str | None = None
    negative_prompt: str | None = None
    sampler: str | None = None
    schedule: str | None = None

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # frozen: 0 ("not given", as in A1111) is normalised to None once, here
        limits.check_number("hires_scale", self.scale, 0.0, limits.MAX_HIRES_SCALE, low_open=True)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and not (limits.is_int(value) and value == 0):
                limits.check_side(f"hires_{name}", value)
            set_field(self, name, int(value) if value else None)
        if isinstance(self.upscaler, str) and not latent.is_latent(self.upscaler):
            upscalers.find(self.upscaler, "hires_upscaler")
        elif not isinstance(self.upscaler, (str, upscalers.Upscaler)):
            why = f"a name or an upscalers.Upscaler, got {self.upscaler!r}"
            raise limits.SettingError("hires_upscaler", f"hires_upscaler must be {why}")
        if self.steps is not None:
            set_field(self, "steps", limits.check_int("hires_steps", self.steps, 0, limits.MAX_STEPS) or None)
        limits.check_number("hires_strength", self.strength, 0.0, 1.0)  # 0: the upscaled first pass, unsampled
        for name in ("prompt", "negative_prompt"):
            if getattr(self, name) is not None:
                limits.check_prompt(f"hires_{name}", getattr(self, name))
        for name in ("sampler", "schedule"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise limits.SettingError(f"hires_{name}", f"hires_{name} must be a name, got {getattr(self, name)!r}")
        if self.sampler is not None or self.schedule is not None:
            try:  # a schedule alone is checked with any sampler: it applies to the first pass's
                samplers.resolve(self.sampler or "euler", self.schedule)
            except limits.SettingError as exc:
                raise limits.SettingError(f"hires_{exc.setting}", f"hires_{exc.setting}: {exc}") from None

    @property
    def latent_mode(self) -> str | None:
        """The latent upscale mode, or None for a pixel or model upscaler."""
        return self.upscaler if isinstance(self.upscaler, str) and latent.is_latent(self.upscaler) else None

    @property
    def upscaler_name(self) -> str:
        return self.upscaler if isinstance(self.upscaler, str) else self.upscaler.name

    def upscale_size(self, width: int, height: int) -> tuple[int, int]:
        """A1111's size a `width` x `height` first pass is upscaled to (its hr_upscale_to_x/y): scaled by `scale`
        (truncated to integers); one side given: that side, the other keeping the aspect ratio (floored); both: the
        smallest size of the same aspect ratio that covers them."""
        w, h = self.width, self.height
        if w is None and h is None:
            return int(width * self.scale), int(height * self.scale)
        if h is None or (w is not None and width / height < w / h):
            return w, w * height // width
        assert h is not None
        return h * width // height, h

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The size of a hires image whose first pass is `width` x `height`: `upscale_size` floored to a multiple of
        8 (A1111's latents are 1/8 of it), or `width` x `height` when both are given (the centre of the upscaled
        image). A `SettingError` naming the hires size (or scale) when a side leaves 8 to 8192."""
        up_w, up_h = self.upscale_size(width, height)
        both = self.width is not None and self.height is not None
        size = (self.width, self.height) if both else (up_w // 8 * 8, up_h // 8 * 8)
        for side, value, up in (("width", size[0], up_w), ("height", size[1], up_h)):
            if limits.MIN_SIDE <= value <= limits.MAX_SIDE and up <= limits.MAX_SIDE:
                continue
            given = [name for name in ("width", "height") if getattr(self, name) is not None]
            name = f"hires_{side if side in given else given[0]}" if given else "hires_scale"
            raise limits.SettingError(
                name,
                f"{name}: hires fix of a {width}x{height} first pass upscales to {up_w}x{up_h} for a {size[0]}x"
                f"{size[1]} image; sides must be from {limits.MIN_SIDE} to {limits.MAX_SIDE}",
            )
        assert size[0] is not None and size[1] is not None
        return size[0], size[1]


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
    # A1111's options (`_check_a1111_options`). The sampler's: None (eta, s_tmax) or the default leaves it as it is.
    eta: float | None = None
    s_tmax: float | None = None
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_noise: float = 1.0
    # variation seed (`sd_core.noise`): the start noise moved toward the subseed's by subseed_strength
    subseed: int | None = None
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None
    # the input image: fitted by resize_mode (`limits.RESIZE_MODES`), its start noise scaled
    resize_mode: str = "resize"
    initial_noise_multiplier: float = 1.0
    # hires fix and the img2img step rule (`_check_hires_options`)
    hires: HiresOptions | None = None
    fixed_steps: bool = False
    tile: TileOptions | None = None
    # SDXL's size conditioning (`sd_core.sdxl`): (height, width) and (top, left) as diffusers; None: the size made
    # and (0, 0); the refiner's aesthetic scores (None: 6.0 and 2.5). `empty_negative`: what an empty negative prompt
    # means, "zeros" (A1111 for SDXL) or "encode" (the empty text); None: the model's rule (`sdxl.empty_negative`)
    original_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] | None = None
    target_size: tuple[int, int] | None = None
    aesthetic_score: float | None = None
    negative_aesthetic_score: float | None = None
    empty_negative: str | None = None
    # A1111's refiner: another loaded pipeline (`StableDiffusion`) that takes over the same latents once the sampled
    # fraction of the noise schedule reaches `refiner_switch_at` (None: 0.8); txt2img and img2img
    refiner: Any = None
    refiner_switch_at: float | None = None
    # LoRAs besides the prompt's `<lora:...>` tags (`sd_core.lora`): {name in the LoRA folders, or file path: weight
    # or (text encoder weight, UNet weight)}; kept as a tuple of `LoraTag`
    loras: Any = ()
    extra_networks: bool = True  # False: `<lora:...>` in the prompt is plain text (A1111's disable_extra_networks)
    # ControlNet units (`sd_core.Control`), their residuals summed; every mode (`sd_core.controlnet`)
    control: tuple[Any, ...] = ()
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
        _check_a1111_options(self)
        set_field(self, "subseed", limits.check_seed(self.subseed, "subseed"))
        set_field(self, "seed_resize_from", limits.check_seed_size("seed_resize_from", self.seed_resize_from))
        counted = "subseed" if self.subseed_strength else "seed"  # the one that counts up along a batch (A1111)
        if getattr(self, counted) is not None and getattr(self, counted) + self.batch_size - 1 > limits.MAX_SEED:
            last = f"{counted} + batch_size - 1 must be at most {limits.MAX_SEED}"
            raise limits.SettingError(counted, f"image k of a batch has the {counted} {counted} + k: {last}")
        set_field(self, "tiling", limits.tiling_axes(self.tiling))
        _check_hires_options(self)
        for name in ("original_size", "crops_coords_top_left", "target_size"):
            low = 0 if name == "crops_coords_top_left" else 1
            set_field(self, name, limits.check_pair(name, getattr(self, name), low, limits.MAX_SIDE))
        for name in ("aesthetic_score", "negative_aesthetic_score"):
            if getattr(self, name) is not None:
                limits.check_number(name, getattr(self, name), 0.0, limits.MAX_AESTHETIC_SCORE)
        if self.empty_negative is not None:
            limits.check_choice("empty_negative", self.empty_negative, limits.EMPTY_NEGATIVE)
        if self.refiner_switch_at is not None:
            if self.refiner is None:
                raise limits.SettingError("refiner_switch_at", "refiner_switch_at needs a refiner")
            limits.check_number("refiner_switch_at", self.refiner_switch_at, 0.0, 1.0, low_open=True)
        set_field(self, "loras", check_loras(self.loras))
        if not isinstance(self.extra_networks, bool):
            raise limits.SettingError(
                "extra_networks", f"extra_networks must be true or false, got {self.extra_networks!r}"
            )
        set_field(self, "control", check_controls(self.control))
        if self.control and self.tile is not None:
            raise limits.SettingError("tile", "tiled denoising does not take ControlNet units (control) yet")

    def denoising_steps(self) -> tuple[int, int]:
        """(the length of the sigma schedule, the steps that run: its last ones) for these settings.

        txt2img (no strength) runs all `steps`. img2img and inpainting follow diffusers' rule: the last
        `int(steps * strength)` of `steps`. With `fixed_steps`, A1111's `img2img_fix_steps` rule (the one its hires
        fix always uses): exactly `steps`, the last of a schedule of `int(steps / min(strength, 0.999))`."""
        if self.strength is None:
            return self.steps, self.steps
        if self.fixed_steps:
            return int(self.steps / min(self.strength, 0.999)), self.steps
        return self.steps, min(int(self.steps * self.strength), self.steps)

    def sampler_options(self) -> dict[str, float]:
        """The sampler options set to other than "the sampler's own" (keyword arguments of the sampler function)."""
        values = {"eta": self.eta, "s_churn": self.s_churn, "s_tmin": self.s_tmin, "s_tmax": self.s_tmax}
        values["s_noise"] = self.s_noise
        return {k: v for k, v in values.items() if v is not None and v != _UNSET_OPTIONS.get(k)}

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
        _check_image_options(self, mode)
        _check_hires_mode(self, mode)
        if mode != "txt2img" and image_size is None:
            raise ValueError(f"{mode} needs an input image")
        inpaint = (self.inpaint or InpaintOptions()) if mode == "inpaint" else None
        native = mode == "txt2img" or (inpaint is not None and inpaint.only_masked)
        if native:
            width, height = self.width or defaults.width, self.height or defaults.height
        else:
            assert image_size is not None
            width = self.width or image_side(image_size[0])
            height = self.height or image_side(image_size[1])
        return replace(
            self,
            width=limits.check_side("width", width),
            height=limits.check_side("height", height),
            cfg_scale=defaults.cfg_scale if self.cfg_scale is None else self.cfg_scale,
            seed=random.randrange(limits.RANDOM_SEED_RANGE) if self.seed is None else self.seed,
            strength=DEFAULT_STRENGTH.get(mode) if self.strength is None else self.strength,
            inpaint=inpaint,
            subseed=random.randrange(limits.RANDOM_SEED_RANGE) if self.subseed is None else self.subseed,
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


_UNSET_OPTIONS = {"s_churn": 0.0, "s_tmin": 0.0, "s_noise": 1.0}  # eta and s_tmax: None


def _check_a1111_options(s: GenerationSettings) -> None:
    """The sampler options (each only for a sampler that takes it: `SamplerChoice.options`), the variation seed's
    strength, resize mode and noise multiplier."""
    if s.eta is not None:
        limits.check_number("eta", s.eta, 0.0, limits.MAX_ETA)
    limits.check_number("s_churn", s.s_churn, 0.0, limits.MAX_S_CHURN)
    limits.check_number("s_tmin", s.s_tmin, 0.0, limits.MAX_S_SIGMA)
    if s.s_tmax is not None:
        limits.check_number("s_tmax", s.s_tmax, 0.0, limits.MAX_S_SIGMA)
    limits.check_number("s_noise", s.s_noise, 0.0, limits.MAX_S_NOISE)
    takes = s.choice.options
    for name in s.sampler_options():
        if name not in takes:
            which = ", ".join(samplers.samplers_taking(name))
            raise limits.SettingError(name, f"the {s.choice.label} sampler takes no {name} (samplers that do: {which})")
    limits.check_number("subseed_strength", s.subseed_strength, 0.0, 1.0)
    limits.check_choice("resize_mode", s.resize_mode, limits.RESIZE_MODES)
    limits.check_number("initial_noise_multiplier", s.initial_noise_multiplier, 0.0, limits.MAX_NOISE_MULTIPLIER)


def _check_image_options(s: GenerationSettings, mode: str) -> None:
    """The input image's options apply where there is one: resize_mode to img2img and whole-picture inpainting
    (only-masked inpainting works on the mask's box), the noise multiplier to img2img and inpainting."""
    only_masked = mode == "inpaint" and s.inpaint is not None and s.inpaint.only_masked
    if s.resize_mode != "resize" and (mode == "txt2img" or only_masked):
        where = "txt2img has no image" if mode == "txt2img" else "only-masked inpainting works on the mask's box"
        raise limits.SettingError(
            "resize_mode", f"resize_mode applies to img2img and whole-picture inpainting ({where})"
        )
    if s.initial_noise_multiplier != 1.0 and mode == "txt2img":
        raise limits.SettingError(
            "initial_noise_multiplier",
            "initial_noise_multiplier applies to img2img and inpainting (txt2img has no image)",
        )


def _check_hires_options(s: GenerationSettings) -> None:
    if s.hires is not None and not isinstance(s.hires, HiresOptions):
        raise limits.SettingError("hires", f"hires must be HiresOptions, got {type(s.hires).__name__}")
    if not isinstance(s.fixed_steps, bool):
        raise limits.SettingError("fixed_steps", f"fixed_steps must be true or false, got {s.fixed_steps!r}")
    schedule, _ = s.denoising_steps()
    if schedule > limits.MAX_STEPS:
        raise limits.SettingError(
            "strength",
            f"with fixed_steps, {s.steps} steps at strength {s.strength:g} are the last of a {schedule}-step schedule; "
            f"at most {limits.MAX_STEPS}: raise the strength or lower the steps",
        )


def _check_hires_mode(s: GenerationSettings, mode: str) -> None:
    """The options that apply to one mode only: hires to txt2img, fixed_steps to img2img and inpainting (the modes
    with a strength), resize_mode "latent" to img2img."""
    if s.hires is not None and mode != "txt2img":
        raise limits.SettingError("hires", f"hires fix applies to txt2img, not to {mode}")
    if s.fixed_steps and mode == "txt2img":
        raise limits.SettingError("fixed_steps", "fixed_steps applies to img2img and inpainting (txt2img: no strength)")
    if s.resize_mode == "latent" and mode != "img2img":
        raise limits.SettingError("resize_mode", f'resize_mode "latent" applies to img2img, not to {mode}')


def image_side(pixels: int) -> int:
    """An input image's side as a generation size: the nearest multiple of 8, kept within the size limits."""
    return min(max(round_to_multiple(pixels), limits.MIN_SIDE), limits.MAX_SIDE)
