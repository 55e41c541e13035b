"""A1111 generation requests -> engine calls.

Split in three so the device does only device work: `plan` checks and decodes a request (request thread, before it
is queued: a bad request never waits in line), `run` calls the engine (worker thread), `respond` encodes the PNGs and
the A1111 `info` JSON (request thread again).

Seeds follow A1111: `seed` -1 picks a random one; batch `n` of `n_iter` starts at `seed + n * batch_size`, and the
engine gives image k of a batch the seed + k (each image can be made again alone from the seed in its infotext). With
several init images, each is its own engine call with seed + its index. With a variation (`subseed_strength` > 0)
every image keeps `seed` and the subseed counts up instead (A1111's rule); `seed_resize_from_w/h` (both > 0) are
floored to multiples of 8 and passed on. The sampler options follow A1111 v1.10 (`sampling_fields.sampler_options`).

Interrupt and skip (A1111's): the step callback raises `sd_core.Interrupted`; the engine then finishes the batch being
sampled from its latest clean estimate (those images carry `info["interrupted"]`; during hires fix's first pass, the
first pass's images). Interrupt stops there (later batches are not run); skip goes on with the next batch.
`info.interrupted` is true after an interrupt. Status 200.

Hires fix (`hires.py`): each batch is two jobs in the progress, as in A1111; `info.width/height` are the first pass's
size, the images the hires size.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from PIL import Image

from sd_core import GenerationSettings, HiresOptions, InpaintOptions, LoraError, TileOptions, limits, preview
from sd_core.pnginfo import format_parameters, parse_parameters

from . import controlnet, hires, refusals, sampling_fields, sd_upscale, upscalers
from .api_error import ApiError, invalid
from .codec import png_b64
from .engine import ModelManager
from .img2img import Images, copies, prepare_images
from .models import ModelDirectory, ModelEntry, ModelNameError
from .options import CHECKPOINT, CLIP_SKIP
from .prepare import Prepared, prepare
from .schemas import GenerationRequest, Img2ImgRequest
from .settings import ServerSettings
from .styles import StyleFile

# `GenerationSettings` names -> the request fields they come from, so an engine error names what the client sent
REQUEST_FIELDS = {
    "sampler": "sampler_name",
    "schedule": "scheduler",
    "strength": "denoising_strength",
    "padding": "inpaint_full_res_padding",
    "fill": "inpainting_fill",
    "only_masked": "inpaint_full_res",
    "clip_skip": f"override_settings.{CLIP_SKIP}",
    "seed_resize_from": "seed_resize_from_w",
    "hires_scale": "hr_scale",
    "hires_width": "hr_resize_x",
    "hires_height": "hr_resize_y",
    "hires_upscaler": "hr_upscaler",
    "hires_steps": "hr_second_pass_steps",
    "hires_strength": "denoising_strength",
    "hires_prompt": "hr_prompt",
    "hires_negative_prompt": "hr_negative_prompt",
    "hires_sampler": "hr_sampler_name",
    "hires_schedule": "hr_scheduler",
    "controlnet": "alwayson_scripts.controlnet.args",
}


def setting_error(exc: limits.SettingError, sampler_field: str = "sampler_name") -> ApiError:
    """An error naming the request field behind an engine setting; an unknown sampler is A1111's 404."""
    if exc.setting == "sampler":
        return ApiError(404, f"Sampler not found: {exc}", sampler_field)
    name = REQUEST_FIELDS.get(exc.setting, exc.setting)
    return invalid(name, f"{name}: {exc}")


class RunContext(Protocol):
    """What `run` reports through and learns it must stop from: the server's `jobs.JobContext`, or a batch runner's
    (`sd_core.batch.worker`), so both run a checked request by the same code."""

    job: Any  # has an `id`
    interrupted: Any  # threading.Event-like: set() / is_set()
    cancelled: Any

    def set_phase(self, text: str, *, job_count: int | None = None, job_no: int | None = None) -> None: ...

    def begin_batch(self, job_no: int, job_count: int) -> None: ...

    def step_callback(
        self, cancelled: type[BaseException], interrupted: type[BaseException]
    ) -> Callable[[Any], None]: ...


@dataclass
class Plan:
    """A checked request, ready for the worker: the engine settings (seed drawn), the prepared images."""

    kind: str  # "txt2img", "img2img" or "inpaint"
    request: GenerationRequest
    prepared: Prepared
    settings: GenerationSettings
    max_pixels: int  # --max-pixels, checked again once the model's native size is known
    batch_size: int
    ignored_fields: list[str]
    model: ModelEntry | None = None  # override_settings.sd_model_checkpoint
    images: Images | None = None
    strength: float | None = None  # as requested (the engine may get a higher one: `sampling_fields.engine_strength`)
    upscale: sd_upscale.SdUpscale | None = None  # script_name "SD upscale"
    refiner: ModelEntry | None = None  # refiner_checkpoint (SDXL's refiner, A1111's fields)
    controlnet: list[controlnet.UnitPlan] = field(default_factory=list)  # alwayson_scripts.controlnet


@dataclass
class Outcome:
    """What the worker hands back: images with their engine info, the settings as run, and how the run went."""

    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    settings: GenerationSettings | None = None  # resolved against the model: its CFG scale and size filled in
    interrupted: bool = False
    detected_maps: list[Image.Image] = field(default_factory=list)  # ControlNet units' maps, after the images
    model_title: str = ""
    model_hash: str | None = None
    job_id: int = 0
    started: float = 0.0


def _server_caps(req: GenerationRequest, settings: ServerSettings) -> None:
    """This server's own caps (`sd-core serve --max-...`), tighter than the engine's limits."""
    for name, value, cap, option in (
        ("steps", req.steps, settings.max_steps, "--max-steps"),
        ("hr_second_pass_steps", getattr(req, "hr_second_pass_steps", None), settings.max_steps, "--max-steps"),
        ("batch_size", req.batch_size, settings.max_batch, "--max-batch"),
        ("n_iter", req.n_iter, settings.max_n_iter, "--max-n-iter"),
    ):
        if value is not None and value > cap:
            raise invalid(name, f"{name}: {value} is more than this server allows ({cap}, {option})")


def _tile(req: GenerationRequest) -> TileOptions | None:
    """sd-core's `sd_core_tile` (txt2img): tiled sampling, for the hires fix's second pass at texture sizes."""
    tile = getattr(req, "sd_core_tile", None)
    if tile is None:
        return None
    return TileOptions(width=tile.width, height=tile.height, overlap=tile.overlap)


def _check_pixels(
    width: int | None, height: int | None, batch: int, max_pixels: int, hires: HiresOptions | None = None
) -> None:
    """width * height * batch_size within --max-pixels (a size left to the model is checked once it is known); with
    hires fix, its target size (and that it is a size the engine makes); a 422 naming the field to lower."""
    if width is None or height is None:
        return
    size_field = "width"
    if hires is not None:
        size_field = "hr_scale" if hires.width is None and hires.height is None else "hr_resize_x"
        try:
            width, height = hires.target_size(width, height)
        except limits.SettingError as exc:
            raise setting_error(exc) from None
    pixels = width * height * batch
    if pixels > max_pixels:
        field_name = "batch_size" if width * height <= max_pixels else size_field
        raise invalid(
            field_name,
            f"{field_name}: width*height*batch_size = {width}*{height}*{batch} = {pixels} pixels is more than this "
            f"server allows ({max_pixels}, --max-pixels)",
        )


def _model(req: GenerationRequest, directory: ModelDirectory, refiner: bool = False) -> ModelEntry | None:
    """The checkpoint of override_settings.sd_model_checkpoint (or with `refiner`, of refiner_checkpoint)."""
    field, name = f"override_settings.{CHECKPOINT}", (req.override_settings or {}).get(CHECKPOINT)
    if refiner:
        field, name = "refiner_checkpoint", req.refiner_checkpoint
    if name is None or (refiner and name in refusals.NO_CHECKPOINT):
        return None
    try:
        return directory.resolve(name)
    except ModelNameError as exc:
        raise invalid(field, str(exc)) from None


def plan(
    req: GenerationRequest,
    kind: str,
    settings: ServerSettings,
    directory: ModelDirectory,
    store: dict[str, Any],
    styles: StyleFile,
) -> Plan:
    """Everything that can be checked without the device; raises ApiError (4xx) naming the field."""
    _server_caps(req, settings)
    choices = upscalers.available(settings)
    p = prepare(req, store, styles, choices)
    req = p.request
    model = _model(req, directory)
    upscale, images = None, None
    if sd_upscale.is_sd_upscale(req):
        assert isinstance(req, Img2ImgRequest)
        upscale, images = sd_upscale.prepare(req, p, settings.max_input_pixels, choices)
    elif isinstance(req, Img2ImgRequest):
        images = prepare_images(req, p, settings.max_input_pixels)
    inpaint, strength = None, None
    batch_size = 1 if upscale else req.batch_size or 1
    if images is not None:
        assert isinstance(req, Img2ImgRequest)
        strength = req.denoising_strength if req.denoising_strength is not None else 0.75
        batch_size = len(images.images) if len(images.images) > 1 else batch_size
        if images.mask is not None:
            kind = "inpaint"
            inpaint = InpaintOptions(
                mask_blur=req.mask_blur if req.mask_blur is not None else (req.mask_blur_x or 0),
                only_masked=bool(req.inpaint_full_res),
                padding=req.inpaint_full_res_padding or 0,
                fill=limits.FILLS[req.inpainting_fill or 0],
            )
    sampler_field = "sampler_index" if req.sampler_index and not req.sampler_name else "sampler_name"
    width, height = hires.first_pass_size(req, p.width, p.height)
    if images is not None:
        width, height = images.width, images.height
    tiling = req.tiling if req.tiling is not None else p.settings["tiling"]
    try:
        hires_options = hires.options(req, p, styles)
        chosen = GenerationSettings(
            prompt=p.prompt,
            negative_prompt=p.negative_prompt,
            width=width,
            height=height,
            steps=req.steps or 50,
            sampler=req.sampler_name or req.sampler_index or "Euler",
            schedule=req.scheduler,
            cfg_scale=req.cfg_scale,  # None (left out): the model's own default
            seed=req.seed if req.seed not in (None, limits.RANDOM_SEED) else random.randrange(limits.RANDOM_SEED_RANGE),
            batch_size=1 if images is not None and len(images.images) > 1 else batch_size,
            clip_skip=p.settings[CLIP_SKIP],
            tiling=tiling,
            strength=None
            if strength is None or images.unchanged
            else sampling_fields.engine_strength(strength, req.steps or 50),
            inpaint=inpaint,
            **sampling_fields.seed_extras(req, p.settings, images is not None),
            hires=hires_options,
            resize_mode="latent" if images is not None and images.latent else "resize",
            tile=upscale.tile if upscale is not None else _tile(req),
            extra_networks=not req.disable_extra_networks,
        )
        chosen = replace(chosen, **sampling_fields.sampler_options(req, chosen.sampler, p.settings))
    except limits.SettingError as exc:
        raise setting_error(exc, sampler_field) from None
    context = refusals.Context("txt2img" if images is None else "img2img", chosen.sampler, (width, height), p.settings)
    ignored = refusals.check(req, context)
    units = controlnet.plan_units(req, settings.max_input_pixels, controlnet.ControlNetFolder(settings.controlnet_dir))
    ignored += [name for unit in units for name in unit.ignored]
    _check_pixels(width, height, batch_size, settings.max_pixels, chosen.hires)
    refiner = _model(req, directory, refiner=True)
    return Plan(
        kind, req, p, chosen, settings.max_pixels, batch_size, ignored, model, images, strength, upscale, refiner, units
    )


def run(
    p: Plan,
    ctx: RunContext,
    models: ModelManager,
    cancelled: type[BaseException],
    interrupted: type[BaseException],
) -> Outcome:
    """Worker side: load the model if needed, run each batch, stop early when interrupted, go on when skipped."""
    req = p.request
    n_iter = req.n_iter or 1
    ctx.set_phase("loading model" if p.model else p.kind, job_count=n_iter)
    pipe = models.pipeline(p.model)
    entry = p.model or models.current
    out = Outcome(
        model_title=models.directory.title(entry),
        model_hash=models.short_hash(entry),
        job_id=ctx.job.id,
        started=time.time(),
    )
    if p.model is not None and not req.override_settings_restore_afterwards:
        models.select(p.model)
    images = p.images
    if p.upscale is not None and images is not None:
        ctx.set_phase("upscaling")
        images = p.upscale.upscale(images, p.settings.tiling)
    size = None if images is None else images.images[0].size
    try:
        out.settings = p.settings.resolve(p.kind, pipe.defaults, size)
        if p.refiner is not None:
            refiner = {"refiner": models.refiner(p.refiner), "refiner_switch_at": req.refiner_switch_at}
            out.settings = replace(out.settings, **refiner)
    except limits.SettingError as exc:
        raise setting_error(exc) from None
    _check_pixels(out.settings.width, out.settings.height, p.batch_size, p.max_pixels, out.settings.hires)
    if p.controlnet:  # the maps at the generation size, the nets on the model's device
        assert out.settings.width is not None and out.settings.height is not None
        size = (out.settings.width, out.settings.height)
        controls, out.detected_maps = controlnet.engine_units(p.controlnet, *size, pipe.device, pipe.dtype)
        out.settings = replace(out.settings, control=tuple(controls))
    set_preview = getattr(ctx, "set_preview", None)  # a context that shows previews (the server's /progress)
    if set_preview is not None:
        set_preview(preview.for_pipeline(pipe))  # the model's map: fitted once per model, here where its VAE may run
    callback = ctx.step_callback(cancelled, interrupted)
    calls = [(None, None)] if images is None else [(img, images.mask) for img in images.images]
    passes = 1 if out.settings.hires is None else 2  # hires fix: two jobs a batch in the progress (A1111)
    for n in range(n_iter):
        if ctx.interrupted.is_set() or ctx.cancelled.is_set():
            out.interrupted = True
            break
        ctx.begin_batch(n * passes, n_iter * passes)
        ctx.set_phase(f"{p.kind}: batch {n + 1} of {n_iter}")
        if images is not None and images.unchanged:
            unchanged = _unchanged(p, images, _batch(out.settings, n * p.batch_size), pipe.name)
            out.images.extend(unchanged)
            out.seeds.extend(int(img.info["seed"]) for img in unchanged)
            continue
        for i, (image, mask) in enumerate(calls):
            batch = _batch(out.settings, n * p.batch_size + i)
            try:
                imgs = pipe.generate(batch, image, mask, callback=callback)
            except interrupted:  # an engine that does not finish the batch early: this batch is lost
                imgs = []
            except cancelled:
                out.interrupted = True
                return out
            except limits.SettingError as exc:  # found by the engine before it starts (the hires second pass's)
                raise setting_error(exc) from None
            except LoraError as exc:  # an unknown LoRA, or a file that does not fit the model: before any work
                raise invalid("prompt", f"prompt: {exc}") from None
            out.images.extend(imgs)
            out.seeds.extend(int(img.info["seed"]) for img in imgs)
    out.interrupted = out.interrupted or ctx.interrupted.is_set()
    return out


def _batch(s: GenerationSettings, first: int) -> GenerationSettings:
    """The settings of the engine call whose first image is image `first` of the request: its seed counted up, or
    with a variation its subseed (A1111: all images keep the seed)."""
    if s.subseed_strength and s.subseed is not None:
        return replace(s, subseed=s.subseed + first)
    assert s.seed is not None
    return replace(s, seed=s.seed + first)


def _unchanged(p: Plan, images: Images, s: GenerationSettings, model: str) -> list[Image.Image]:
    """The init images as prepared, each with the parameters text of the run that was asked for."""
    out = copies(images, p.batch_size)
    assert s.seed is not None
    for pos, img in enumerate(out):
        image_seed = s.seed + (pos if len(images.images) > 1 and not s.subseed_strength else 0)
        fields = {
            "Steps": s.steps,
            "Sampler": s.choice.label,
            "Schedule type": s.choice.schedule_label,
            "CFG scale": s.cfg_scale,
            "Seed": image_seed,
            "Size": f"{img.width}x{img.height}",
            "Model": model,
            "Denoising strength": p.strength,
        }
        img.info["parameters"] = format_parameters(s.prompt, s.negative_prompt, fields)
        img.info["seed"] = image_seed
    return out


def infotext(p: Plan, img: Image.Image) -> str:
    """The image's A1111 parameters text, with the prompt A1111 shows (styled, extra-network tags kept) and the
    denoising strength that was asked for."""
    text = str(img.info.get("parameters", ""))
    extra = {} if p.upscale is None else p.upscale.params()
    if not text or (p.prepared.shown_prompt == p.prepared.prompt and p.strength == p.settings.strength and not extra):
        return text
    parsed = parse_parameters(text)
    parsed.pop("prompt")
    negative = parsed.pop("negative_prompt")
    if "Denoising strength" in parsed and p.strength is not None:
        parsed["Denoising strength"] = p.strength
    return format_parameters(p.prepared.shown_prompt, negative, {**parsed, **extra})


def echo(req: GenerationRequest) -> dict[str, Any]:
    """The request as understood, for the response's `parameters` (init images only when asked, like A1111)."""
    data = req.model_dump()
    if isinstance(req, Img2ImgRequest) and not req.include_init_images:
        data["init_images"] = None
        data["mask"] = None
    return data


def respond(p: Plan, out: Outcome) -> dict[str, Any]:
    """A1111's response: base64 PNGs with their parameters chunk, the echoed request, and the `info` JSON."""
    req = p.request
    s = out.settings or p.settings
    infotexts = [infotext(p, img) for img in out.images]
    pnginfo = bool(p.prepared.settings["enable_pnginfo"])
    images = []
    if req.send_images is not False:
        images = [png_b64(img, text if pnginfo else None) for img, text in zip(out.images, infotexts, strict=True)]
        images += [png_b64(img) for img in out.detected_maps]  # the ControlNet extension's detected maps
    first = out.images[0] if out.images else None
    shown, negative = p.prepared.shown_prompt, p.prepared.negative_prompt
    info = {
        "prompt": shown,
        "all_prompts": [shown] * len(out.images),
        "negative_prompt": negative,
        "all_negative_prompts": [negative] * len(out.images),
        "seed": out.seeds[0] if out.seeds else s.seed,
        "all_seeds": out.seeds,
        "subseed": -1 if s.subseed is None else s.subseed,
        "all_subseeds": [-1 if s.subseed is None else s.subseed + k for k in range(len(out.images))],
        "subseed_strength": s.subseed_strength,
        "width": first.width if first and s.hires is None else s.width,  # hires: A1111's first-pass size
        "height": first.height if first and s.hires is None else s.height,
        "sampler_name": s.choice.label,
        "scheduler": s.choice.schedule_label,
        "cfg_scale": s.cfg_scale,
        "steps": s.steps,
        "batch_size": p.batch_size,
        "n_iter": req.n_iter,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": out.model_title,
        "sd_model_hash": out.model_hash,
        "seed_resize_from_w": req.seed_resize_from_w if req.seed_resize_from_w is not None else -1,
        "seed_resize_from_h": req.seed_resize_from_h if req.seed_resize_from_h is not None else -1,
        "denoising_strength": p.strength if p.strength is not None else getattr(req, "denoising_strength", None),
        "extra_generation_params": {} if p.upscale is None else p.upscale.params(),
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": list(req.styles or []),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(out.started)),
        "clip_skip": s.clip_skip,
        "is_using_inpainting_conditioning": p.kind == "inpaint",
        "interrupted": out.interrupted,
        "job_id": out.job_id,
        **p.prepared.ignored,
    }
    if p.ignored_fields:
        info["ignored_fields"] = p.ignored_fields
    return {"images": images, "parameters": echo(req), "info": json.dumps(info)}
