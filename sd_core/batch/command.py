"""`sd-core batch JOBS --outdir DIR`: the options, and the run from JOBS to images and manifest (`run_batch`, also
the Python entry point).

Exit status: 0 when every job made its images, 1 when some failed (each reported as `JOBS:LINE: message` on stderr,
the others made), 2 for a usage error (a missing JOBS file or model, a bad `--seeds`/`--set`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import BatchConfig, Checker
from .manifest import Manifest
from .progress import Progress
from .ray_options import RayOptions
from .runner import Failure, plan_tasks, reporter, run_local
from .sources import parse_seeds, parse_sets, read_jobs

__all__ = ["BatchResult", "RayOptions", "add_arguments", "main", "run_batch"]


@dataclass
class BatchResult:
    """What a run did: images made now, images already made (skipped), and the jobs that failed."""

    made: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)


def run_batch(
    jobs_path: Path,
    outdir: Path,
    config: BatchConfig,
    *,
    seeds: list[int] | None = None,
    sets: dict[str, Any] | None = None,
    fail_fast: bool = False,
    ray: RayOptions | None = None,
    stream: Any = None,
) -> BatchResult:
    """Check every job, then make the images the manifest lacks, locally or on Ray; failures reported on `stream`."""
    stream = stream or sys.stderr
    jobs_path, outdir = Path(jobs_path), Path(outdir)
    if not jobs_path.is_file():
        raise FileNotFoundError(f"JOBS file not found: {jobs_path}")
    jobs = read_jobs(jobs_path, seeds, sets)
    manifest = Manifest(outdir)
    manifest.remove_partial_files()  # left by a killed run
    planned = plan_tasks(jobs, Checker(config), manifest)
    report = reporter(jobs_path, stream)
    for failure in sorted(planned.failures + planned.notes, key=lambda f: f.line):
        report(failure)
    result = BatchResult(skipped=planned.made, failures=list(planned.failures))
    if planned.failures and fail_fast:
        return result
    progress = Progress(planned.images, planned.made, stream)
    before = planned.images
    if ray is None:
        failures = run_local(planned.tasks, config, manifest, progress, report, fail_fast)
    else:
        from .ray_runner import run_ray  # Ray is imported only here (the `ray` extra)

        failures = run_ray(planned.tasks, config, manifest, progress, report, ray, fail_fast)
    result.failures.extend(failures)
    result.made = progress.done
    if before and progress.done < before:
        print(f"batch: {before - progress.done} of {before} images not made", file=stream, flush=True)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `batch` command's options."""
    parser.add_argument(
        "jobs",
        type=Path,
        metavar="JOBS",
        help="a .jsonl of A1111 txt2img/img2img request bodies (images as paths relative to it), a .csv with a "
        "header of request fields, or a text file with a prompt per line",
    )
    parser.add_argument("--outdir", type=Path, required=True, help="folder for the PNGs and manifest.jsonl")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the built-in model)")
    parser.add_argument("--seeds", default=None, help="one job per seed for each line: 1-100, or 1,5,10-12")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="give every job this request field (JSON values as JSON: steps=20, width=512); repeatable",
    )
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first job that fails")
    parser.add_argument("--styles", type=Path, help="an A1111 styles.csv for `styles` in jobs")
    for option, what in (
        ("--lora-dir", "a folder of LoRA files named in prompts by <lora:name:weight>"),
        ("--embeddings-dir", "a folder of textual-inversion embeddings"),
        ("--upscaler-dir", "a folder of ESRGAN-family upscaler models"),
    ):
        parser.add_argument(option, type=Path, action="append", help=f"{what}; repeatable")
    parser.add_argument(
        "--controlnet-dir", type=Path, default=None, help="the ControlNets jobs may name (alwayson_scripts.controlnet)"
    )
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: best for the device)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker (default: torch's)")
    ray = parser.add_argument_group("Ray (pip install 'sd-core[ray]')")
    ray.add_argument(
        "--ray",
        metavar="auto|ADDRESS|local",
        default=None,
        help="run on a Ray cluster: auto (the cluster `ray start` made on this machine), its head's address "
        "(HOST:6379), or local (a new one-machine cluster); DIR must be a path every node shares",
    )
    ray.add_argument("--ray-concurrency", type=int, default=None, help="actors, one model each (default: GPUs or 1)")
    ray.add_argument("--ray-batch-size", type=int, default=1, help="jobs per call to an actor")


def config_from_args(args: argparse.Namespace) -> BatchConfig:
    model = args.model
    if model is None:
        from sd_core import builtin_model

        model = builtin_model()
    if not Path(model).exists():
        raise FileNotFoundError(f"model not found: {model}")
    return BatchConfig(
        model=Path(model).resolve(),
        device=args.device,
        dtype=args.dtype,
        styles=args.styles,
        upscaler_dirs=tuple(args.upscaler_dir or ()),
        lora_dirs=tuple(args.lora_dir or ()),
        embedding_dirs=tuple(args.embeddings_dir or ()),
        controlnet_dir=args.controlnet_dir,
        threads=args.threads,
    )


def main(args: argparse.Namespace) -> int:
    """Run `sd-core batch` for parsed options; the exit status."""
    for option, value in (("--ray-concurrency", args.ray_concurrency), ("--ray-batch-size", args.ray_batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be at least 1, got {value}")
    try:
        from pydantic import BaseModel  # noqa: F401  (the server's request schemas)
    except ImportError:
        print("sd-core batch checks jobs with the server's schemas: pip install 'sd-core[batch]'", file=sys.stderr)
        return 2
    ray = None if args.ray is None else RayOptions(args.ray, args.ray_concurrency, args.ray_batch_size)
    result = run_batch(
        args.jobs,
        args.outdir,
        config_from_args(args),
        seeds=parse_seeds(args.seeds) if args.seeds else None,
        sets=parse_sets(args.set),
        fail_fast=args.fail_fast,
        ray=ray,
    )
    print(
        f"batch: {result.made} images made, {result.skipped} already made, {len(result.failures)} jobs failed "
        f"(manifest: {Path(args.outdir) / 'manifest.jsonl'})",
        file=sys.stderr,
    )
    return 1 if result.failures else 0
