"""What every engine offers the UI, so the UI never asks which engine it has (`server_engine`, `inprocess`).

No bpy here: requests carry numpy pixels and results carry PNG bytes, so this runs, and is tested, in plain Python.
Anything that may take long runs in a `Job` thread; `progress()` and `interrupt()` may block for a moment and are
called off the UI thread by `task.Task`.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:  # the copy the extension builder puts into the zip
    from . import sd_client as client
except ImportError:  # running from the source tree, next to sd_core
    from sd_core import client  # type: ignore[no-redef]

KINDS = ("txt2img", "img2img", "inpaint")
# The size choices before the engine has seen its model, and for servers that do not name them: SD1's 512 px and its
# 3:2 landscape and portrait sizes (what sd-core offers for SD1 models)
DEFAULT_SIZES = ((512, 512), (768, 512), (512, 768))
# How both engines inpaint, in the A1111 request's terms: the add-on pastes the unmasked pixels back itself, exactly,
# so the engine only fills the hole: no mask blur, the whole picture, the hole prefilled from its surroundings (fill 0).
INPAINT = {"mask_blur": 0, "inpaint_full_res": False, "inpainting_fill": 0}


class UserError(Exception):
    """A failure whose message already says what happened and what to do about it."""


class Cancelled(Exception):
    """The job was cancelled before it produced a result."""


@dataclass
class Request:
    """What to generate, independent of the engine. Pixels are uint8 arrays with rows top-down (PNG order).

    None means "the engine's rule": `cfg_scale` the model's own CFG scale, `width`/`height` the model's native size
    (txt2img) or the source image's size rounded to a multiple of 8 (img2img, inpaint). The values themselves are
    checked by the engine (sd_core's limits, in-process or in the server), whose message reaches the user."""

    kind: str = "txt2img"
    prompt: str = ""
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int = 20
    sampler: str = "Euler a"
    cfg_scale: float | None = None
    seed: int = -1  # -1: random
    batch_size: int = 1
    tiling: str = ""  # "", "x", "y" or "xy": seamless on those axes
    strength: float = 0.75  # img2img/inpaint denoising strength
    image: np.ndarray | None = None  # HxWx3, img2img and inpaint
    mask: np.ndarray | None = None  # HxW, 255 = repaint (inpaint)
    loras: str = ""  # "name:weight, ...": LoRAs of the engine's LoRA folder, asked for as <lora:name:weight> tags
    # Production sizes (txt2img): hires fix, the first pass at width x height enlarged `hires_scale` times (Lanczos,
    # wrap-aware when seamless) and sampled again at `hires_strength`, in tiles of `tile` = (width, height, overlap)
    model: str = ""  # one of the engine's `models()`; "": the engine's current model
    hires_scale: float | None = None
    hires_strength: float = 0.4
    hires_steps: int | None = None  # the second pass's steps (None: the engine's rule; A1111's server rule: all)
    tile: tuple[int, int, int] | None = None
    # A ControlNet unit (Project Texture's depth): the control map (uint8 HxWx3 top-down, used as it is: module
    # "none"), the name of a ControlNet of the server's `--controlnet-dir` (`/controlnet/model_list`) and its weight
    control_image: np.ndarray | None = None
    control_model: str = ""
    control_weight: float = 1.0

    def tagged_prompt(self) -> str:
        """The prompt with the LoRAs' A1111 tags appended (how both engines are asked for a LoRA)."""
        try:
            return client.lora_tags(self.prompt, client.parse_loras(self.loras))
        except ValueError as exc:
            raise UserError(f"LoRAs: {exc}") from None

    def check(self) -> None:
        """What the add-on itself must get right before anything starts: a known kind with the pixels it needs."""
        if self.kind not in KINDS:
            raise UserError(f"Unknown generation kind {self.kind!r}")
        if self.kind != "txt2img" and (self.image is None or self.image.size == 0):
            raise UserError("img2img needs a source image with pixels")
        if self.kind == "inpaint" and self.mask is None:
            raise UserError("Inpainting needs a mask")
        if self.control_image is not None and not self.control_model:
            raise UserError("Choose a depth ControlNet of the server (the panel's ControlNet field) to project with")
        self.tagged_prompt()


@dataclass
class Result:
    """PNG bytes per image, the seed of each and the A1111 parameters text (empty when the engine gives none)."""

    images: list[bytes]
    seeds: list[int] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """One look at the engine: `active` while it works on something, `preview` a PNG of the latest step."""

    active: bool = False
    step: int = 0
    total: int = 0
    fraction: float = 0.0
    preview: bytes | None = None
    text: str = ""
    phase: int = 1  # which sampling pass (hires fix: 1 of 2, then 2 of 2)
    phases: int = 1


class Job:
    """A call running in a daemon thread: `done()`, `result()`, `error()`, `cancel()`. Never blocks the caller."""

    def __init__(self, fn: Callable[[threading.Event], Result], on_cancel: Callable[[], None] | None = None) -> None:
        self.cancel_event = threading.Event()
        self._on_cancel = on_cancel
        self._result: Result | None = None
        self._error: BaseException | None = None
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fn,), name="sd-core-job", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[threading.Event], Result]) -> None:
        try:
            self._result = fn(self.cancel_event)
        except BaseException as exc:  # handed to the UI thread, which reports it
            self._error = exc
        finally:
            self._finished.set()

    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def result(self) -> Result:
        if not self.done():
            raise RuntimeError("the job is still running")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def error(self) -> BaseException | None:
        return self._error if self.done() else None

    def cancel(self) -> None:
        """Ask the engine to stop; its interrupt runs in a thread of its own so the caller never waits."""
        if self.cancel_event.is_set() or self.done():
            return
        self.cancel_event.set()
        if self._on_cancel is not None:
            threading.Thread(target=quietly, args=(self._on_cancel,), name="sd-core-cancel", daemon=True).start()


def sizes_from(value: Any) -> tuple[tuple[int, int], ...]:
    """The [width, height] pairs of sd-core's `sd_core_model_defaults["sizes"]`; () for anything else."""
    if not isinstance(value, (list, tuple)):
        return ()
    pairs = [p for p in value if isinstance(p, (list, tuple)) and len(p) == 2]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for p in pairs for v in p):
        return ()
    return tuple((int(w), int(h)) for w, h in pairs)


def size_choices(engine: Engine | None) -> tuple[tuple[int, int], ...]:
    """The sizes the panel offers: the model's once the engine has seen it, else `DEFAULT_SIZES`."""
    return (engine.model_sizes if engine is not None else ()) or DEFAULT_SIZES


def model_label(path: str) -> str:
    """The model as the panel names it: the file's name; an empty path is sd-core's built-in texture model."""
    return os.path.basename(path.rstrip("/\\")) or path if path else "the built-in texture model"


def quietly(fn: Callable[[], Any]) -> None:
    """Best effort: a failed interrupt or cleanup must not hide the job's own outcome."""
    try:
        fn()
    except Exception:
        pass


class Engine(ABC):
    """What the UI needs from any engine."""

    model_cfg_scale: float | None = None
    """The model's own CFG scale, once the engine has seen its model (shown beside the panel's "Model's CFG")."""
    model_sizes: tuple[tuple[int, int], ...] = ()
    listed_cfg_scales: dict[str, float] = {}
    """Each listed model's own CFG scale (`models()`; sd-core servers name them), for the panel's label."""
    """The (width, height) choices sd-core offers for its model (SDXL: its training sizes), once the engine has seen
    it; () before that and from servers that do not say."""

    @abstractmethod
    def start(self, request: Request) -> Job:
        """Begin generating; returns at once."""

    @abstractmethod
    def progress(self) -> Progress:
        """Where the engine is now. May block briefly: call it off the UI thread."""

    @abstractmethod
    def interrupt(self) -> None:
        """Stop the running generation at its next step."""

    @abstractmethod
    def release(self) -> str:
        """Give the GPU memory back (unload the model / stop the server this engine started); says what it did."""

    def shutdown(self) -> str:
        """Blender quits or the add-on is disabled: let go of what this engine itself started. A server someone
        else runs keeps its model (other clients may be using it); Release (`release`) is the explicit request."""
        return "nothing of the add-on's own to stop"

    @abstractmethod
    def describe(self) -> str:
        """Where the images come from, for the panel."""

    def loras(self) -> list[str]:
        """The names of the LoRAs this engine can apply (its LoRA folder); may block briefly (a server's list)."""
        return []

    def controlnets(self) -> list[str]:
        """The names of the ControlNets a request may name (`Request.control_model`): a server's ControlNet folder;
        may block briefly. Empty: this engine takes none."""
        return []

    def models(self) -> list[str]:
        """The names of the models a request may choose (`Request.model`): a server's models folder; may block
        briefly. Empty: the engine has its one model."""
        return []


def explain(exc: BaseException, engine: Engine | None = None) -> str:
    """A message a Blender user can act on, for anything an engine raises."""
    if isinstance(exc, UserError):
        return str(exc)
    where = engine.describe() if engine is not None else "the engine"
    if isinstance(exc, (client.ServerUnavailable, ConnectionError)):
        url = getattr(engine, "url", "") or "the configured URL"
        return (
            f"Cannot reach the sd-core server at {url} ({exc}). Start it with 'sd-core serve --model PATH', or "
            "choose 'Start a local server' in the add-on preferences"
        )
    if isinstance(exc, client.ClientError):
        if exc.status in (401, 403):
            return f"The server refused the token ({exc}). Set the server's token in the add-on preferences"
        return f"The server refused the request: {exc}. Check the settings in the panel"
    if isinstance(exc, MemoryError):
        return f"Out of memory ({where}): lower the size or the batch, or press Release and try again"
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return f"The request was refused ({where}): {exc}"
    return f"Generation failed ({where}): {type(exc).__name__}: {exc}"
