"""One worker: a model loaded once, jobs run through the server's own `generate.run`, PNGs written to DIR.

The local runner has one; on Ray each actor has one. A job is re-checked here (cheap: the same `Checker.plan`), so a
worker gets nothing but the job's line and body, and makes its images exactly as the server would: same settings,
same infotext, same PNG bytes (`codec.png_bytes`, the `parameters` chunk as the server writes it). Each file is
written beside its final name and renamed into place, so a file under its final name is always whole; a job run twice
(a retry after a lost worker) writes the same bytes again.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sd_core.server import generate
from sd_core.server.api_error import ApiError
from sd_core.server.codec import png_bytes
from sd_core.server.engine import ModelManager, default_loader

from .checks import BatchConfig, Checker, JobError, api_error
from .naming import output_name
from .sources import Job


@dataclass(frozen=True)
class Task:
    """A checked job to run: its line, hash, body (seed fixed), how many images it makes and which of them to write
    (the others are in the manifest already)."""

    line: int
    job: str
    body: dict[str, Any]
    count: int
    indices: tuple[int, ...]


class _Context:
    """`generate.RunContext` for a batch: no queue to report to, nobody to interrupt a job (stopping the batch is
    the process's business)."""

    def __init__(self, job_id: int) -> None:
        self.job = SimpleNamespace(id=job_id)
        self.interrupted = threading.Event()
        self.cancelled = threading.Event()

    def set_phase(self, text: str, *, job_count: int | None = None, job_no: int | None = None) -> None:
        pass

    def begin_batch(self, job_no: int, job_count: int) -> None:
        pass

    def step_callback(self, cancelled: type[BaseException], interrupted: type[BaseException]) -> Any:
        return None


class Worker:
    """Checks and runs tasks with one loaded model (loaded on the first task, or by `load`)."""

    def __init__(self, config: BatchConfig) -> None:
        import sd_core

        self._threads = None  # torch's thread count before this worker set its own, put back by `close`
        if config.threads is not None:
            import torch

            self._threads = torch.get_num_threads()
            torch.set_num_threads(config.threads)
        self.config = config
        self.checker = Checker(config)
        loader = default_loader(config.device, config.dtype, config.lora_dirs, config.embedding_dirs)
        self.models = ModelManager(self.checker.directory, loader, self.checker.entry)
        self._stop = (sd_core.Cancelled, sd_core.Interrupted)

    def close(self) -> None:
        """Put back torch's thread count (a local run in a caller's process leaves it as it found it)."""
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)
            self._threads = None

    def load(self) -> None:
        """Load the model now (the first image's time then measures generation only)."""
        self.models.pipeline()

    def run(self, task: Task, outdir: Path) -> list[dict[str, Any]]:
        """Make the task's images, write those in `task.indices` to `outdir`; their manifest rows. `JobError` naming
        the field if the job is refused (by the checks or by the engine, as the server would refuse it)."""
        plan = self.checker.plan(Job(task.line, task.body))
        try:
            out = generate.run(plan, _Context(task.line), self.models, *self._stop)
        except ApiError as exc:
            raise api_error(exc) from None
        if len(out.images) != task.count:
            raise JobError(f"made {len(out.images)} images where {task.count} were expected")
        pnginfo = bool(plan.prepared.settings["enable_pnginfo"])
        rows = []
        outdir.mkdir(parents=True, exist_ok=True)
        for index in task.indices:
            img = out.images[index]
            text = generate.infotext(plan, img)
            data = png_bytes(img, text if pnginfo else None)
            name = output_name(task.line, out.seeds[index], task.job, index, task.count)
            partial = outdir / f".{name}.{os.getpid()}.part"
            partial.write_bytes(data)
            os.replace(partial, outdir / name)
            rows.append(
                {
                    "line": task.line,
                    "job": task.job,
                    "index": index,
                    "seed": out.seeds[index],
                    "path": name,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "infotext": text,
                }
            )
        return rows
