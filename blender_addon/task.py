"""One generation as a small state machine that advances only when `tick()` is called, and never blocks there.

    idle -> submitted -> running (progress, preview) -> done | failed | cancelled

The UI calls `tick()` from a timer, so Blender stays responsive; background mode (`blender -b`, the bpy module), where
timers never fire, calls `wait()`, which is the same ticks in a loop; tests call `tick()` themselves, step by step.
Engine calls that may block (HTTP polls, interrupts) run in short-lived threads; `tick()` only collects their answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum

from .engine import Cancelled, Engine, Job, Progress, Request, Result, UserError, explain


class State(str, Enum):
    IDLE = "idle"
    SUBMITTED = "submitted"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (State.DONE, State.FAILED, State.CANCELLED)


class Task:
    """Drives `engine` through one `request`. Read `state`, `fraction`, `step`/`total`, `preview` (PNG bytes, with
    `preview_serial` counting its updates), then `result` or `error` (a message saying what to do)."""

    def __init__(
        self,
        engine: Engine,
        request: Request,
        *,
        poll_interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine, self.request = engine, request
        self.poll_interval, self._clock = poll_interval, clock
        self.state = State.IDLE
        self.step = self.total = 0
        self.phase = self.phases = 1  # the sampling pass the step counts belong to (hires fix: two)
        self.fraction = 0.0
        self.text = ""
        self.preview: bytes | None = None
        self.preview_serial = 0
        self.result: Result | None = None
        self.error: str | None = None
        self._job: Job | None = None
        self._poll: threading.Thread | None = None
        self._polled: Progress | None = None
        self._last_poll = float("-inf")
        self._cancel_requested = False

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def start(self) -> Task:
        """idle -> submitted (or failed at once when the engine refuses the request)."""
        if self.state is not State.IDLE:
            raise RuntimeError(f"the task was already started ({self.state.value})")
        try:
            self._job = self.engine.start(self.request)
        except Exception as exc:
            self._fail(exc)
        else:
            self.state = State.SUBMITTED
        return self

    def tick(self) -> State:
        """Advance as far as the answers that have arrived allow; returns the new state. Never blocks."""
        if self.state is State.IDLE or self.finished:
            return self.state
        assert self._job is not None
        self._take_progress()
        if self._job.done():
            self._finish(self._job)
        elif self._poll is None and self._clock() - self._last_poll >= self.poll_interval:
            self._last_poll = self._clock()
            self._poll = threading.Thread(target=self._poll_once, name="sd-core-progress", daemon=True)
            self._poll.start()
        return self.state

    def cancel(self) -> None:
        """Stop the run; the state turns `cancelled` once the engine has let go (a later `tick()`)."""
        if self.finished:
            return
        self._cancel_requested = True
        if self._job is None:
            self.state = State.CANCELLED
        else:
            self._job.cancel()

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> State:
        """The blocking path (background mode): tick until finished or `timeout` seconds have passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished and (deadline is None or time.monotonic() < deadline):
            self.tick()
            if not self.finished:
                time.sleep(interval)
        return self.state

    # --- inside ---------------------------------------------------------------------------------------------------

    def _poll_once(self) -> None:
        try:
            self._polled = self.engine.progress()
        except Exception:  # a missed poll only delays the bar; the job itself reports real failures
            pass

    def _take_progress(self) -> None:
        if self._poll is None or self._poll.is_alive():
            return
        self._poll = None
        progress, self._polled = self._polled, None
        if progress is None or self._job is None or self._job.done() or not progress.active:
            return
        self.text = progress.text
        if progress.total:
            self.step, self.total = progress.step, progress.total
            self.phase, self.phases = progress.phase, progress.phases
        self.fraction = max(self.fraction, min(progress.fraction, 1.0))  # never backwards on screen
        if progress.step > 0 or progress.fraction > 0:
            self.state = State.RUNNING
        if progress.preview and progress.preview != self.preview:
            self.preview = progress.preview
            self.preview_serial += 1

    def _finish(self, job: Job) -> None:
        error = job.error()
        if self._cancel_requested or isinstance(error, Cancelled):
            self.state = State.CANCELLED
        elif error is not None:
            self._fail(error)
        else:
            result = job.result()
            if not result.images:
                self._fail(UserError("The engine returned no image; try again, or press Release and retry"))
                return
            self.result, self.state, self.fraction = result, State.DONE, 1.0

    def _fail(self, exc: BaseException) -> None:
        self.error = explain(exc, self.engine)
        self.state = State.FAILED
