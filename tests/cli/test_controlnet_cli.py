"""`sd-core txt2img --control IMAGE --controlnet PATH --control-strength F` (repeatable): the same image as the
Python API with the same units; the units in the infotext; bad input named by its option."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from controlnet_fixtures import write_controlnet_file
from model_fixtures import write_tiny_checkpoint
from PIL import Image

import sd_core
from sd_core.cli import main
from sd_core.pnginfo import parse_parameters


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_cn")
    y, x = np.mgrid[0:40, 0:48]
    depth = Image.fromarray((((x - 20) ** 2 + (y - 20) ** 2 < 150) * 200 + x).astype(np.uint8)).convert("RGB")
    depth.save(root / "depth.png")
    return {
        "model": write_tiny_checkpoint(root / "tiny.safetensors"),
        "cn": write_controlnet_file(root / "cn.safetensors"),
        "cn_xl": write_controlnet_file(root / "cn_xl.safetensors", "sdxl"),
        "depth": root / "depth.png",
    }


def run(files, tmp_path, *extra: str) -> int:
    args = ["txt2img", "--model", str(files["model"]), "--prompt", "a wall", "--steps", "3", "--width", "64"]
    args += ["--height", "64", "--seed", "7", "--dtype", "fp32", "--device", "cpu", "--outdir", str(tmp_path)]
    return main([*args, *extra])


def test_control_options_give_the_python_api_image(files, tmp_path):
    code = run(files, tmp_path, "--control", str(files["depth"]), "--controlnet", str(files["cn"]),
               "--control-strength", "0.8")  # fmt: skip
    assert code == 0
    (png,) = tmp_path.glob("*.png")
    with Image.open(png) as img:
        made, params = np.asarray(img.convert("RGB"), dtype=np.float64), parse_parameters(img.info["parameters"])
    assert params["ControlNet 0"].startswith("Module: none, Model: cn, Weight: 0.8")
    pipe = sd_core.load(files["model"], device="cpu", dtype=torch.float32)
    net = sd_core.load_controlnet(files["cn"], device="cpu", dtype=torch.float32)
    kw = dict(steps=3, width=64, height=64, seed=7)
    api = pipe.txt2img("a wall", control=[sd_core.Control(net, Image.open(files["depth"]), strength=0.8)], **kw)[0]
    plain = pipe.txt2img("a wall", **kw)[0]
    assert np.abs(made - np.asarray(api, dtype=np.float64)).max() == 0
    assert np.abs(made - np.asarray(plain, dtype=np.float64)).mean() > 1


def test_an_sdxl_controlnet_on_an_sd1_model_names_the_option(files, tmp_path, capsys):
    assert run(files, tmp_path, "--control", str(files["depth"]), "--controlnet", str(files["cn_xl"])) == 2
    err = capsys.readouterr().err
    assert "--controlnet" in err and "SDXL" in err and "SD1" in err


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--control", "missing.png", "--controlnet", "CN"], "--control-image"),
        (["--control", "DEPTH", "--control", "DEPTH", "--controlnet", "CN", "--controlnet", "CN", "--controlnet", "CN"],
         "--controlnet"),
        (["--control", "DEPTH", "--controlnet", "CN", "--control-strength", "3"], "--control-strength"),
        (["--control", "DEPTH", "--controlnet", "CN", "--control-start", "0.9", "--control-end", "0.5"],
         "--control-start"),
    ],
)  # fmt: skip
def test_bad_control_options_are_named(files, tmp_path, capsys, extra, named):
    extra = [str(files["depth"]) if a == "DEPTH" else str(files["cn"]) if a == "CN" else a for a in extra]
    assert run(files, tmp_path, *extra) == 2
    assert named in capsys.readouterr().err
