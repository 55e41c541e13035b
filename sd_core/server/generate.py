"""A1111 generation requests -> engine calls.

Split in three so the device does only device work: `plan` checks and decodes a request (request thread, before it
is queued: a bad request never waits in line), `run` calls the engine (worker thread), `respond` encodes the PNGs and
the A1111 `info` JSON (request thread again).

Seeds follow A1111: `seed` -1 picks a random one; batch `n` of `n_iter` uses `seed + n * batch_size`. The engine draws
a whole batch from one seed, so every image of a batch reports that batch's seed.

Interrupting stops the sampler at its next step. The batches finished before it come back as usual; the batch being
sampled is dropped (no half-denoised images); later batches are skipped; `info.interrupted` is true. Status 200.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image, ImageOps

from sd_core import GenerationSettings, InpaintOptions, ModelDefaults, limits

from .codec import decode_image, png_b64
from .engine import ModelManager, Options
from .errors import ApiError, invalid
from .jobs import JobContext
from .models import ModelDirectory, ModelEntry, ModelNameError
from .schemas import GenerationRequest, Img2ImgRequest
from .settings import ServerSettings

# `GenerationSettings` names -> the request fields they come from, so an engine error names what the client sent
REQUEST_FIELDS = {
    "sampler": "sampler_name",
    "schedule": "scheduler",
    "strength": "denoising_strength",
    "padding": "inpaint_full_res_padding",
    "fill": "inpainting_fill",
    "only_masked": "inpaint_full_res",
    "clip_skip": f"override_settings.{Options.CLIP_SKIP}",
}


def setting_error(exc: limits.SettingError, sampler_field: str = "sampler_name") -> ApiError:
    """A 422 naming the request field behind an engine setting."""
    name = REQUEST_FIELDS.get(exc.setting, exc.setting)
    name = sampler_field if exc.setting == "sampler" else name
    return invalid(name, f"{name}: {exc}")


@dataclass
class Plan:
    """A checked request, ready for the worker: the engine settings (seed drawn), the decoded images."""

    kind: str  # "txt2img", "img2img" or "inpaint"
    request: GenerationRequest
    settings: GenerationSettings
    max_pixels: int  # --max-pixels, checked again once the model's native size is known
    model: ModelEntry | None = None  # override_settings.sd_model_checkpoint
    restore_model: bool = True
    image: Image.Image | None = None
    mask: Image.Image | None = None


@dataclass
class Outcome:
    """What the worker hands back: images with their engine info, the settings as run, and how the run went."""

    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    settings: GenerationSettings | None = None  # resolved against the model: its CFG scale and size filled in
    interrupted: bool = False
    model_title: str = ""
    model_hash: str | None = None
    job_id: int = 0
    started: float = 0.0


def _overrides(req: GenerationRequest, directory: ModelDirectory, options: Options) -> tuple[ModelEntry | None, Any]:
    overrides = req.override_settings or {}
    model = None
    if "sd_model_checkpoint" in overrides:
        try:
            model = directory.resolve(overrides["sd_model_checkpoint"])
        except ModelNameError as exc:
            raise invalid("override_settings.sd_model_checkpoint", str(exc)) from None
    return model, overrides.get(Options.CLIP_SKIP, options.clip_skip)


def _server_caps(req: GenerationRequest, settings: ServerSettings) -> None:
    """This server's own caps (`sd-core serve --max-...`), tighter than the engine's limits."""
    if req.steps > settings.max_steps:
        raise invalid(
            "steps", f"steps: {req.steps} is more than this server allows ({settings.max_steps}, --max-steps)"
        )
    if req.batch_size > settings.max_batch:
        raise invalid(
            "batch_size",
            f"batch_size: {req.batch_size} is more than this server allows ({settings.max_batch}, --max-batch)",
        )
    if req.n_iter > settings.max_n_iter:
        raise invalid("n_iter", f"n_iter: {req.n_iter} is more than this server allows ({settings.max_n_iter})")


def _check_pixels(width: int | None, height: int | None, batch: int, max_pixels: int) -> None:
    """width * height * batch_size within --max-pixels (a size left to the model is checked once it is known)."""
    if width is None or height is None:
        return
    pixels = width * height * batch
    if pixels > max_pixels:
        field_name = "batch_size" if width * height <= max_pixels else "width"
        raise invalid(
            field_name,
            f"{field_name}: width*height*batch_size = {width}*{height}*{batch} = {pixels} pixels is more than this "
            f"server allows ({max_pixels}, --max-pixels)",
        )


def plan(
    req: GenerationRequest, kind: str, settings: ServerSettings, directory: ModelDirectory, options: Options
) -> Plan:
    """Everything that can be checked without the device; raises ApiError (422) naming the field."""
    _server_caps(req, settings)
    model, clip_skip = _overrides(req, directory, options)
    image = mask = None
    inpaint = strength = None
    given = req.model_fields_set
    width = req.width if "width" in given else None  # left out: the model's native size, or the init image's
    height = req.height if "height" in given else None
    if isinstance(req, Img2ImgRequest):
        image = decode_image(req.init_images[0], "init_images[0]", settings.max_input_pixels)
        strength = req.denoising_strength
        if req.mask is not None:
            mask = decode_image(req.mask, "mask", settings.max_input_pixels)
            if req.inpainting_mask_invert:
                mask = ImageOps.invert(mask.convert("L"))
            kind = "inpaint"
            inpaint = InpaintOptions(
                mask_blur=req.mask_blur,
                only_masked=req.inpaint_full_res,
                padding=req.inpaint_full_res_padding,
                fill=limits.FILLS[req.inpainting_fill],
            )
    sampler_field = "sampler_index" if req.sampler_index and not req.sampler_name else "sampler_name"
    try:
        chosen = GenerationSettings(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            width=width,
            height=height,
            steps=req.steps,
            sampler=req.sampler_name or req.sampler_index or "Euler",
            schedule=req.scheduler,
            cfg_scale=req.cfg_scale,  # None (left out): the model's own default
            seed=req.seed if req.seed != limits.RANDOM_SEED else random.randrange(limits.RANDOM_SEED_RANGE),
            batch_size=req.batch_size,
            clip_skip=clip_skip,
            tiling=req.tiling,
            strength=strength,
            inpaint=inpaint,
        )
    except limits.SettingError as exc:
        raise setting_error(exc, sampler_field) from None
    if image is not None and not (inpaint is not None and inpaint.only_masked):
        resolved = chosen.resolve(kind, ModelDefaults(), image.size)  # the init image's size where left out
        width, height = resolved.width, resolved.height
    _check_pixels(width, height, req.batch_size, settings.max_pixels)
    return Plan(kind, req, chosen, settings.max_pixels, model, req.override_settings_restore_afterwards, image, mask)


def run(p: Plan, ctx: JobContext, models: ModelManager, cancelled: type[BaseException]) -> Outcome:
    """Worker side: load the model if needed, run each batch, stop early when interrupted."""
    req = p.request
    ctx.set_phase("loading model" if p.model else p.kind, job_count=req.n_iter)
    pipe = models.pipeline(p.model)
    entry = p.model or models.current
    out = Outcome(
        model_title=models.directory.title(entry),
        model_hash=models.short_hash(entry),
        job_id=ctx.job.id,
        started=time.time(),
    )
    if p.model is not None and not p.restore_model:
        models.select(p.model)
    size = None if p.image is None else p.image.size
    try:
        out.settings = p.settings.resolve(p.kind, pipe.defaults, size)
    except limits.SettingError as exc:
        raise setting_error(exc) from None
    _check_pixels(out.settings.width, out.settings.height, req.batch_size, p.max_pixels)
    callback = ctx.step_callback(cancelled)
    for n in range(req.n_iter):
        if ctx.interrupted.is_set():
            out.interrupted = True
            break
        ctx.begin_batch(n, req.n_iter)
        ctx.set_phase(f"{p.kind}: batch {n + 1} of {req.n_iter}")
        batch = replace(out.settings, seed=out.settings.seed + n * req.batch_size)
        try:
            imgs = pipe.generate(batch, p.image, p.mask, callback=callback)
        except cancelled:
            out.interrupted = True
            break
        out.images.extend(imgs)
        out.seeds.extend(int(img.info["seed"]) for img in imgs)
    return out


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
    infotexts = [str(img.info.get("parameters", "")) for img in out.images]
    images = [png_b64(img, text) for img, text in zip(out.images, infotexts, strict=True)] if req.send_images else []
    first = out.images[0] if out.images else None
    info = {
        "prompt": req.prompt,
        "all_prompts": [req.prompt] * len(out.images),
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [req.negative_prompt] * len(out.images),
        "seed": out.seeds[0] if out.seeds else s.seed,
        "all_seeds": out.seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(out.images),
        "subseed_strength": 0,
        "width": first.width if first else s.width,
        "height": first.height if first else s.height,
        "sampler_name": s.choice.label,
        "scheduler": s.choice.schedule_label,
        "cfg_scale": s.cfg_scale,
        "steps": req.steps,
        "batch_size": req.batch_size,
        "n_iter": req.n_iter,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": out.model_title,
        "sd_model_hash": out.model_hash,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": getattr(req, "denoising_strength", None),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(out.started)),
        "clip_skip": s.clip_skip,
        "is_using_inpainting_conditioning": p.kind == "inpaint",
        "interrupted": out.interrupted,
        "job_id": out.job_id,
    }
    return {"images": images, "parameters": echo(req), "info": json.dumps(info)}
