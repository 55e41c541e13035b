"""`sd-core batch` on this machine (issue 39, acceptance 1 and 3): the images are the engine's txt2img images for the
same settings, the manifest's hashes are the files', a run killed halfway resumes without making any image twice, and
a bad line is reported with its line number while the other jobs complete."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from batch_jobs import THREADS, bodies, manifest_rows, sha256, write_jobs
from PIL import Image

import sd_core
from sd_core.batch.checks import BatchConfig
from sd_core.batch.command import run_batch
from sd_core.batch.progress import Progress
from sd_core.batch.sources import parse_seeds, parse_sets, read_jobs
from sd_core.pnginfo import read_parameters

N = 40


@pytest.fixture(scope="module")
def config() -> BatchConfig:
    return BatchConfig(model=sd_core.builtin_model(), device="cpu", threads=THREADS)


@pytest.fixture(scope="module")
def engine():
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield sd_core.load(None, device="cpu")
    finally:
        torch.set_num_threads(threads)


def batch_cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sd_core.cli", "batch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_forty_jobs_killed_halfway_resume_and_match_txt2img(tmp_path, engine):
    jobs = write_jobs(tmp_path / "jobs.jsonl", bodies(N))
    out = tmp_path / "out"
    proc = batch_cli(str(jobs), "--outdir", str(out), "--threads", str(THREADS))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "manifest.jsonl").is_file() and len(manifest_rows(out)) >= N // 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {row["path"]: row for row in manifest_rows(out)}
    assert N // 2 <= len(before) < N
    stamps = {path: (out / path).stat().st_mtime_ns for path in before}

    rerun = batch_cli(str(jobs), "--outdir", str(out), "--threads", str(THREADS))
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert f"{len(before)} already made" in stderr

    rows = manifest_rows(out)
    assert len(rows) == N  # each image once: none made twice
    assert len({row["path"] for row in rows}) == N
    assert {row["line"] for row in rows} == set(range(1, N + 1))
    for path, stamp in stamps.items():  # what the killed run made is not made again
        assert (out / path).stat().st_mtime_ns == stamp, path
    assert sorted(p.name for p in out.glob("*.png")) == sorted(row["path"] for row in rows)  # no strays, no partials
    assert not list(out.glob(".*"))

    for row in rows:
        body = bodies(N)[row["line"] - 1]
        data = (out / row["path"]).read_bytes()
        assert row["sha256"] == sha256(out / row["path"])
        assert row["seed"] == body["seed"]
        image = Image.open(io.BytesIO(data))
        assert read_parameters(image) == row["infotext"]
        (expected,) = engine.txt2img(
            body["prompt"],
            negative_prompt=body["negative_prompt"],
            seed=body["seed"],
            sampler=body["sampler_name"],
            steps=2,
            cfg_scale=body["cfg_scale"],
            width=64,
            height=64,
        )
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected.convert("RGB"))), row["path"]
        assert row["infotext"] == expected.info["parameters"]


def test_a_rerun_redoes_an_image_whose_file_changed(tmp_path, config):
    jobs = write_jobs(tmp_path / "jobs.jsonl", bodies(3))
    out = tmp_path / "out"
    first = run_batch(jobs, out, config, stream=io.StringIO())
    assert (first.made, first.skipped, first.failures) == (3, 0, [])
    rows = manifest_rows(out)
    damaged, kept = out / rows[1]["path"], out / rows[0]["path"]
    good = damaged.read_bytes()
    damaged.write_bytes(good[:-10])
    stamp = kept.stat().st_mtime_ns
    second = run_batch(jobs, out, config, stream=io.StringIO())
    assert (second.made, second.skipped) == (1, 2)
    assert damaged.read_bytes() == good
    assert kept.stat().st_mtime_ns == stamp


def test_bad_lines_are_reported_by_line_and_the_rest_complete(tmp_path, config):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "in" / "red.png")
    good = bodies(3)
    lines = [
        good[0],
        {**good[1], "sampler_name": "No Such Sampler"},  # line 2
        {"prompt": "x", "init_images": ["in/missing.png"], "steps": 2},  # line 3
        {"prompt": "red", "init_images": ["in/red.png"], "steps": 2, "denoising_strength": 0.5, "seed": 3},  # ok
        '{"prompt": "cut short',  # line 5
        {**good[2], "steps": "many"},  # line 6
        {**good[2], "restore_faces": True},  # line 7: refused by the server (refusals.py)
        good[2],
    ]
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    out, stream = tmp_path / "out", io.StringIO()
    result = run_batch(jobs, out, config, stream=stream)
    text = stream.getvalue()
    assert sorted(f.line for f in result.failures) == [2, 3, 5, 6, 7]
    assert f"{jobs}:2: Sampler not found: unknown sampler 'No Such Sampler'" in text
    assert f"{jobs}:3: init_images[0]: file not found: {tmp_path / 'in' / 'missing.png'}" in text
    assert f"{jobs}:5: not valid JSON" in text
    assert f"{jobs}:6: steps:" in text
    assert f"{jobs}:7: restore_faces" in text
    assert sorted(row["line"] for row in manifest_rows(out)) == [1, 4, 8]
    assert result.made == 3


def test_fields_without_effect_are_noted_and_carried_settings_refused(tmp_path, config):
    body = bodies(1)[0]
    lines = [
        {**body, "save_images": True, "eta": 0.5},  # A1111 ignores both here (Euler takes no eta): noted, made
        {**body, "override_settings": {"CLIP_stop_at_last_layers": 2}, "override_settings_restore_afterwards": False},
    ]
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    stream = io.StringIO()
    result = run_batch(jobs, tmp_path / "out", config, stream=stream)
    assert f"{jobs}:1: note: no effect, as on the server: fields: eta, save_images" in stream.getvalue()
    assert [f.line for f in result.failures] == [2]
    assert f"{jobs}:2: override_settings_restore_afterwards: false is refused" in stream.getvalue()
    assert result.made == 1


def test_another_model_is_another_job(tmp_path, config):
    jobs = write_jobs(tmp_path / "jobs.jsonl", bodies(1))
    other = tmp_path / "models" / "other.safetensors"
    other.parent.mkdir()
    other.write_bytes(sd_core.builtin_model().read_bytes())  # a copy under another name: identity is name and size
    first = run_batch(jobs, tmp_path / "out", config, stream=io.StringIO())
    second = run_batch(jobs, tmp_path / "out", replace(config, model=other), stream=io.StringIO())
    assert (first.made, second.made, second.skipped) == (1, 1, 0)
    a, b = manifest_rows(tmp_path / "out")
    assert a["job"] != b["job"] and a["path"] != b["path"]
    assert "Model: other" in b["infotext"] and "Model: other" not in a["infotext"]
    pixels = [np.asarray(Image.open(tmp_path / "out" / r["path"]).convert("RGB")) for r in (a, b)]
    assert np.array_equal(*pixels)  # the same weights


def test_fail_fast_stops_before_any_image_when_a_line_is_bad(tmp_path, config):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [bodies(1)[0], {**bodies(1)[0], "sampler_name": "Nope"}])
    result = run_batch(jobs, tmp_path / "out", config, fail_fast=True, stream=io.StringIO())
    assert [f.line for f in result.failures] == [2]
    assert result.made == 0 and not (tmp_path / "out" / "manifest.jsonl").exists()


def test_cli_exit_status_and_line_numbers(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [bodies(1)[0], {**bodies(1)[0], "sampler_name": "Nope"}])
    proc = batch_cli(str(jobs), "--outdir", str(tmp_path / "out"), "--threads", str(THREADS))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert f"{jobs}:2: Sampler not found" in stderr
    assert "images/s, ETA" in stderr
    assert len(manifest_rows(tmp_path / "out")) == 1


def test_prompts_file_expanded_by_seeds_and_sets(tmp_path, config):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# textures\nred bricks\n\nblue tiles\n")
    sets = parse_sets(["steps=2", "width=64", "height=64", "sampler_name=Euler a"])
    jobs = read_jobs(prompts, parse_seeds("5-6"), sets)
    assert [(j.line, j.body["prompt"], j.body["seed"]) for j in jobs] == [
        (2, "red bricks", 5),
        (2, "red bricks", 6),
        (4, "blue tiles", 5),
        (4, "blue tiles", 6),
    ]
    assert all(j.body["sampler_name"] == "Euler a" and j.body["steps"] == 2 for j in jobs)
    result = run_batch(prompts, tmp_path / "out", config, seeds=parse_seeds("5-6"), sets=sets, stream=io.StringIO())
    assert result.made == 4
    rows = manifest_rows(tmp_path / "out")
    assert sorted((r["line"], r["seed"]) for r in rows) == [(2, 5), (2, 6), (4, 5), (4, 6)]
    assert all(r["path"].startswith(f"{r['line']:05d}-{r['seed']}-") for r in rows)
    assert all("Sampler: Euler a" in r["infotext"] and "Steps: 2" in r["infotext"] for r in rows)


def test_csv_columns_are_request_fields(tmp_path):
    table = tmp_path / "jobs.csv"
    table.write_text('prompt,steps,seed\n"red, bricks",2,9\nblue tiles,,\n')
    jobs = read_jobs(table, None, {"width": 64})
    assert [(j.line, j.body) for j in jobs] == [
        (2, {"prompt": "red, bricks", "steps": "2", "seed": "9", "width": 64}),
        (3, {"prompt": "blue tiles", "width": 64}),
    ]


def test_seeds_and_sets_are_checked():
    assert parse_seeds("1-3,7, 9-10") == [1, 2, 3, 7, 9, 10]
    for bad in ("3-1", "a", "1-"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
    assert parse_sets(["cfg_scale=7.5", "prompt=a, b", 'styles=["x"]']) == {
        "cfg_scale": 7.5,
        "prompt": "a, b",
        "styles": ["x"],
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_sets(["steps"])


def test_a_job_without_a_seed_gets_the_same_one_on_every_run(tmp_path, config):
    unseeded = {k: v for k, v in bodies(1)[0].items() if k != "seed"}
    lines = [unseeded, {**unseeded, "subseed_strength": 0.4}]  # a variation: its random subseed fixed too
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    run_batch(jobs, tmp_path / "a", config, stream=io.StringIO())
    run_batch(jobs, tmp_path / "b", config, stream=io.StringIO())
    a, b = manifest_rows(tmp_path / "a"), manifest_rows(tmp_path / "b")
    assert a == b and len(a) == 2
    assert "Variation seed: " in a[1]["infotext"]
    for row in a:
        assert sha256(tmp_path / "a" / row["path"]) == sha256(tmp_path / "b" / row["path"])


def test_batch_runs_without_ray_or_fastapi_installed(tmp_path):
    """Ray is imported by `--ray` only and the checks need no FastAPI: a local batch with both made unimportable."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", bodies(1))
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "fastapi", "starlette", "uvicorn"):
            raise ModuleNotFoundError("blocked: " + name)
sys.meta_path.insert(0, Block())
from sd_core.cli import main
code = main(["batch", {str(jobs)!r}, "--outdir", {str(tmp_path / "out")!r}])
assert not [m for m in sys.modules if m.split(".")[0] in ("ray", "fastapi", "starlette")]
sys.exit(code)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(manifest_rows(tmp_path / "out")) == 1


def test_progress_line_in_a_log_has_rate_and_eta_and_is_not_a_line_per_image():
    stream = io.StringIO()
    progress = Progress(100, skipped=3, stream=stream)
    progress.start()
    progress.started -= 100.0  # as if the first 50 images took 100 s
    progress.advance(50)
    for _ in range(49):
        progress.advance(1)  # within 5 s of the first line: not written
    progress.advance(1)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "batch: 50/100 images (3 already made), 0.50 images/s, ETA 1:40"
    assert len(lines) == 2 and lines[1].startswith("batch: 100/100 images (3 already made),")
    assert lines[1].endswith("ETA 0:00")
