"""The FastAPI app: A1111's `/sdapi/v1` endpoints over one engine pipeline and one FIFO worker.

Handlers never touch the device: generation, extras and model loading are jobs for the worker (`jobs.py`), awaited
without blocking the event loop; everything else (progress, interrupt, skip, options, listings, png-info) answers at
once, busy or not. The discovery listings are in `listings.py`, the extras routes in `extras.py`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query
from fastapi.concurrency import run_in_threadpool

from sd_core import __version__

from . import catalog, controlnet, controlnet_routes, extras, generate, listings, upscalers
from .codec import decode_image
from .engine import Loader, ModelManager, default_loader
from .errors import ApiError, install_handlers, invalid, log
from .guard import Guard
from .jobs import Job, JobQueue, Progress, ShuttingDown
from .models import ModelDirectory, ModelNameError
from .options import CHECKPOINT, OptionStore, check_value
from .schemas import (
    ErrorResponse,
    GenerationResponse,
    Img2ImgRequest,
    InterrogateRequest,
    PingResponse,
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    ProgressState,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
    Txt2ImgRequest,
)
from .settings import ServerSettings, is_loopback
from .styles import StyleFile

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [
        (400, "the body could not be read (not UTF-8)"),
        (401, "missing or wrong token"),
        (403, "not addressed to localhost"),
        (413, "request body too large"),
        (422, "invalid request; `field` names the culprit"),
        (500, "engine failure"),
    ]
}
GENERATION_ERRORS = {
    **ERRORS,
    404: {"model": ErrorResponse, "description": "Sampler not found (A1111's status for an unknown sampler)"},
    503: {"model": ErrorResponse, "description": "out of device memory"},
}


@dataclass
class ServerState:
    """Everything the handlers share; on `app.state.sd`."""

    settings: ServerSettings
    jobs: JobQueue
    directory: ModelDirectory
    models: ModelManager
    options: OptionStore
    styles: StyleFile
    loras: Any  # sd_core.lora.LoraLibrary over --lora-dir (the listing; each loaded model has its own)
    embeddings: Any  # sd_core.embeddings.EmbeddingLibrary over --embeddings-dir
    cancelled: type[BaseException]  # sd_core.Cancelled: what the step callback raises when the server stops
    interrupted: type[BaseException]  # sd_core.Interrupted: ... on interrupt and skip


def build_state(settings: ServerSettings, loader: Loader | None = None) -> ServerState:
    """Models directory, initial model choice and the worker; the model itself loads at startup."""
    if settings.model is not None:
        root = settings.models_dir or Path(settings.model).resolve().parent
        directory = ModelDirectory(root, extra=Path(settings.model))
        initial = directory.entry_for_path(Path(settings.model))
    else:
        assert settings.models_dir is not None
        directory = ModelDirectory(settings.models_dir)
        entries = directory.entries()
        initial = entries[0] if entries else None
    if initial is None:
        raise ValueError(f"no checkpoints (.safetensors, .ckpt, diffusers folders) in {directory.root}")
    loader = loader or default_loader(settings.device, settings.dtype, settings.lora_dirs, settings.embedding_dirs)
    models = ModelManager(directory, loader, initial)
    from sd_core import Cancelled, Interrupted
    from sd_core.embeddings import EmbeddingLibrary
    from sd_core.lora import LoraLibrary

    return ServerState(
        settings,
        JobQueue(),
        directory,
        models,
        OptionStore(lambda: upscalers.available(settings)),
        StyleFile(settings.styles),
        LoraLibrary(settings.lora_dirs),
        EmbeddingLibrary(settings.embedding_dirs),
        Cancelled,
        Interrupted,
    )


class PreviewCache:
    """The latest preview as base64 PNG, made at most once per step however often clients poll, by the running
    model's own latent -> RGB map (`sd_core.preview`, fitted in the job's thread before it samples)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._value: str | None = None

    def get(self, snap: Progress) -> str | None:
        if snap.job is None or snap.latents is None:
            return None
        key = (snap.job.id, snap.latents_version)
        with self._lock:
            if key == self._key:
                return self._value
        from sd_core.preview import latents_to_preview

        buf = io.BytesIO()
        latents_to_preview(snap.latents, mapping=snap.preview).save(buf, format="PNG")
        value = base64.b64encode(buf.getvalue()).decode("ascii")
        with self._lock:
            self._key, self._value = key, value
        return value


async def wait_for(job: Job) -> Any:
    """Await a job's result; engine ValueErrors (bad settings, bad checkpoint) are the client's 422."""
    try:
        return await asyncio.wrap_future(job.future)
    except ApiError:
        raise
    except ModelNameError as exc:
        raise invalid("sd_model_checkpoint", str(exc)) from None
    except (ValueError, FileNotFoundError) as exc:
        raise ApiError(422, str(exc)) from None
    except ShuttingDown as exc:
        raise ApiError(503, str(exc)) from None
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":
            raise ApiError(503, f"out of device memory: {exc}; try a smaller size or batch") from None
        raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}") from None


def _progress_response(snap: Progress, preview: str | None) -> dict[str, Any]:
    state = ProgressState(queue_pending=snap.pending)
    if snap.job is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    state.job = snap.job.kind
    state.job_count = snap.job_count
    state.job_no = snap.job_no
    state.sampling_step = snap.step
    state.sampling_steps = snap.total
    state.interrupted = snap.interrupted
    state.job_timestamp = time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() - (time.monotonic() - snap.started)))
    done = snap.job_no + (snap.step / snap.total if snap.total else 0.0)
    progress = min(1.0, done / max(snap.job_count, 1))
    elapsed = time.monotonic() - snap.started
    eta = elapsed / progress - elapsed if progress > 0 else 0.0
    return {
        "progress": progress,
        "eta_relative": max(eta, 0.0),
        "state": state,
        "current_image": preview,
        "textinfo": snap.textinfo,
    }


def create_app(settings: ServerSettings, loader: Loader | None = None) -> FastAPI:
    """The app for `settings`; `loader(path) -> pipeline` defaults to `sd_core.load` on the chosen device."""
    sd = build_state(settings, loader)
    previews = PreviewCache()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        entry = sd.models.current
        job = sd.jobs.submit("load", lambda ctx: sd.models.pipeline(entry))
        try:
            await asyncio.wrap_future(job.future)
        except Exception as exc:
            log.error("sd-core serve: could not load %s: %s", entry.path, exc)
            sd.jobs.close()
            raise
        log.info("sd-core serve: model %s ready", entry.name)
        yield
        sd.jobs.close()

    app = FastAPI(
        title="sd_core",
        version=__version__,
        lifespan=lifespan,
        description="A local Stable Diffusion server with the AUTOMATIC1111 web UI API (`/sdapi/v1`).",
    )
    app.state.sd = sd
    install_handlers(app)
    app.add_middleware(
        Guard, token=settings.token, max_body=settings.max_body_bytes, loopback_only=is_loopback(settings.host)
    )

    def submit(kind: str, run: Any) -> Job:
        try:
            return sd.jobs.submit(kind, run)
        except ShuttingDown as exc:
            raise ApiError(503, str(exc)) from None

    async def generate_images(req: Txt2ImgRequest | Img2ImgRequest, kind: str) -> dict[str, Any]:
        store = sd.options.snapshot()
        plan = await run_in_threadpool(generate.plan, req, kind, settings, sd.directory, store, sd.styles)
        run = partial(generate.run, plan, models=sd.models, cancelled=sd.cancelled, interrupted=sd.interrupted)
        outcome = await wait_for(submit(plan.kind, run))
        if plan.request.override_settings_restore_afterwards is False:  # A1111 keeps the overridden settings
            sd.options.apply(_storable(plan.request.override_settings or {}, upscalers.available(settings)))
        return await run_in_threadpool(generate.respond, plan, outcome)

    async def run_job(kind: str, fn: Any) -> Any:
        return await wait_for(submit(kind, fn))

    @app.post("/sdapi/v1/txt2img", response_model=GenerationResponse, responses=GENERATION_ERRORS)
    async def txt2img(req: Txt2ImgRequest) -> dict[str, Any]:
        """Images from a prompt. Queued behind running jobs (FIFO)."""
        return await generate_images(req, "txt2img")

    @app.post("/sdapi/v1/img2img", response_model=GenerationResponse, responses=GENERATION_ERRORS)
    async def img2img(req: Img2ImgRequest) -> dict[str, Any]:
        """Images from an init image; with `mask`, inpainting. Queued behind running jobs (FIFO)."""
        return await generate_images(req, "img2img")

    @app.get("/sdapi/v1/progress", response_model=ProgressResponse, responses=ERRORS)
    def progress(skip_current_image: bool = Query(False)) -> dict[str, Any]:
        """The running job's progress and a cheap preview of its latest step."""
        snap = sd.jobs.snapshot()
        show = not skip_current_image and sd.options.get("live_previews_enable")
        return _progress_response(snap, previews.get(snap) if show else None)

    @app.post("/sdapi/v1/interrupt", responses=ERRORS)
    def interrupt() -> dict[str, Any]:
        """Stop the running job at its next step (finished batches still come back); queued jobs still run."""
        sd.jobs.interrupt()
        return {}

    @app.post("/sdapi/v1/skip", responses=ERRORS)
    def skip() -> None:
        """Finish the current batch early (from its current estimate) and go on with the next one (A1111's skip)."""
        sd.jobs.skip()

    @app.get("/sdapi/v1/sd-models", response_model=list[SDModelItem], responses=ERRORS)
    def sd_models() -> list[dict[str, Any]]:
        """Checkpoints in the models directory; `hash`/`sha256` are known once a model has been loaded."""
        out = []
        for entry in sd.directory.entries():
            sha = sd.directory.hashes.get(entry.path)
            defaults = sd.models.defaults_of(entry)
            out.append(
                {
                    "title": sd.directory.title(entry),
                    "model_name": entry.model_name,
                    "hash": sha[:10] if sha else None,
                    "sha256": sha,
                    "filename": str(entry.path),
                    "config": None,
                    "sd_core_defaults": None if defaults is None else dataclasses.asdict(defaults),
                }
            )
        return out

    @app.post("/sdapi/v1/refresh-checkpoints", responses=ERRORS)
    def refresh_checkpoints() -> None:
        """The directory is rescanned on every listing; kept for A1111 clients that call it."""
        return None

    @app.get("/sdapi/v1/samplers", response_model=list[SamplerItem], responses=ERRORS)
    def samplers() -> list[dict[str, Any]]:
        return catalog.sampler_items()

    @app.get("/sdapi/v1/schedulers", response_model=list[SchedulerItem], responses=ERRORS)
    def schedulers() -> list[dict[str, Any]]:
        return catalog.scheduler_items()

    @app.get("/sdapi/v1/options", response_model=dict[str, Any], responses=ERRORS)
    def get_options() -> dict[str, Any]:
        """Every A1111 setting (see `options.py` for the ones this server acts on)."""
        entry = sd.models.current
        return sd.options.as_dict(sd.directory.title(entry), sd.directory.hashes.get(entry.path), sd.models.defaults())

    @app.post("/sdapi/v1/options", responses=ERRORS)
    async def set_options(body: dict[str, Any]) -> None:
        """Write A1111 settings; they read back. `sd_model_checkpoint` switches the model (a queued job: it waits for
        the generation ahead of it and answers once the model is loaded). A key A1111 does not define is a 422 and
        nothing is written."""
        updates = await run_in_threadpool(sd.options.check, body)  # may read the upscaler folders
        name = updates.pop(CHECKPOINT, None)
        entry = None
        if name is not None:
            try:
                entry = await run_in_threadpool(sd.directory.resolve, name)
            except ModelNameError as exc:
                raise invalid(CHECKPOINT, f"{CHECKPOINT}: {exc}") from None
        sd.options.apply(updates)
        if entry is not None and entry != sd.models.current:  # the current one again: nothing to do, as in A1111

            def switch(ctx: Any) -> None:
                ctx.set_phase(f"loading {entry.name}")
                sd.models.pipeline(entry)
                sd.models.select(entry)

            try:
                await wait_for(submit("load", switch))
            except ApiError as exc:
                if exc.status == 422:  # the file is there but not a checkpoint the engine can load
                    exc.field = CHECKPOINT
                raise
        return None

    @app.post("/sdapi/v1/unload-checkpoint", responses=ERRORS)
    async def unload_checkpoint() -> None:
        """Free the model's memory (queued behind running jobs, as A1111); the next generation loads it again."""
        await wait_for(submit("unload", lambda ctx: sd.models.unload()))

    @app.post("/sdapi/v1/reload-checkpoint", responses=ERRORS)
    async def reload_checkpoint() -> None:
        """Load the selected model now rather than at the next generation."""
        await wait_for(submit("reload", lambda ctx: sd.models.pipeline()))

    @app.post("/sdapi/v1/png-info", response_model=PNGInfoResponse, responses=ERRORS)
    def png_info(req: PNGInfoRequest) -> dict[str, Any]:
        """The A1111 `parameters` text of a PNG, raw and parsed."""
        from sd_core.pnginfo import parse_parameters, read_parameters

        if not req.image.strip():
            return {"info": "", "items": {}, "parameters": {}}
        img = decode_image(req.image, "image", settings.max_input_pixels)
        text = read_parameters(img) or ""
        items = {k: v for k, v in img.info.items() if k != "parameters" and isinstance(v, (str, int, float, bool))}
        return {"info": text, "items": items, "parameters": parse_parameters(text) if text else {}}

    @app.post(
        "/sdapi/v1/interrogate",
        responses={**ERRORS, 404: {"model": ErrorResponse, "description": "Model not found (none ships)"}},
    )
    def interrogate(req: InterrogateRequest) -> dict[str, Any]:
        """A1111's 404 for an interrogator it does not have: no interrogation model ships with sd_core (README)."""
        raise ApiError(404, f"Model not found: {req.model!r} (no interrogation model ships with sd_core)", "model")

    @app.get("/internal/ping", response_model=PingResponse, responses=ERRORS)
    def ping() -> dict[str, Any]:
        """Health check: answers as soon as the server is up, busy or not."""
        snap = sd.jobs.snapshot()
        return {
            "status": "ok",
            "model": sd.directory.title(sd.models.current),
            "busy": snap.job is not None,
            "queue_pending": snap.pending,
        }

    @app.get("/internal/jobs", responses=ERRORS)
    def jobs() -> dict[str, Any]:
        """Recent jobs in the order they ran (id = arrival order), for monitoring."""
        snap = sd.jobs.snapshot()
        return {
            "accepted": sd.jobs.accepted,
            "running": snap.job.id if snap.job else None,
            "pending": snap.pending,
            "history": sd.jobs.recent(),
        }

    app.include_router(listings.create_router(sd, ERRORS))
    folder = controlnet.ControlNetFolder(settings.controlnet_dir)
    app.include_router(controlnet_routes.create_router(folder, settings.max_input_pixels, ERRORS))
    app.include_router(extras.create_router(sd, GENERATION_ERRORS, run_job))
    return app


def _storable(overrides: dict[str, Any], choices: upscalers.Upscalers) -> dict[str, Any]:
    """The override settings a request leaves in place (override_settings_restore_afterwards false): the A1111 keys
    whose values the store can hold; the model is switched by the run itself."""
    out = {}
    for key, value in overrides.items():
        try:
            check_value(key, value, choices=choices)
        except ApiError:
            continue
        if key != CHECKPOINT:
            out[key] = value
    return out
