"""`sd_core` imported into Blender's own Python (when someone installed it and torch there), run in a thread.

The model loads on first use and stays until Release. Cancelling works the way `sd_core` defines it: the step
callback raises `sd_core.Cancelled`.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import io
import os
import threading
from typing import Any

import numpy as np

from .engine import INPAINT, Cancelled, Engine, Job, Progress, Request, Result, UserError, explain, model_label


def sd_core_importable() -> bool:
    """Whether Blender's Python could run the engine itself (sd_core and torch both importable)."""
    return all(importlib.util.find_spec(name) is not None for name in ("sd_core", "torch"))


def generation_settings(request: Request) -> Any:
    """The request as the engine's one settings object: the request's fields that are settings go as they are (their
    names are the engine's), and sd_core checks them (its limits) and fills in what is None (the model's CFG scale
    and size) or -1 (a random seed), as it does for the server."""
    import sd_core

    names = {f.name for f in dataclasses.fields(request)} & set(sd_core.GenerationSettings.__dataclass_fields__)
    values = {name: getattr(request, name) for name in names - {"loras", "tile", "model"}}
    values["prompt"] = request.tagged_prompt()  # LoRAs as tags, applied by the engine from its LoRA folder
    if request.kind == "txt2img":
        values["strength"] = None  # a strength without a source image is an error to the engine
    if request.kind == "inpaint":
        fill = sd_core.limits.FILLS[INPAINT["inpainting_fill"]]  # A1111's fill codes, in the engine's order
        only_masked = INPAINT["inpaint_full_res"]
        values["inpaint"] = sd_core.InpaintOptions(mask_blur=INPAINT["mask_blur"], only_masked=only_masked, fill=fill)
    if request.kind == "txt2img" and request.hires_scale:  # what the server makes of the same request
        values["hires"] = sd_core.HiresOptions(
            scale=request.hires_scale, upscaler="Lanczos", strength=request.hires_strength, steps=request.hires_steps
        )
    if request.kind == "txt2img" and request.tile:
        width, height, overlap = request.tile
        values["tile"] = sd_core.TileOptions(width, height, overlap=overlap)
    return sd_core.GenerationSettings(**values)


def pil_images(request: Request) -> tuple[Any, Any]:
    """The source image and mask as PIL images (None where the kind has none)."""
    from PIL import Image

    image = mask = None
    if request.image is not None and request.kind != "txt2img":
        image = Image.fromarray(np.ascontiguousarray(request.image), "RGB")
    if request.mask is not None and request.kind == "inpaint":
        mask = Image.fromarray(np.ascontiguousarray(request.mask), "L")
    return image, mask


def _png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class InProcessEngine(Engine):
    """One generation at a time, like a server's queue; the loaded pipeline is kept between runs."""

    def __init__(self, model: str, lora_dir: str = "") -> None:
        self.model, self.lora_dir = model, lora_dir
        self._pipe: Any = None
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"active": False, "step": 0, "total": 0, "latents": None, "preview": None}
        self._cancel: threading.Event | None = None

    def describe(self) -> str:
        return f"in Blender's Python with {model_label(self.model)}"

    def check(self) -> None:
        if not sd_core_importable():
            raise UserError(
                "In-process mode needs sd_core and torch in Blender's own Python, which has neither. "
                "Choose 'Start a local server' in the add-on preferences instead"
            )
        if self.model and not os.path.exists(self.model):  # empty: sd-core's built-in texture model
            raise UserError(
                f"Model not found: {self.model}. Set the model path in the add-on preferences, or leave it empty "
                "for the built-in texture model"
            )

    def start(self, request: Request) -> Job:
        self.check()
        request.check()
        if request.model:
            raise UserError("In-process mode has one model (the preferences' Model): clear the panel's model choice")
        if request.control_image is not None:
            raise UserError("Project Texture needs a server with a depth ControlNet: choose a server connection")
        return Job(lambda cancel: self._generate(request, cancel), on_cancel=self.interrupt)

    def _generate(self, request: Request, cancel: threading.Event) -> Result:
        import sd_core

        with self._lock:
            self._cancel = cancel
            self._state.update(active=True, step=0, total=request.steps, latents=None, phase=1, phases=1)
            try:
                if cancel.is_set():
                    raise Cancelled("cancelled before it started")
                settings = generation_settings(request)
                if self._pipe is None:
                    self._pipe = sd_core.load(self.model or None, lora_dirs=[self.lora_dir] if self.lora_dir else [])
                self.model_cfg_scale = self._pipe.defaults.cfg_scale
                self.model_sizes = tuple(self._pipe.defaults.sizes)
                self._state["preview"] = sd_core.preview.for_pipeline(self._pipe)  # the model's own colours

                def on_step(info: sd_core.StepInfo) -> None:  # the clean estimate: what the image is becoming
                    self._state.update(step=info.step, total=info.total, latents=info.denoised[:1].cpu())
                    self._state.update(phase=info.phase, phases=info.phases)
                    if cancel.is_set():
                        raise sd_core.Cancelled("cancelled")

                image, mask = pil_images(request)
                images = self._pipe.generate(settings, image, mask, callback=on_step)
            except sd_core.Cancelled as exc:
                raise Cancelled("cancelled") from exc
            except (ValueError, TypeError, FileNotFoundError, MemoryError) as exc:
                raise UserError(explain(exc, self)) from exc
            finally:
                self._state.update(active=False, latents=None)
                self._cancel = None
        return Result(
            [_png_bytes(img) for img in images],
            [int(img.info.get("seed", -1)) for img in images],
            [str(img.info.get("parameters", "")) for img in images],
        )

    def progress(self) -> Progress:
        state = dict(self._state)
        preview = None
        if state["latents"] is not None:
            from sd_core.preview import latents_to_preview

            preview = _png_bytes(latents_to_preview(state["latents"], mapping=state["preview"]))
        phase, phases = state.get("phase", 1), state.get("phases", 1)
        return Progress(
            active=state["active"],
            step=state["step"],
            total=state["total"],
            fraction=(phase - 1 + state["step"] / (state["total"] or 1)) / phases,  # across both hires passes
            preview=preview,
            phase=phase,
            phases=phases,
        )

    def interrupt(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    def loras(self) -> list[str]:
        if not self.lora_dir or not sd_core_importable():
            return []
        from sd_core.lora import LoraLibrary

        return [entry.name for entry in LoraLibrary([self.lora_dir]).entries()]

    def release(self) -> str:
        with self._lock:  # waits for a running generation; the UI cancels it first
            had, self._pipe = self._pipe is not None, None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
        return "unloaded the model" if had else "no model was loaded"
