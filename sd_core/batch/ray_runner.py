"""`sd-core batch --ray`: the same tasks on a Ray cluster through Ray Data, with nothing home-made for scheduling,
transport or retries.

- The tasks become a dataset (`ray.data.from_items`: line, job hash, the body as JSON text, image indices) and go
  through `map_batches` with an actor pool: each actor (`_Generate`) builds one `worker.Worker`, so one model per
  actor, loaded in its constructor; `num_gpus=1` per actor when the cluster has GPUs (one actor per GPU), else CPU
  actors of `BatchConfig.threads` CPUs (default 1). `--ray-concurrency` is the pool's size, `--ray-batch-size` the
  jobs per call.
- Workers write the PNGs to DIR themselves (a path every node must share: NFS, a mounted bucket), renamed into place
  whole, and return the manifest rows; the driver (this process) appends them to the manifest as they stream in, so
  only one process ever writes it and a killed driver resumes like a killed local run.
- A lost worker (its process killed, its node gone) is Ray's to handle: the actors are created with `max_restarts`
  and `max_task_retries`, so Ray starts the actor again (loading its model) and runs its unfinished calls again. A
  retried job makes the same bytes (fixed seeds, `naming.fixed_seeds`) under the same name, and the driver
  writes its rows once, since only finished calls return rows.
- A job the checks or the engine refuse, or that raises, comes back as a failure row (the run goes on), as in the
  local runner; only a lost process is retried (by Ray), and past `RESTARTS` it fails the run (the manifest keeps
  what finished).

Ray is imported here only: the `ray` extra (`pip install 'sd-core[ray]'`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .checks import BatchConfig, JobError
from .manifest import Manifest
from .progress import Progress
from .ray_options import RayOptions
from .runner import Failure, Report
from .worker import Task, Worker

RESTARTS = 4  # times Ray starts a lost actor again, and reruns a call it lost (per call); then the run fails


class _Generate:
    """One Ray Data actor: a `Worker` (one loaded model) that runs a batch of tasks and returns their rows."""

    def __init__(self, config: BatchConfig, outdir: str) -> None:
        self.worker = Worker(config)
        self.worker.load()
        self.outdir = Path(outdir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for i in range(len(batch["line"])):
            task = Task(
                int(batch["line"][i]),
                str(batch["job"][i]),
                json.loads(str(batch["body"][i])),
                int(batch["count"][i]),
                tuple(json.loads(str(batch["indices"][i]))),
            )
            try:
                rows = self.worker.run(task, self.outdir)
                results.append({"rows": rows, "pid": os.getpid(), "line": task.line})
            except JobError as exc:
                results.append({"failure": exc.message, "pid": os.getpid(), "line": task.line})
            except Exception as exc:  # the engine failing on one job: reported like the local runner's, the rest go on
                message = f"{type(exc).__name__}: {exc}"
                results.append({"failure": message, "pid": os.getpid(), "line": task.line})
        return {"result": np.array([json.dumps(r) for r in results], dtype=object)}


def _connect(address: str) -> bool:
    """Join the cluster at `address` ("local": start one in this process); whether this call did `ray.init`."""
    import ray

    if ray.is_initialized():  # the caller (a test, a notebook) already has a cluster
        return False
    ray.init(address=address)  # "local": a new cluster, even where one was started on this machine
    return True


def run_ray(
    tasks: list[Task],
    config: BatchConfig,
    manifest: Manifest,
    progress: Progress,
    report: Report,
    options: RayOptions,
    fail_fast: bool = False,
) -> list[Failure]:
    """Run the tasks on Ray; the driver writes the manifest. `options.on_result` sees each job's result on the driver
    (its rows and the worker's pid), for monitoring. A cluster this call started (`--ray local`, or no cluster
    reachable in-process yet) is shut down when it returns; one the caller had started is left running."""
    import ray.data  # binds `ray` too

    if not tasks:
        return []
    started = _connect(options.address)
    try:
        return _run(ray, tasks, config, manifest, progress, report, options, fail_fast)
    finally:
        if started:
            ray.shutdown()


def _run(
    ray: Any,
    tasks: list[Task],
    config: BatchConfig,
    manifest: Manifest,
    progress: Progress,
    report: Report,
    options: RayOptions,
    fail_fast: bool,
) -> list[Failure]:
    failures: list[Failure] = []
    gpus = ray.cluster_resources().get("GPU", 0) if config.device != "cpu" else 0
    resources: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": config.threads or 1}
    concurrency = options.concurrency or max(1, int(gpus))
    items = [
        {"line": t.line, "job": t.job, "body": json.dumps(t.body), "count": t.count, "indices": json.dumps(t.indices)}
        for t in tasks
    ]
    # a block per job: a call is never more than --ray-batch-size jobs, so a lost worker costs at most that much again
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _Generate,
        fn_constructor_kwargs={"config": config.resolved(), "outdir": str(manifest.outdir.resolve())},
        batch_size=options.batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        max_restarts=RESTARTS,
        max_task_retries=RESTARTS,
        **resources,
    )
    progress.start()
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for text in batch["result"]:
            result = json.loads(str(text))
            if options.on_result is not None:
                options.on_result(result)
            if "failure" in result:
                failures.append(Failure(result["line"], result["failure"]))
                report(failures[-1])
                if fail_fast:
                    return failures
                continue
            manifest.append(result["rows"])
            progress.advance(len(result["rows"]))
    manifest.remove_partial_files()  # those of workers lost mid-write: their calls ran again elsewhere
    return failures
