"""`sd-core batch --ray` (issue 39, acceptance 2): on a local Ray cluster started here (2 CPUs), the same jobs give
byte-identical images and manifest rows as the local runner; a worker killed mid-run loses nothing, and every job has
its image exactly once."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from batch_jobs import THREADS, bodies, manifest_rows, sha256, write_jobs

import sd_core
from sd_core.batch.checks import BatchConfig
from sd_core.batch.command import RayOptions, run_batch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    """A one-machine cluster of 2 CPUs; its workers import this checkout's sd_core (PYTHONPATH, inherited)."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), saved) if p)
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def config() -> BatchConfig:
    return BatchConfig(model=sd_core.builtin_model(), device="cpu", threads=THREADS)


def by_path(outdir: Path) -> dict[str, dict]:
    return {row["path"]: row for row in manifest_rows(outdir)}


def test_ray_gives_the_local_runs_bytes_and_manifest(cluster, config, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [*bodies(7), {**bodies(1)[0], "sampler_name": "Nope"}])
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    local_result = run_batch(jobs, local, config, stream=io.StringIO())
    stream = io.StringIO()
    ray_result = run_batch(jobs, on_ray, config, ray=RayOptions(concurrency=2), stream=stream)
    assert local_result.made == ray_result.made == 7
    assert [f.line for f in ray_result.failures] == [8]
    assert f"{jobs}:8: Sampler not found" in stream.getvalue()
    assert by_path(on_ray) == by_path(local)
    for path in by_path(local):
        assert (on_ray / path).read_bytes() == (local / path).read_bytes()
    again = run_batch(jobs, on_ray, config, ray=RayOptions(concurrency=2), stream=io.StringIO())
    assert (again.made, again.skipped) == (0, 7)  # resume as locally


def test_a_worker_killed_mid_run_loses_nothing(cluster, config, tmp_path):
    n = 12
    jobs = write_jobs(tmp_path / "jobs.jsonl", bodies(n))
    out = tmp_path / "out"
    killed: list[int] = []
    pids: set[int] = set()

    def kill_first_worker(result: dict) -> None:
        pids.add(result["pid"])
        if not killed:
            killed.append(result["pid"])
            os.kill(result["pid"], signal.SIGKILL)

    result = run_batch(jobs, out, config, ray=RayOptions(concurrency=2, on_result=kill_first_worker))
    assert killed and result.failures == []
    # Ray started the killed actor again (a new process) and ran its lost calls there: each actor has several calls
    # in flight (Ray Data's default), so the one killed after its first result had more to do
    assert len(pids) == 3
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)  # it really is gone
    rows = manifest_rows(out)
    assert sorted(row["line"] for row in rows) == list(range(1, n + 1))  # every job once
    assert sorted(p.name for p in out.glob("*.png")) == sorted(row["path"] for row in rows)
    assert not list(out.glob(".*"))
    for row in rows:
        assert sha256(out / row["path"]) == row["sha256"]
    reference = tmp_path / "reference"
    run_batch(jobs, reference, config, stream=io.StringIO())
    assert by_path(out) == by_path(reference)


def test_the_command_starts_its_own_cluster_with_ray_local(tmp_path):
    """`sd-core batch --ray local`: the command's own path (options, `ray.init`, shutdown), in a process of its own."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", [*bodies(2), {**bodies(1)[0], "sampler_name": "Nope"}])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    command = [sys.executable, "-m", "sd_core.cli", "batch", str(jobs), "--outdir", str(tmp_path / "out")]
    options = ["--ray", "local", "--ray-concurrency", "1", "--threads", str(THREADS)]
    proc = subprocess.run([*command, *options], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr  # one bad line
    assert f"{jobs}:3: Sampler not found" in proc.stderr
    assert "2 images made, 0 already made, 1 jobs failed" in proc.stderr
    reference = tmp_path / "reference"
    config = BatchConfig(model=sd_core.builtin_model(), device="cpu", threads=THREADS)
    run_batch(jobs, reference, config, stream=io.StringIO())
    assert by_path(tmp_path / "out") == by_path(reference)
