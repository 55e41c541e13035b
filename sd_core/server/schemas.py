"""Request and response bodies with A1111's field names and defaults, so that existing clients work unchanged.

The generation requests declare every field of A1111's `StableDiffusionTxt2ImgProcessingAPI` and
`StableDiffusionImg2ImgProcessingAPI`. As in A1111 every field may be null, which means its default (here: as if it
were left out). Declared fields are typed: a wrong type is a 422 naming the field. What each field does here, and
which ones are refused until the engine has them, is in `refusals.py`; unknown fields are ignored, as A1111 does.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sd_core.limits import (
    MAX_BATCH,
    MAX_CFG_SCALE,
    MAX_HIRES_SCALE,
    MAX_MASK_BLUR,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    RANDOM_SEED,
)

MAX_N_ITER = 1000
MAX_NAME = 1000  # sampler, scheduler, script and checkpoint names
Real = float | None  # any finite number or null


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _number(default: float | None = None, **bounds: Any) -> Any:
    return Field(default, allow_inf_nan=False, **bounds)


def _all_finite(value: Any, depth: int = 0) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if depth > 32:
        return False
    if isinstance(value, dict):
        return all(_all_finite(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return all(_all_finite(v, depth + 1) for v in value)
    return True


class GenerationRequest(ApiModel):
    """Fields shared by txt2img and img2img (A1111's `StableDiffusionProcessing`)."""

    prompt: str | None = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field("", max_length=MAX_PROMPT_CHARS)
    styles: list[str] | None = Field(None, max_length=100, description="names from the server's styles.csv")
    seed: int | None = Field(
        RANDOM_SEED, ge=RANDOM_SEED, le=MAX_SEED, description="-1 picks a random seed; the seeds used are in `info`"
    )
    subseed: int | None = Field(-1, ge=RANDOM_SEED, le=MAX_SEED)
    subseed_strength: Real = _number(0.0, ge=0, le=1)
    seed_resize_from_h: int | None = Field(-1, ge=-1, le=MAX_SIDE)
    seed_resize_from_w: int | None = Field(-1, ge=-1, le=MAX_SIDE)
    sampler_name: str | None = Field(None, max_length=MAX_NAME, description="A1111 label ('Euler a') or sd_core name")
    sampler_index: str | None = Field(None, max_length=MAX_NAME, description="deprecated alias of sampler_name")
    scheduler: str | None = Field(None, max_length=MAX_NAME, description="'automatic' (default), 'karras', ...")
    batch_size: int | None = Field(1, ge=1, le=MAX_BATCH)
    n_iter: int | None = Field(1, ge=1, le=MAX_N_ITER, description="batches run one after another")
    steps: int | None = Field(50, ge=1, le=MAX_STEPS)
    cfg_scale: Real = _number(
        None,
        ge=-MAX_CFG_SCALE,
        le=MAX_CFG_SCALE,
        description="left out: the model's own default (7.5, or what the model file names; in `info`)",
    )
    width: int | None = Field(
        None,
        ge=1,
        le=MAX_SIDE,
        description="floored to a multiple of 8 (as A1111), at least 8; left out: the model's native size (txt2img, "
        "only-masked inpainting) or the init image's",
    )
    height: int | None = Field(None, ge=1, le=MAX_SIDE, description="as width")
    restore_faces: bool | None = Field(None, description="true is refused: no face restoration model ships")
    tiling: bool | Literal["x", "y", "xy"] | None = Field(
        None, description="seamless output: true (both axes, as A1111) or 'x', 'y', 'xy'; null: the `tiling` option"
    )
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: Real = _number(None, ge=0, le=100)
    denoising_strength: Real = _number(0.75, ge=0, le=1)
    s_min_uncond: Real = _number(None, ge=0, le=1000)
    s_churn: Real = _number(None, ge=0, le=1000)
    s_tmax: Real = _number(None, ge=0, le=1e6)
    s_tmin: Real = _number(None, ge=0, le=1e6)
    s_noise: Real = _number(None, ge=0, le=100)
    override_settings: dict[str, Any] | None = Field(
        None, description="A1111 settings for this request; the ones not honoured are listed in info"
    )
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = Field(None, max_length=MAX_NAME)
    refiner_switch_at: Real = _number(None, ge=0, le=1)
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    script_name: str | None = Field(None, max_length=MAX_NAME)
    script_args: list[Any] | None = Field(None, max_length=1000)
    send_images: bool | None = True
    save_images: bool | None = Field(False, description="this server never writes images to disk")
    alwayson_scripts: dict[str, Any] | None = None
    force_task_id: str | None = Field(None, max_length=MAX_NAME)
    infotext: str | None = Field(None, max_length=4 * MAX_PROMPT_CHARS, description="A1111 parameters text")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        """A1111 declares every field optional: null means the field's default, as if it were left out."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_validator("override_settings", "script_args", "alwayson_scripts", "comments")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        """NaN and Infinity parse from Python-made JSON but cannot be echoed back as JSON."""
        if value is not None and not _all_finite(value):
            raise ValueError("NaN and Infinity are not allowed")
        return value


class TileRequest(BaseModel):
    """`sd_core_tile`: tiles of width x height pixels sharing `overlap` pixels (multiples of 8)."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(..., ge=8, le=MAX_SIDE)
    height: int = Field(..., ge=8, le=MAX_SIDE)
    overlap: int | None = Field(None, ge=0, le=MAX_SIDE, description="null: a quarter of the smaller side")


class Txt2ImgRequest(GenerationRequest):
    """POST /sdapi/v1/txt2img."""

    enable_hr: bool | None = Field(False, description="hires fix: a second, img2img pass at a larger size")
    firstphase_width: int | None = Field(0, ge=0, le=MAX_SIDE, description="not 0: the first pass's width")
    firstphase_height: int | None = Field(0, ge=0, le=MAX_SIDE, description="not 0: the first pass's height")
    hr_scale: Real = _number(2.0, ge=0, le=MAX_HIRES_SCALE)
    hr_upscaler: str | None = Field(None, max_length=MAX_NAME, description="latent mode or upscaler; null: Latent")
    hr_second_pass_steps: int | None = Field(0, ge=0, le=MAX_STEPS, description="0: as many as steps")
    hr_resize_x: int | None = Field(0, ge=0, le=MAX_SIDE, description="not 0: the target width (hr_scale unused)")
    hr_resize_y: int | None = Field(0, ge=0, le=MAX_SIDE, description="not 0: the target height")
    hr_checkpoint_name: str | None = Field(None, max_length=MAX_NAME)
    hr_sampler_name: str | None = Field(None, max_length=MAX_NAME)
    hr_scheduler: str | None = Field(None, max_length=MAX_NAME)
    hr_prompt: str | None = Field("", max_length=MAX_PROMPT_CHARS)
    hr_negative_prompt: str | None = Field("", max_length=MAX_PROMPT_CHARS)
    sd_core_tile: TileRequest | None = Field(
        None,
        description="sd-core's own (A1111 has none; its Tiled Diffusion extension's idea): sample in overlapping "
        "tiles of this size, blended (with enable_hr: the second pass); seamless with tiling",
    )


class Img2ImgRequest(GenerationRequest):
    """POST /sdapi/v1/img2img; with `mask` it inpaints. Without explicit width/height the output takes the init
    image's size (rounded to a multiple of 8)."""

    init_images: list[str] = Field(
        ...,
        min_length=1,
        max_length=MAX_BATCH,
        description="base64 images (data: URLs accepted); several: one per image of the batch, as A1111",
    )
    resize_mode: int | None = Field(
        0, ge=0, le=3, description="0 just resize, 1 crop and resize, 2 resize and fill, 3 just resize (latent upscale)"
    )
    denoising_strength: Real = _number(0.75, ge=0, le=1, description="0 returns the init image")
    image_cfg_scale: Real = _number(None, ge=-MAX_CFG_SCALE, le=MAX_CFG_SCALE)
    mask: str | None = Field(None, description="base64 image; white (or opaque, for a transparent PNG) = repaint")
    mask_blur_x: int | None = Field(4, ge=0, le=MAX_MASK_BLUR)
    mask_blur_y: int | None = Field(4, ge=0, le=MAX_MASK_BLUR)
    mask_blur: int | None = Field(None, ge=0, le=MAX_MASK_BLUR, description="sets mask_blur_x and mask_blur_y")
    mask_round: bool | None = True
    inpainting_fill: int | None = Field(
        0, ge=0, le=3, description="0 fill, 1 original, 2 latent noise, 3 latent nothing"
    )
    inpaint_full_res: bool | None = Field(True, description="inpaint only the masked area at full resolution")
    inpaint_full_res_padding: int | None = Field(0, ge=0, le=MAX_SIDE)
    inpainting_mask_invert: int | None = Field(0, ge=0, le=1)
    initial_noise_multiplier: Real = _number(None, ge=0, le=100)
    latent_mask: str | None = None
    include_init_images: bool | None = Field(False, description="echo init_images and mask back in `parameters`")


class GenerationResponse(ApiModel):
    images: list[str] = Field(description="base64 PNGs, each with its A1111 `parameters` text chunk")
    parameters: dict[str, Any] = Field(description="the request as the server understood it")
    info: str = Field(description="JSON: seed, all_seeds, infotexts, prompt, sampler_name, steps, ...")


class ProgressState(ApiModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = Field(0, description="batches (n_iter) of the running job; 0 when idle")
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    queue_pending: int = Field(0, description="jobs waiting behind the running one")


class ProgressResponse(ApiModel):
    progress: float = Field(description="0..1 for the running job")
    eta_relative: float = Field(description="seconds left, estimated")
    state: ProgressState
    current_image: str | None = Field(None, description="base64 PNG preview of the latest step")
    textinfo: str | None = None


class SDModelItem(ApiModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None
    sd_core_defaults: dict[str, Any] | None = Field(
        None,
        description="sd-core's own: the model's defaults (cfg_scale, width, height, sizes) that a request leaving them "
        "out gets; null for .ckpt files (not read for a listing)",
    )


class SamplerItem(ApiModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(ApiModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class PNGInfoRequest(ApiModel):
    image: str = Field(..., description="base64 PNG (data: URL accepted)")


class InterrogateRequest(ApiModel):
    image: str = Field("", description="base64 image (data: URL accepted)")
    model: str = Field("clip", description="A1111's interrogator: clip or deepdanbooru; none ships here")


class PNGInfoResponse(ApiModel):
    info: str = Field(description="the `parameters` text, empty if none")
    items: dict[str, Any] = Field(description="the image's other text chunks")
    parameters: dict[str, Any] = Field(description="`info` parsed into prompt, negative_prompt and settings")


class ErrorResponse(ApiModel):
    error: str = Field(description="kind of error, e.g. ValidationError, Unauthorized, PayloadTooLarge")
    detail: str = Field(description="what went wrong, in words")
    field: str | None = Field(None, description="the request field at fault, when there is one")
    errors: list[dict[str, Any]] | None = None


class PingResponse(ApiModel):
    status: str
    model: str | None
    busy: bool
    queue_pending: int
