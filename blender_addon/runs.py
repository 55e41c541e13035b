"""A generation inside Blender: a `task.Task` plus what Blender sees of it (preview image, result datablocks).

`Run.step()` is the one thing the UI timer, the blocking background path and the tests all call. Datablocks for the
result are made only when the engine's answer is complete, in `step()` on Blender's main thread, so a cancelled or
failed run leaves nothing half-made behind; the live preview image is removed when the run ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import bpy
import numpy as np

from . import pixels, preferences
from .engine import Engine, Request, Result, UserError, explain
from .task import State, Task

PREVIEW_NAME = "SD Preview"
Finish = Callable[[list[np.ndarray], Result], list[Any]]


class Run:
    """One generation and its Blender side. `finish(images, result)` turns the decoded images (uint8 HxWx4
    top-down) into datablocks and returns them, or raises having made none."""

    def __init__(self, task: Task, label: str, finish: Finish) -> None:
        self.task, self.label, self.finish = task, label, finish
        self.images: list[Any] = []
        self.error: str | None = None
        self.started = time.monotonic()
        self.seconds = 0.0
        self._preview_serial = 0

    @property
    def state(self) -> State:
        if self.error is not None:
            return State.FAILED
        return self.task.state

    @property
    def finished(self) -> bool:
        return self.task.finished

    def step(self) -> bool:
        """Advance one tick on the main thread; returns True once the run has ended (result made or not)."""
        if self.finished:
            return True
        self.task.tick()
        if self.task.preview_serial != self._preview_serial and not self.finished:
            self._preview_serial = self.task.preview_serial
            self._show_preview()
        if self.finished:
            self._complete()
        _redraw()
        return self.finished

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> State:
        """The blocking path for background mode, where timers never fire."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.step():
            if deadline is not None and time.monotonic() > deadline:
                self.task.cancel()
                deadline = None  # then wait for the engine to let go
            time.sleep(interval)
        return self.state

    def cancel(self) -> None:
        self.task.cancel()

    # --- inside ---------------------------------------------------------------------------------------------------

    def _show_preview(self) -> None:
        preview = self.task.preview
        if not preview:
            return
        try:
            rgba = pixels.png_to_array(preview)
        except (RuntimeError, UserError):  # a broken preview only costs the picture, never the run
            return
        image = bpy.data.images.get(PREVIEW_NAME) or new_preview_image()
        pixels.write_srgb8(image, rgba)
        image.preview_ensure().reload()  # the panel's thumbnail (the Image Editor shows the image itself)

    def _complete(self) -> None:
        self.seconds = time.monotonic() - self.started
        try:
            if self.task.state is State.DONE and self.task.result is not None:
                decoded = [pixels.png_to_array(png) for png in self.task.result.images]
                self.images = self.finish(decoded, self.task.result)  # all or nothing
        except Exception as exc:
            self.error = explain(exc)
        first = self.images[0] if self.images else None
        for space in _image_spaces():
            if space.image is not None and space.image.name == PREVIEW_NAME:
                space.image = first
        remove_images([bpy.data.images.get(PREVIEW_NAME)])

    def report(self) -> tuple[str, str]:
        """(level, message) for an operator report."""
        if self.state is State.DONE:
            names = ", ".join(f"'{img.name}'" for img in self.images)
            seeds = sorted(set(self.task.result.seeds)) if self.task.result else []
            seed_text = f" (seed {', '.join(map(str, seeds))})" if seeds else ""
            what = f"made {names}" if self.images else f"{self.task.engine.describe()} answered"
            return "INFO", f"{self.label}: {what}{seed_text} in {self.seconds:.1f} s"
        if self.state is State.CANCELLED:
            return "WARNING", f"{self.label}: cancelled"
        if self.state is State.FAILED:
            return "ERROR", self.error or self.task.error or "failed"
        return "INFO", f"{self.label}: {self.state.value}"


def new_preview_image() -> Any:
    """The datablock the live preview is drawn into; removed when the run ends."""
    return bpy.data.images.new(PREVIEW_NAME, 64, 64, alpha=True)


def remove_images(images: list[Any]) -> None:
    for image in images:
        if image is not None and image.name in bpy.data.images:
            bpy.data.images.remove(image)


def _image_spaces() -> list[Any]:
    wm = bpy.context.window_manager
    spaces = []
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR":
                spaces.append(area.spaces.active)
    return spaces


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type in ("IMAGE_EDITOR", "NODE_EDITOR", "VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


class Session:
    """The add-on's engine (kept between runs, made again when the preferences change) and its current run."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.key: tuple | None = None
        self.run: Run | None = None
        self.last_error = ""

    @property
    def busy(self) -> bool:
        return self.run is not None and not self.run.finished

    def engine_for(self, context: Any) -> Engine:
        key = preferences.engine_key(preferences.preferences(context))
        if self.engine is None or key != self.key:
            self.shutdown()  # the old engine: a shared server keeps its model
            self.engine, self.key = preferences.make_engine(key), key
        return self.engine

    def start(self, context: Any, request: Request, label: str, finish: Finish) -> Run:
        """Submit `request`; the returned run is already past `idle` (or failed at once)."""
        if self.busy:
            raise UserError("A generation is already running: wait for it or press Cancel")
        request.check()
        task = Task(self.engine_for(context), request).start()
        self.run = Run(task, label, finish)
        self.last_error = ""
        return self.run

    def note(self, run: Run) -> None:
        """Remember the outcome for the panel."""
        level, message = run.report()
        self.last_error = message if level == "ERROR" else ""

    def cancel(self) -> None:
        if self.busy:
            assert self.run is not None
            self.run.cancel()

    def shutdown(self) -> str:
        """Blender quits (or the add-on is disabled): cancel what runs and stop only what the add-on itself started
        (its local server); a server at a URL keeps its model. Says what it did."""
        self.cancel()
        engine, self.engine, self.key = self.engine, None, None
        return engine.shutdown() if engine is not None else "nothing to stop"

    def release(self) -> str:
        """Cancel what runs and free the engine's memory (stops a server this add-on started); says what it did."""
        self.cancel()
        engine, self.engine, self.key = self.engine, None, None
        return engine.release() if engine is not None else "nothing to release"


SESSION = Session()
