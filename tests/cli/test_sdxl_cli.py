"""The CLI with SDXL models: info reports the family, txt2img takes the size conditioning and a refiner, a setting
the model does not take names its option."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image
from sdxl_fixtures import write_sdxl_checkpoint

from sd_core.pnginfo import parse_parameters


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return write_sdxl_checkpoint(root / "xl.safetensors"), write_sdxl_checkpoint(root / "ref.safetensors", refiner=True)


def sd_core_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sd_core.cli", *args], capture_output=True, text=True, timeout=300)


def test_info_reports_sdxl_families(models):
    for path, family in zip(models, ("sdxl", "sdxl-refiner"), strict=True):
        out = sd_core_cli("info", str(path))
        assert out.returncode == 0, out.stderr
        assert f"family:     {family}" in out.stdout


def test_txt2img_with_size_conditioning_and_refiner(models, tmp_path):
    base, refiner = models
    out = sd_core_cli(
        "txt2img", "--model", str(base), "--prompt", "a wall", "--steps", "3", "--width", "32", "--height", "48",
        "--seed", "5", "--dtype", "fp32", "--outdir", str(tmp_path), "--original-size", "512x384",
        "--crops-coords-top-left", "8x0", "--refiner", str(refiner), "--refiner-switch-at", "0.5",
        "--aesthetic-score", "7",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (path,) = tmp_path.glob("*.png")
    with Image.open(path) as img:
        params = parse_parameters(img.info["parameters"])
        assert img.size == (32, 48)
    assert params["Refiner"] == "ref" and params["Refiner switch at"] == "0.5"
    assert params["SDXL original size"] == "512x384" and params["Aesthetic score"] == "7.0"


def test_a_setting_the_model_does_not_take_names_its_option(models, tmp_path):
    out = sd_core_cli("txt2img", "--model", str(models[0]), "--prompt", "x", "--aesthetic-score", "6",
                      "--outdir", str(tmp_path))  # fmt: skip
    assert out.returncode == 2 and "--aesthetic-score:" in out.stderr and "Traceback" not in out.stderr
