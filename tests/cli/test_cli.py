"""The `sd-core` command: txt2img writes PNGs with the A1111 parameters chunk; info describes a checkpoint; bad input
gives a clear error and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest
from model_fixtures import write_tiny_checkpoint
from PIL import Image

from sd_core.pnginfo import parse_parameters


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("cli") / "tiny.safetensors")


def sd_core_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sd_core.cli", *args], capture_output=True, text=True, timeout=300)


def test_txt2img_writes_pngs_with_parameters(model, tmp_path):
    out = sd_core_cli(
        "txt2img",
        "--model",
        str(model),
        "--prompt",
        "a red wall",
        "--negative-prompt",
        "blurry",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--seed",
        "42",
        "--n-samples",
        "2",
        "--sampler",
        "DPM++ 2M Karras",
        "--outdir",
        str(tmp_path),
        "--dtype",
        "fp32",
    )
    assert out.returncode == 0, out.stderr
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in files] == ["00000-42.png", "00001-42.png"]
    assert "2/2" in out.stderr  # the progress bar's last line
    with Image.open(files[1]) as img:
        params = parse_parameters(img.info["parameters"])
        assert img.size == (64, 64)
    assert params["prompt"] == "a red wall" and params["negative_prompt"] == "blurry"
    assert params["Sampler"] == "DPM++ 2M" and params["Schedule type"] == "Karras"
    assert params["Seed"] == "42" and params["Size"] == "64x64" and params["Batch pos"] == "1"


def test_info_reports_family_and_counts(model):
    out = sd_core_cli("info", str(model))
    assert out.returncode == 0, out.stderr
    assert "family:     sd1" in out.stdout
    assert "model" in out.stdout and "first_stage_model" in out.stdout and "float32" in out.stdout


def test_bad_size_is_a_clear_error(model, tmp_path):
    out = sd_core_cli("txt2img", "--model", str(model), "--prompt", "x", "--width", "100", "--outdir", str(tmp_path))
    assert out.returncode == 2
    assert "multiple of 8" in out.stderr and "Traceback" not in out.stderr


def test_missing_model_is_a_clear_error(tmp_path):
    out = sd_core_cli("txt2img", "--model", str(tmp_path / "none.safetensors"), "--prompt", "x")
    assert out.returncode == 2 and "none.safetensors" in out.stderr and "Traceback" not in out.stderr
