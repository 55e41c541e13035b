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

import inspect
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageOps

from . import catalog
from .codec import decode_image, png_b64
from .engine import ModelManager, Options
from .errors import invalid
from .jobs import JobContext
from .models import ModelDirectory, ModelEntry, ModelNameError
from .schemas import MAX_SIDE, MIN_SIDE, GenerationRequest, Img2ImgRequest
from .settings import ServerSettings

FILL = {0: "fill", 1: "original", 2: "latent_noise", 3: "latent_nothing"}


@dataclass
class Plan:
    """A checked request, ready for the worker."""

    kind: str  # "txt2img", "img2img" or "inpaint"
    request: GenerationRequest
    pick: catalog.SamplerPick
    width: int
    height: int
    seed: int
    clip_skip: int
    model: ModelEntry | None = None  # override_settings.sd_model_checkpoint
    restore_model: bool = True
    image: Image.Image | None = None
    mask: Image.Image | None = None


@dataclass
class Outcome:
    """What the worker hands back: images with their engine info, and how the run went."""

    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    interrupted: bool = False
    model_title: str = ""
    model_hash: str | None = None
    job_id: int = 0
    started: float = 0.0


def _round8(value: int) -> int:
    return max(MIN_SIDE, min(MAX_SIDE, int(value / 8 + 0.5) * 8))


def _overrides(req: GenerationRequest, directory: ModelDirectory, options: Options) -> tuple[ModelEntry | None, int]:
    overrides = req.override_settings or {}
    model = None
    if "sd_model_checkpoint" in overrides:
        try:
            model = directory.resolve(overrides["sd_model_checkpoint"])
        except ModelNameError as exc:
            raise invalid("override_settings.sd_model_checkpoint", str(exc)) from None
    clip_skip = overrides.get(Options.CLIP_SKIP, options.clip_skip)
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= 12:
        raise invalid(
            f"override_settings.{Options.CLIP_SKIP}",
            f"override_settings.{Options.CLIP_SKIP}: must be an integer from 1 to 12, got {clip_skip!r}",
        )
    return model, clip_skip


def plan(
    req: GenerationRequest, kind: str, settings: ServerSettings, directory: ModelDirectory, options: Options
) -> Plan:
    """Everything that can be checked without the device; raises ApiError (422) naming the field."""
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
    pick = catalog.pick_sampler(
        req.sampler_name or req.sampler_index, req.scheduler, "sampler_name" if req.sampler_name else "sampler_index"
    )
    model, clip_skip = _overrides(req, directory, options)
    image = mask = None
    width, height = req.width, req.height
    if isinstance(req, Img2ImgRequest):
        image = decode_image(req.init_images[0], "init_images[0]", settings.max_input_pixels)
        if req.mask is not None:
            mask = decode_image(req.mask, "mask", settings.max_input_pixels)
            if req.inpainting_mask_invert:
                mask = ImageOps.invert(mask.convert("L"))
            kind = "inpaint"
        given = req.model_fields_set
        width = req.width if "width" in given else _round8(image.width)
        height = req.height if "height" in given else _round8(image.height)
    pixels = width * height * req.batch_size
    if pixels > settings.max_pixels:
        field_name = "batch_size" if width * height <= settings.max_pixels else "width"
        raise invalid(
            field_name,
            f"{field_name}: width*height*batch_size = {width}*{height}*{req.batch_size} = "
            f"{pixels} pixels is more than this server allows ({settings.max_pixels}, "
            "--max-pixels)",
        )
    seed = req.seed if req.seed != -1 else random.randrange(2**32)
    return Plan(
        kind, req, pick, width, height, seed, clip_skip, model, req.override_settings_restore_afterwards, image, mask
    )


def _accepts(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


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
    common: dict[str, Any] = dict(
        negative_prompt=req.negative_prompt,
        width=p.width,
        height=p.height,
        steps=req.steps,
        sampler=p.pick.sampler,
        schedule=p.pick.schedule,
        cfg_scale=req.cfg_scale,
        batch_size=req.batch_size,
        clip_skip=p.clip_skip,
        callback=ctx.step_callback(cancelled),
    )
    method = getattr(pipe, p.kind)
    if req.tiling:
        if not _accepts(method, "tiling"):
            raise ValueError("tiling: this engine does not support tiling")
        common["tiling"] = "xy" if req.tiling is True else req.tiling
    for n in range(req.n_iter):
        if ctx.interrupted.is_set():
            out.interrupted = True
            break
        ctx.begin_batch(n, req.n_iter)
        ctx.set_phase(f"{p.kind}: batch {n + 1} of {req.n_iter}")
        seed = p.seed + n * req.batch_size
        try:
            if p.kind == "txt2img":
                imgs = method(req.prompt, seed=seed, **common)
            elif p.kind == "img2img":
                imgs = method(p.image, req.prompt, strength=req.denoising_strength, seed=seed, **common)
            else:
                assert isinstance(req, Img2ImgRequest)
                imgs = method(
                    p.image,
                    p.mask,
                    req.prompt,
                    strength=req.denoising_strength,
                    mask_blur=req.mask_blur,
                    only_masked=req.inpaint_full_res,
                    padding=req.inpaint_full_res_padding,
                    fill=FILL[req.inpainting_fill],
                    seed=seed,
                    **common,
                )
        except cancelled:
            out.interrupted = True
            break
        out.images.extend(imgs)
        out.seeds.extend(int(img.info.get("seed", seed)) for img in imgs)
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
    infotexts = [str(img.info.get("parameters", "")) for img in out.images]
    images = [png_b64(img, text) for img, text in zip(out.images, infotexts, strict=True)] if req.send_images else []
    first = out.images[0] if out.images else None
    info = {
        "prompt": req.prompt,
        "all_prompts": [req.prompt] * len(out.images),
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [req.negative_prompt] * len(out.images),
        "seed": out.seeds[0] if out.seeds else p.seed,
        "all_seeds": out.seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(out.images),
        "subseed_strength": 0,
        "width": first.width if first else p.width,
        "height": first.height if first else p.height,
        "sampler_name": p.pick.label,
        "scheduler": p.pick.schedule_label,
        "cfg_scale": req.cfg_scale,
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
        "clip_skip": p.clip_skip,
        "is_using_inpainting_conditioning": p.kind == "inpaint",
        "interrupted": out.interrupted,
        "job_id": out.job_id,
    }
    return {"images": images, "parameters": echo(req), "info": json.dumps(info)}
