"""One worker thread runs jobs in arrival order; everyone else only reads its progress or asks it to stop.

The device runs one generation at a time (two would fight for memory and run no faster), so requests queue FIFO.
Request handlers wait on a `concurrent.futures.Future` (awaited with `asyncio.wrap_future`), which keeps the event
loop free: `/progress`, `/interrupt` and `/skip` answer while a job runs. Interrupting or skipping sets a flag that the
engine's step callback turns into `sd_core.Interrupted` (the engine finishes the batch from its current estimate);
shutting down turns it into `sd_core.Cancelled` (nothing more is made).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .api_error import ApiError

log = logging.getLogger("sd_core.server")
HISTORY = 200


class ShuttingDown(Exception):
    """The server stopped before the job could run."""


@dataclass
class Job:
    """A unit of work for the worker; `run(ctx)` does it and its return value resolves `future`."""

    id: int
    kind: str
    run: Callable[[JobContext], Any]
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    outcome: str = "queued"

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "outcome": self.outcome,
            "enqueued": self.enqueued,
            "started": self.started,
            "finished": self.finished,
        }


class JobContext:
    """What a running job reports through, and how it learns it was interrupted."""

    def __init__(self, queue_: JobQueue, job: Job) -> None:
        self._queue, self.job = queue_, job
        self.interrupted = threading.Event()  # stop after the batch being sampled
        self.skipped = threading.Event()  # finish the batch being sampled early, then go on
        self.cancelled = threading.Event()  # the server is stopping: abandon the job
        self._job_no = 0  # the batch's first job number (a hires batch is two jobs: one per sampling phase)

    def set_phase(self, text: str, *, job_count: int | None = None, job_no: int | None = None) -> None:
        self._queue._update(textinfo=text, job_count=job_count, job_no=job_no)

    def set_preview(self, mapping: Any) -> None:
        """How `/progress` turns this job's latents into its picture: the model's `sd_core.preview.LatentRGB`."""
        self._queue._update(preview=mapping)

    def begin_batch(self, job_no: int, job_count: int) -> None:
        """A new batch starts: a skip asked for during the previous one has been spent (A1111 clears it here too)."""
        self.skipped.clear()
        self._job_no = job_no
        self._queue._update(job_no=job_no, job_count=job_count, step=0, total=0, latents=None, skipped=False)

    def step_callback(self, cancelled: type[BaseException], interrupted: type[BaseException]) -> Callable[[Any], None]:
        """An engine callback (it gets a `sd_core.StepInfo`) that records progress (a later sampling phase of the
        batch as its next job), raises `interrupted` once interrupted or skipped and `cancelled` once the server
        stops."""

        def on_step(info: Any) -> None:
            # the model's current guess of the final image: a cleaner preview than the noisy latents
            latents = info.denoised[:1].detach().clone()  # on its device: no sync; /progress moves it when asked
            job_no = self._job_no + info.phase - 1
            self._queue._update(step=info.step, total=info.total, latents=latents, job_no=job_no)
            if self.cancelled.is_set():
                raise cancelled("the server is stopping")
            if self.interrupted.is_set() or self.skipped.is_set():
                raise interrupted("skipped" if not self.interrupted.is_set() else "interrupted")

        return on_step


@dataclass
class Progress:
    """A snapshot for `/progress`."""

    job: Job | None = None
    textinfo: str | None = None
    job_count: int = 0
    job_no: int = 0
    step: int = 0
    total: int = 0
    latents: Any = None
    latents_version: int = 0
    started: float = 0.0
    interrupted: bool = False
    skipped: bool = False
    pending: int = 0
    preview: Any = None  # the model's latent -> RGB map (`sd_core.preview.LatentRGB`); None: SD1's fixed one


class JobQueue:
    """FIFO queue with a single worker thread."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending = 0
        self.accepted = 0
        self._current: tuple[Job, JobContext] | None = None
        self._progress = Progress()
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="sd-core-worker", daemon=True)
        self._thread.start()

    # --- called from request handlers ---------------------------------------------------------------------------

    def submit(self, kind: str, run: Callable[[JobContext], Any]) -> Job:
        """Queue a job; its `future` resolves with what `run` returns (or raises)."""
        with self._lock:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            job = Job(next(self._ids), kind, run)
            self.accepted = job.id
            self._pending += 1
            self._queue.put(job)
        return job

    def interrupt(self) -> bool:
        """Stop the running job at its next step; queued jobs still run. False when nothing was running."""
        return self._signal("interrupted")

    def skip(self) -> bool:
        """Finish the running job's current batch at its next step and go on with the next one (A1111's skip).
        False when nothing was running."""
        return self._signal("skipped")

    def _signal(self, name: str) -> bool:
        """Set the running job's flag `name` (an Event of its context) and show it in the progress."""
        with self._lock:
            if self._current is None:
                return False
            getattr(self._current[1], name).set()
            setattr(self._progress, name, True)
            return True

    def snapshot(self) -> Progress:
        with self._lock:
            p = self._progress
            return Progress(
                p.job,
                p.textinfo,
                p.job_count,
                p.job_no,
                p.step,
                p.total,
                p.latents,
                p.latents_version,
                p.started,
                p.interrupted,
                p.skipped,
                self._pending,
                p.preview,
            )

    def recent(self) -> list[dict[str, Any]]:
        """Finished jobs, oldest first (ids are arrival order)."""
        with self._lock:
            return list(self.history)

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._current is not None or self._pending > 0

    def close(self, timeout: float = 5.0) -> None:
        """Interrupt the running job, fail the queued ones, stop the worker."""
        with self._lock:
            self._closed = True
            if self._current is not None:
                self._current[1].cancelled.set()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.set_exception(ShuttingDown("the server is shutting down"))
        self._queue.put(None)
        self._thread.join(timeout)

    # --- worker side --------------------------------------------------------------------------------------------

    def _update(
        self,
        *,
        textinfo: str | None = None,
        job_count: int | None = None,
        job_no: int | None = None,
        step: int | None = None,
        total: int | None = None,
        latents: Any = ...,
        skipped: bool | None = None,
        preview: Any = ...,
    ) -> None:
        with self._lock:
            p = self._progress
            if textinfo is not None:
                p.textinfo = textinfo
            if job_count is not None:
                p.job_count = job_count
            if job_no is not None:
                p.job_no = job_no
            if step is not None:
                p.step = step
            if total is not None:
                p.total = total
            if latents is not ...:
                p.latents = latents
                p.latents_version += 1
            if skipped is not None:
                p.skipped = skipped
            if preview is not ...:
                p.preview = preview

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._pending -= 1
            if not job.future.set_running_or_notify_cancel():  # its client went away while it waited
                job.outcome = "cancelled"
                with self._lock:
                    self.history.append(job.record())
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        ctx = JobContext(self, job)
        job.started = time.monotonic()
        with self._lock:
            self._current = (job, ctx)
            self._progress = Progress(job=job, textinfo=job.kind, job_count=1, started=job.started)
        error: BaseException | None = None
        result: Any = None
        try:
            result = job.run(ctx)
        except BaseException as exc:  # the worker must survive anything a job does
            error = exc
            if not isinstance(
                exc, (ValueError, LookupError, ShuttingDown, ApiError)
            ):  # a bad request or model file: no traceback
                log.exception("job %d (%s) failed", job.id, job.kind)
        job.finished = time.monotonic()
        if error is not None:
            job.outcome = f"error: {type(error).__name__}"
        else:
            job.outcome = "interrupted" if ctx.interrupted.is_set() else "done"
        with self._lock:  # idle again before the caller hears back, so its next /progress sees the truth
            self._current = None
            self._progress = Progress()
            self.history.append(job.record())
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
