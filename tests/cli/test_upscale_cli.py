"""`sd-core upscale`: an image through a pixel upscaler or an ESRGAN-family model (by name in --upscaler-dir, or by
path), by a factor or to a size; the PNG keeps the input's parameters; a bad file is a clear error naming it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from esrgan_files import rrdb_weights, write_model
from PIL import Image

from sd_core import upscalers
from sd_core.pnginfo import pnginfo_for

PARAMETERS = "a red wall\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 40x24"


def sd_core_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sd_core.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("upscale")
    write_model(root / "ESRGAN" / "4x_tiny.safetensors", rrdb_weights(4))
    (root / "ESRGAN" / "junk.pth").write_bytes(b"\x80\x02}q\x00.garbage")
    img = Image.new("RGB", (40, 24))
    img.putdata([(x * 6, y * 10, (x * y) % 256) for y in range(24) for x in range(40)])
    img.save(root / "in.png", pnginfo=pnginfo_for(PARAMETERS))
    return root


def test_upscale_by_a_model_keeps_the_parameters(files, tmp_path):
    folder = ["--upscaler-dir", str(files / "ESRGAN")]
    out = sd_core_cli(
        "upscale", "--image", str(files / "in.png"), "--upscaler", "4x_tiny", *folder, "--outdir", str(tmp_path)
    )
    assert out.returncode == 0, out.stderr
    path = out.stdout.strip()
    assert path.endswith("00000-4x_tiny.png")
    with Image.open(path) as result:
        assert result.size == (80, 48)
        assert result.info["parameters"] == PARAMETERS
        assert result.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: 4x_tiny"
        engine = upscalers.Upscalers([files / "ESRGAN"]).find("4x_tiny")
        with Image.open(files / "in.png") as img:
            expected = engine.upscale(img.convert("RGB"), 2)
        assert np.abs(np.asarray(result, np.int16) - np.asarray(expected, np.int16)).max() <= 1


def test_upscale_to_a_size_and_by_path(files, tmp_path):
    model = str(files / "ESRGAN" / "4x_tiny.safetensors")
    image = ["--image", str(files / "in.png"), "--outdir", str(tmp_path)]
    out = sd_core_cli("upscale", *image, "--upscaler", model, "--width", "100")
    assert out.returncode == 0, out.stderr
    with Image.open(out.stdout.strip()) as result:
        assert result.size == (100, 60) and "Postprocess upscale to: 100x60" in result.info["postprocessing"]
    out = sd_core_cli("upscale", *image, "--width", "64", "--height", "64")
    assert out.returncode == 0, out.stderr
    with Image.open(out.stdout.strip()) as result:
        assert result.size == (64, 64)  # covered and centre-cropped (Lanczos, the default upscaler)


def test_upscale_errors_name_the_option_or_file(files, tmp_path):
    junk = files / "ESRGAN" / "junk.pth"
    for args, message in (
        (("--upscaler", "junk", "--upscaler-dir", str(files / "ESRGAN")), str(junk)),
        (("--upscaler", str(junk)), str(junk)),
        (("--upscaler", "4x_nothing"), "--upscaler: upscaler: could not find upscaler named '4x_nothing'"),
        (("--scale", "0"), "--scale must be positive"),
    ):
        out = sd_core_cli("upscale", "--image", str(files / "in.png"), "--outdir", str(tmp_path), *args)
        assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not list(tmp_path.iterdir())
