"""`sd-core batch --ray` throughput with 1 actor against 2 (issue 39, acceptance 4): the same jobs through the same
code, only the actor pool's size changing. Not run in CI.

    python benchmarks/batch_ray.py                          # a fresh 2-CPU local cluster, 24 jobs, 1 and 2 actors
    python benchmarks/batch_ray.py --address auto --actors 1,2,4 --jobs 200 --size 512 --steps 20 --threads 4

Each run writes to a new folder (nothing resumed). Printed per run: the whole run's wall time (actor start and model
load included) and the steady throughput (images/s from the first PNG's modification time to the last: the driver
gets Ray's results in bursts, so their arrival times would overstate it), with the machine's load average before and
after; the local runner (one process, `--threads` threads) first, as the baseline. On a machine whose cores are
shared with other work, the figures carry that work's load: compare them within a run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sd_core  # noqa: E402
from sd_core.batch.checks import BatchConfig  # noqa: E402
from sd_core.batch.command import RayOptions, run_batch  # noqa: E402

PROMPTS = ["red bricks", "blue tiles", "green and white dots", "black and white checkerboard"]


def write_jobs(path: Path, n: int, size: int, steps: int) -> Path:
    lines = [
        {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i, "steps": steps, "width": size, "height": size}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def timed(jobs: Path, outdir: Path, config: BatchConfig, ray: RayOptions | None) -> dict:
    load = os.getloadavg()[0]
    start = time.monotonic()
    result = run_batch(jobs, outdir, config, ray=ray, stream=io.StringIO())
    wall = time.monotonic() - start
    # steady throughput from the PNGs' own times (written by whichever process made them as it made them): the
    # driver receives Ray's results in bursts, so their arrival times would overstate it
    rows = [json.loads(t) for t in (outdir / "manifest.jsonl").read_text().splitlines()]
    stamps = sorted((outdir / r["path"]).stat().st_mtime for r in rows)
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    assert not result.failures, result.failures
    return {
        "images": result.made,
        "wall_s": round(wall, 2),
        "images_per_s_whole_run": round(result.made / wall, 3),
        "images_per_s_steady": round(steady, 3),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=None, help="a running cluster (auto, host:6379); default: a new one")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the new local cluster")
    parser.add_argument("--actors", default="1,2", help="pool sizes to compare")
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (and Ray CPUs) per actor")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    config = BatchConfig(model=sd_core.builtin_model(), device=None, threads=args.threads)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = write_jobs(Path(tmp) / "jobs.jsonl", args.jobs, args.size, args.steps)
        runs["local"] = timed(jobs, Path(tmp) / "local", config, None)
        for actors in (int(a) for a in args.actors.split(",")):
            runs[f"ray, {actors} actor{'s' if actors > 1 else ''}"] = timed(
                jobs, Path(tmp) / f"ray{actors}", config, RayOptions(concurrency=actors)
            )
    cluster = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    ray.shutdown()
    printed = [
        f"{args.jobs} jobs, {args.size}x{args.size}, {args.steps} steps, built-in model, {args.threads} thread(s) per "
        f"worker; cluster {cluster}; {os.cpu_count()} CPUs seen by this process ({platform.processor() or '?'})"
    ]
    printed.append(f"{'run':<16} {'wall s':>8} {'img/s whole':>12} {'img/s steady':>13} {'load before/after':>18}")
    for name, r in runs.items():
        printed.append(
            f"{name:<16} {r['wall_s']:>8.2f} {r['images_per_s_whole_run']:>12.3f} {r['images_per_s_steady']:>13.3f} "
            f"{r['load_before']:>8.2f} / {r['load_after']:<6.2f}"
        )
    first, *rest = [k for k in runs if k.startswith("ray")]
    for name in rest:
        gain = runs[name]["images_per_s_steady"] / runs[first]["images_per_s_steady"]
        printed.append(f"steady throughput, {name} / {first}: x{gain:.2f}")
    print("\n".join(printed))
    if args.json is not None:
        record = {"args": vars(args) | {"json": str(args.json)}, "cluster": cluster, "runs": runs, "printed": printed}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
