"""Request and response bodies with A1111's field names and defaults, so that existing clients work unchanged.

Only the fields the engine supports are declared; anything else an A1111 client sends (styles, restore_faces,
alwayson_scripts, ...) is accepted and ignored, as A1111 itself ignores what no script consumes. Declared fields are
typed: a wrong type is a 422 naming the field.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sd_core.limits import (
    MAX_BATCH,
    MAX_CFG_SCALE,
    MAX_CLIP_SKIP,
    MAX_MASK_BLUR,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    RANDOM_SEED,
    SIDE_MULTIPLE,
)

MAX_N_ITER = 1000


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerationRequest(ApiModel):
    """Fields shared by txt2img and img2img."""

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    seed: int = Field(
        RANDOM_SEED, ge=RANDOM_SEED, le=MAX_SEED, description="-1 picks a random seed; the seeds used are in `info`"
    )
    sampler_name: str | None = Field(None, max_length=200, description="A1111 label ('Euler a') or sd_core name")
    sampler_index: str | None = Field(None, max_length=200, description="deprecated alias of sampler_name")
    scheduler: str | None = Field(None, max_length=200, description="'automatic' (default), 'karras', ...")
    batch_size: int = Field(1, ge=1, le=MAX_BATCH)
    n_iter: int = Field(1, ge=1, le=MAX_N_ITER, description="batches run one after another")
    steps: int = Field(50, ge=1, le=MAX_STEPS)
    cfg_scale: float | None = Field(
        None,
        ge=-MAX_CFG_SCALE,
        le=MAX_CFG_SCALE,
        allow_inf_nan=False,
        description="left out: the model's own default (7.5, or what the model file names; in `info`)",
    )
    width: int | None = Field(
        None,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        multiple_of=SIDE_MULTIPLE,
        description="left out: the model's native size (txt2img, only-masked inpainting) or the init image's",
    )
    height: int | None = Field(None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE, description="as width")
    tiling: bool | Literal["x", "y", "xy"] = Field(
        False, description="seamless output: true (both axes, as A1111) or 'x', 'y', 'xy' for chosen axes"
    )
    override_settings: dict[str, Any] | None = Field(
        None, description=f"supported: sd_model_checkpoint, CLIP_stop_at_last_layers (1 to {MAX_CLIP_SKIP})"
    )
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    save_images: bool = Field(False, description="ignored: the server never writes images to disk")

    @field_validator("override_settings")
    @classmethod
    def _finite(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """NaN and Infinity parse from Python-made JSON but cannot be echoed back as JSON."""
        if value is not None and not _all_finite(value):
            raise ValueError("NaN and Infinity are not allowed")
        return value


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


class Txt2ImgRequest(GenerationRequest):
    """POST /sdapi/v1/txt2img."""

    denoising_strength: float | None = Field(None, allow_inf_nan=False, description="hires fix only; ignored")


class Img2ImgRequest(GenerationRequest):
    """POST /sdapi/v1/img2img; with `mask` it inpaints. Without explicit width/height the output takes the init
    image's size (rounded to a multiple of 8)."""

    init_images: list[str] = Field(
        ..., min_length=1, max_length=64, description="base64 images (data: URLs accepted); the first one is used"
    )
    denoising_strength: float = Field(0.75, gt=0, le=1, allow_inf_nan=False)
    resize_mode: int = Field(0, description="ignored: the init image is resized to width x height")
    mask: str | None = Field(None, description="base64 image; white = repaint")
    mask_blur: int = Field(4, ge=0, le=MAX_MASK_BLUR)
    inpainting_fill: int = Field(0, ge=0, le=3, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(True, description="inpaint only the masked area at full resolution")
    inpaint_full_res_padding: int = Field(0, ge=0, le=MAX_SIDE)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    include_init_images: bool = Field(False, description="echo init_images and mask back in `parameters`")


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
