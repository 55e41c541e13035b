"""The pure parts of benchmarks/peers.py (argument parsing, run order, medians, ratios, the table); the benchmark itself
makes virtual environments and runs for many minutes, so it stays out of the tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import peers  # noqa: E402


def _run(step_s: list[float], image_s: list[float], peak_mb: float, load_s: float, used: str = "x") -> dict:
    return {
        "steps": [{"step_s": s, "cpu_step_s": 2 * s} for s in step_s],
        "images": [{"image_s": s, "cpu_image_s": 2 * s} for s in image_s],
        "peak_mb": peak_mb,
        "load_s": load_s,
        "warmup_s": 1.0,
        "precision_used": used,
    }


def test_arguments_pick_cases():
    args = peers.parse_args([])
    assert args.cases == peers.CASES and args.size == 512 and args.threads == 2
    args = peers.parse_args(["--engines", "sd_core,sdcpp", "--precisions", "full", "--steps", "2"])
    assert args.cases == [("sd_core", "fp32", "full"), ("sdcpp", "f32", "full")] and args.steps == 2
    assert peers.parse_args(["--precisions", "default"]).cases == [("openvino", "default", "low")]
    with pytest.raises(SystemExit):
        peers.parse_args(["--engines", "onnx"])
    with pytest.raises(SystemExit):
        peers.parse_args(["--engines", "sdcpp", "--precisions", "bf16"])  # nothing left
    with pytest.raises(SystemExit):
        peers.parse_args(["--model", "x.safetensors"])  # without its config folder


def test_rounds_alternate():
    assert peers.run_order(["a", "b", "c"], 3) == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]


def test_medians_ratios_and_table():
    ours = peers.summarize([_run([2.0, 4.0], [10.0], 3072, 5.0), _run([3.0, 3.0], [14.0], 2048, 7.0)])
    assert ours["step_s"] == 3.0 and ours["cpu_step_s"] == 6.0  # median of each run's median step
    assert (ours["image_s"], ours["image_s_min"], ours["image_s_max"]) == (12.0, 10.0, 14.0)
    assert ours["peak_mb"] == 3072 and ours["load_s"] == 6.0  # the highest peak; the median load
    theirs = peers.summarize([_run([2.0, 2.0], [8.0], 6144, 20.0, used="bf16")])
    full = peers.summarize([_run([6.0], [30.0], 4096, 1.0)])
    rows = [
        {"engine": "sd_core", "precision": "bf16", "class": "low", **ours},
        {"engine": "openvino", "precision": "default", "class": "low", **theirs},
        {"engine": "sdcpp", "precision": "f32", "class": "full", **full},  # no sd_core fp32 row: no ratio
    ]
    peers.add_ratios(rows)
    assert rows[1]["ratio_step_s"] == 1.5 and rows[1]["ratio_image_s"] == 1.5 and rows[1]["ratio_peak_mb"] == 0.5
    assert "ratio_step_s" not in rows[0] and "ratio_step_s" not in rows[2]
    lines = peers.format_table(rows)
    assert len(lines) == 2 + len(rows)
    assert lines[3].startswith("OpenVINO default (bf16)") and lines[3].rstrip().endswith("1.50  1.50  1.50  0.50")
    assert "3.00" in lines[2] and "10.0-14.0" in lines[2] and "3.0 GiB" in lines[2]


def test_cpu_slug():
    zen5 = "model name\t: AMD EPYC 9B45 128-Core Processor\ncpu family\t: 26\nmodel\t\t: 2\nflags\t\t: fpu avx512f\n"
    assert peers.cpu_slug(zen5) == "epyc-zen5"
    xeon = "model name\t: Intel(R) Xeon(R) 8481C\ncpu family\t: 6\nmodel\t\t: 143\nflags\t: avx512f amx_tile x\n"
    assert peers.cpu_slug(xeon) == "xeon-amx"
