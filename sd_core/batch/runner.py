"""A batch from JOBS to tasks, and the local runner (one process, one model).

`plan_tasks` is the part every runner shares: each job checked by the server's code, its seeds fixed, its images
looked up in the manifest (those there with the right hash are not made again). The Ray runner (`ray_runner.py`) takes
the same tasks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import BatchConfig, Checker, JobError
from .manifest import Manifest
from .naming import fixed_seeds, job_hash, model_identity
from .progress import Progress
from .sources import BadLine, Job
from .worker import Task, Worker


@dataclass(frozen=True)
class Failure:
    """A message about one line of JOBS: why its job made no images, or (`Planned.notes`, "note: ...") which of its
    fields had no effect."""

    line: int
    message: str


@dataclass
class Planned:
    """The tasks still to run, the images already made (verified in the manifest), the lines refused, and notes on
    jobs with fields that have no effect (what the server lists in `info`)."""

    tasks: list[Task] = field(default_factory=list)
    made: int = 0
    failures: list[Failure] = field(default_factory=list)
    notes: list[Failure] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(len(t.indices) for t in self.tasks)


def plan_tasks(jobs: list[Job | BadLine], checker: Checker, manifest: Manifest) -> Planned:
    """Check every job (the server's checks) and leave out the images the manifest has, verified by their hash."""
    out = Planned()
    model = model_identity(checker.config.model)
    seen: set[tuple[str, int]] = set()
    for job in jobs:
        if isinstance(job, BadLine):
            out.failures.append(Failure(job.line, job.message))
            continue
        digest = job_hash(job, model)
        if (digest, job.line) in seen:  # the same job twice on one line (`--seeds 1,1`): its images once
            continue
        seen.add((digest, job.line))
        try:
            plan = checker.plan(job)
            seeds = fixed_seeds(plan.request, digest)
            if seeds:  # checked again with them, as the workers will check it
                job = Job(job.line, {**job.body, **seeds})
                plan = checker.plan(job)
        except JobError as exc:
            out.failures.append(Failure(job.line, exc.message))
            continue
        ignored = {"fields": plan.ignored_fields, **plan.prepared.ignored}
        if any(ignored.values()):
            text = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in ignored.items() if names)
            out.notes.append(Failure(job.line, f"note: no effect, as on the server: {text}"))
        count = plan.batch_size * (plan.request.n_iter or 1)
        made = manifest.verified(digest, job.line, count)
        out.made += len(made)
        indices = tuple(i for i in range(count) if i not in made)
        if indices:
            out.tasks.append(Task(job.line, digest, job.body, count, indices))
    return out


Report = Callable[[Failure], None]


def reporter(jobs_path: Path, stream: Any = None) -> Report:
    """Failures as `JOBS:LINE: message` lines (the editor-clickable shape of compiler errors)."""

    def report(failure: Failure) -> None:
        print(f"{jobs_path}:{failure.line}: {failure.message}", file=stream or sys.stderr, flush=True)

    return report


def run_local(
    tasks: list[Task],
    config: BatchConfig,
    manifest: Manifest,
    progress: Progress,
    report: Report,
    fail_fast: bool = False,
) -> list[Failure]:
    """Run the tasks in order in this process with one model; each image's row is in the manifest as soon as its
    file is. Returns the jobs that failed (with `fail_fast`, the run stops at the first)."""
    failures: list[Failure] = []
    if not tasks:
        return failures
    worker = Worker(config)
    try:
        worker.load()
        progress.start()
        for task in tasks:
            try:
                rows = worker.run(task, manifest.outdir)
            except JobError as exc:
                failures.append(Failure(task.line, exc.message))
            except Exception as exc:  # the engine failing on one job (a bad model in override_settings, ...)
                failures.append(Failure(task.line, f"{type(exc).__name__}: {exc}"))
            else:
                manifest.append(rows)
                progress.advance(len(rows))
                continue
            report(failures[-1])
            if fail_fast:
                break
    finally:
        worker.close()
    return failures
