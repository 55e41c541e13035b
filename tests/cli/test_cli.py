"""The `sd-core` command: txt2img writes PNGs with the A1111 parameters chunk; info describes a checkpoint; bad input
gives a clear error and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest
from model_fixtures import write_tiny_checkpoint
from PIL import Image

import sd_core
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
    assert [f.name for f in files] == ["00000-42.png", "00001-43.png"]  # image k of a batch has the seed seed + k
    assert "2/2" in out.stderr  # the progress bar's last line
    with Image.open(files[1]) as img:
        params = parse_parameters(img.info["parameters"])
        assert img.size == (64, 64)
    assert params["prompt"] == "a red wall" and params["negative_prompt"] == "blurry"
    assert params["Sampler"] == "DPM++ 2M" and params["Schedule type"] == "Karras"
    assert params["Seed"] == "43" and params["Size"] == "64x64" and params["Batch pos"] == "1"


def test_info_reports_family_and_counts(model):
    out = sd_core_cli("info", str(model))
    assert out.returncode == 0, out.stderr
    assert "family:     sd1" in out.stdout and "sizes:      512x512, 768x512, 512x768\n" in out.stdout
    assert "model" in out.stdout and "first_stage_model" in out.stdout and "float32" in out.stdout


def test_bad_size_is_a_clear_error(model, tmp_path):
    out = sd_core_cli("txt2img", "--model", str(model), "--prompt", "x", "--width", "100", "--outdir", str(tmp_path))
    assert out.returncode == 2
    assert "multiple of 8" in out.stderr and "Traceback" not in out.stderr


def test_missing_model_is_a_clear_error(tmp_path):
    out = sd_core_cli("txt2img", "--model", str(tmp_path / "none.safetensors"), "--prompt", "x")
    assert out.returncode == 2 and "none.safetensors" in out.stderr and "Traceback" not in out.stderr


def test_settings_left_out_take_the_models_own_defaults(tmp_path):
    """No --model: the built-in model, at its own native size (64 px) and CFG scale (3), as the Python API does."""
    out = sd_core_cli(
        "txt2img", "--prompt", "red and white stripes", "--steps", "2", "--seed", "3", "--outdir", str(tmp_path)
    )
    assert out.returncode == 0, out.stderr
    with Image.open(tmp_path / "00000-3.png") as img:
        params = parse_parameters(img.info["parameters"])
        assert img.size == (64, 64)
    assert params["CFG scale"] == "3.0" and params["Size"] == "64x64"


def test_img2img_inpaint_and_outpaint_commands(model, tmp_path):
    image, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), (200, 60, 40)).save(image)
    box = Image.new("L", (64, 64), 0)
    box.paste(255, (16, 16, 48, 48))
    box.save(mask)
    common = ("--model", str(model), "--prompt", "a wall", "--steps", "2", "--seed", "5", "--dtype", "fp32")
    runs = [
        ("img2img", "--image", str(image), "--strength", "0.5", "--tiling", "x"),
        ("inpaint", "--image", str(image), "--mask", str(mask), "--fill", "latent_noise", "--mask-blur", "2"),
        ("outpaint", "--image", str(image), "--right", "32", "--prefill", "mirror"),
    ]
    for n, (command, *args) in enumerate(runs):
        out = sd_core_cli(command, *common, *args, "--outdir", str(tmp_path / command))
        assert out.returncode == 0, out.stderr
        with Image.open(tmp_path / command / "00000-5.png") as img:
            params = parse_parameters(img.info["parameters"])
            size = img.size
        assert size == ((96, 64) if command == "outpaint" else (64, 64)), (n, size)
        if command == "img2img":
            assert params["Denoising strength"] == "0.5" and params["Tiling"] == "x"
        if command == "inpaint":
            assert params["Masked content"] == "latent_noise" and params["Mask blur"] == "2.0"


def test_a1111_options(model, tmp_path):
    common = ("--model", str(model), "--prompt", "a wall", "--steps", "2", "--seed", "5", "--dtype", "fp32")
    varied = ("--sampler", "Euler a", "--eta", "0.5", "--subseed", "3", "--subseed-strength", "0.5")
    image = tmp_path / "wide.png"
    Image.new("RGB", (96, 64), (200, 60, 40)).save(image)
    runs = {
        "txt2img": (*varied, "--seed-resize-from", "32x32", "--width", "64", "--height", "64"),
        "img2img": ("--image", str(image), "--resize-mode", "crop", "--width", "64", "--height", "64")
        + ("--initial-noise-multiplier", "0.9", "--sampler", "Euler", "--s-churn", "1", "--s-noise", "1.01"),
    }
    expected = {
        "txt2img": {"Eta": "0.5", "Variation seed": "3", "Variation seed strength": "0.5", "Seed resize from": "32x32"},
        "img2img": {"Noise multiplier": "0.9", "Sigma churn": "1.0", "Sigma noise": "1.01"},
    }
    for command, args in runs.items():
        out = sd_core_cli(command, *common, *args, "--outdir", str(tmp_path / command))
        assert out.returncode == 0, out.stderr
        with Image.open(tmp_path / command / "00000-5.png") as img:
            params = parse_parameters(img.info["parameters"])
            assert img.size == (64, 64)
        assert {k: params.get(k) for k in expected[command]} == expected[command]


def test_img2img_sd_upscale_in_tiles(model, tmp_path):
    """A1111's "SD upscale" from the command line: --upscale enlarges the image, --tile denoises it in tiles."""
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (200, 60, 40)).save(image)
    args = ("--model", str(model), "--prompt", "a wall", "--steps", "2", "--seed", "5", "--dtype", "fp32")
    tiles = ("--upscale", "2", "--upscaler", "Nearest", "--tile", "64", "--tile-overlap", "32", "--tiling", "xy")
    out = sd_core_cli("img2img", *args, "--image", str(image), *tiles, "--outdir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    with Image.open(tmp_path / "00000-5.png") as img:
        params = parse_parameters(img.info["parameters"])
        assert img.size == (128, 96)
    assert params["Tile size"] == "64x64" and params["Tile overlap"] == "32" and params["Size"] == "128x96"


def test_help_shows_every_default(model):
    out = sd_core_cli("inpaint", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for shown in (
        "(default: 20)",
        "(default: Euler)",
        "(default: the model's own)",
        "(default: 1)",
        "(default: original)",
        "(default: 32)",
        "(default: outputs)",
    ):
        assert shown in text, shown
    for name in sd_core.schedules.SCHEDULES:  # the schedules listed from the engine's own table
        assert name in text


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--steps", "0"), "--steps:"),
        (("--sampler", "Eulr"), "--sampler:"),
        (("--clip-skip", "13"), "--clip-skip:"),
        (("--eta", "0.5"), "--eta:"),
        (("--seed-resize-from", "60x64"), "--seed-resize-from:"),
        (("--tile", "big"), "--tile:"),
        (("--tile", "60"), "--tile:"),
        (("--tile", "64", "--tile-overlap", "64"), "--tile-overlap:"),
        (("--tile-batch", "0"), "--tile-batch:"),
    ],
)
def test_a_bad_setting_names_its_option(model, tmp_path, args, named):
    out = sd_core_cli("txt2img", "--model", str(model), "--prompt", "x", *args, "--outdir", str(tmp_path))
    assert out.returncode == 2 and named in out.stderr and "Traceback" not in out.stderr


def test_txt2img_hires_options(model, tmp_path):
    """The --hires-* options are HiresOptions: the image has the hires size and A1111's hires parameters."""
    out = sd_core_cli(
        "txt2img", "--model", str(model), "--prompt", "a wall", "--steps", "2", "--seed", "4", "--width", "64",
        "--height", "64", "--dtype", "fp32", "--outdir", str(tmp_path), "--hires-width", "96", "--hires-steps", "1",
        "--hires-upscaler", "Nearest", "--hires-strength", "0.5", "--hires-prompt", "a brick wall",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "txt2img pass 1/2" in out.stderr and "txt2img pass 2/2" in out.stderr  # the progress bar, per pass
    with Image.open(tmp_path / "00000-4.png") as img:
        params = parse_parameters(img.info["parameters"])
        assert img.size == (96, 96)
    assert params["Size"] == "64x64" and params["Denoising strength"] == "0.5" and params["Hires resize"] == "96x0"
    assert params["Hires steps"] == "1" and params["Hires upscaler"] == "Nearest"
    assert params["Hires prompt"] == "a brick wall"


@pytest.mark.parametrize("by", ["folder", "path"])
def test_txt2img_hires_with_a_model_upscaler(model, tmp_path, by):
    from esrgan_files import rrdb_weights, write_model

    esrgan = write_model(tmp_path / "ESRGAN" / "2x_tiny.safetensors", rrdb_weights(2))
    choice = ("--hires-upscaler", "2x_tiny", "--upscaler-dir", str(esrgan.parent))
    out = sd_core_cli(
        "txt2img", "--model", str(model), "--prompt", "a wall", "--steps", "1", "--seed", "4", "--width", "64",
        "--height", "64", "--dtype", "fp32", "--outdir", str(tmp_path / "out"), "--hires-steps", "1",
        *(choice if by == "folder" else ("--hires-upscaler", str(esrgan))),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    with Image.open(tmp_path / "out" / "00000-4.png") as img:
        assert img.size == (128, 128) and "Hires upscaler: 2x_tiny" in img.info["parameters"]


def test_img2img_latent_resize_and_fixed_steps(model, tmp_path):
    image = tmp_path / "in.png"
    Image.new("RGB", (100, 60), (200, 60, 40)).save(image)
    out = sd_core_cli(
        "img2img", "--model", str(model), "--prompt", "a wall", "--image", str(image), "--steps", "2", "--seed", "5",
        "--strength", "0.5", "--fixed-steps", "--resize-mode", "latent", "--width", "64", "--height", "64",
        "--dtype", "fp32", "--outdir", str(tmp_path / "out"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "2/2" in out.stderr  # fixed steps: exactly --steps ran (int(2 * 0.5) = 1 otherwise)
    with Image.open(tmp_path / "out" / "00000-5.png") as img:
        assert img.size == (64, 64)


@pytest.mark.parametrize(
    ("args", "named"),
    [(("--hires-width", "100"), "--hires-width:"), (("--hires-upscaler", "Bilinear"), "--hires-upscaler:")],
)
def test_a_bad_hires_option_names_its_option(model, tmp_path, args, named):
    out = sd_core_cli("txt2img", "--model", str(model), "--prompt", "x", *args, "--outdir", str(tmp_path))
    assert out.returncode == 2 and named in out.stderr and "Traceback" not in out.stderr
