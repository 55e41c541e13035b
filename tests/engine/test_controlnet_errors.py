"""AC5: bad ControlNet input is a clear error naming what was wrong: an SDXL ControlNet on an SD1 model (and an SD1
one on SDXL), a truncated or empty file, a control image that is empty or no picture, bad unit values, tiled
denoising with control."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from controlnet_fixtures import write_controlnet_file
from model_fixtures import write_tiny_checkpoint
from PIL import Image

import sd_core
from sd_core.checkpoint import CheckpointError
from sd_core.limits import SettingError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn_errors")
    return {
        "sd1": write_tiny_checkpoint(root / "sd1.safetensors"),
        "cn": write_controlnet_file(root / "cn.safetensors"),
        "cn_xl": write_controlnet_file(root / "cn_xl.safetensors", "sdxl"),
        "root": root,
    }


@pytest.fixture(scope="module")
def net(files):
    return sd_core.load_controlnet(files["cn"], "cpu", torch.float32)


def test_an_sdxl_controlnet_on_an_sd1_model(files):
    pipe = sd_core.load(files["sd1"], device="cpu", dtype=torch.float32)
    xl = sd_core.load_controlnet(files["cn_xl"], "cpu", torch.float32)
    control = [sd_core.Control(xl, Image.new("RGB", (64, 64)))]
    with pytest.raises(SettingError, match=r"ControlNet 0 \(cn_xl\) is for SDXL models; sd1 is SD1") as err:
        pipe.txt2img("a wall", width=64, height=64, steps=1, control=control)
    assert err.value.setting == "controlnet"


def test_an_sd1_controlnet_on_an_sdxl_model(files, net, tmp_path):
    from sdxl_fixtures import write_sdxl_checkpoint

    pipe = sd_core.load(write_sdxl_checkpoint(tmp_path / "xl.safetensors"), device="cpu", dtype=torch.float32)
    with pytest.raises(SettingError, match="is for SD1 models; xl is SDXL"):
        pipe.txt2img("a wall", width=64, height=64, steps=1, control=[sd_core.Control(net, np.zeros((8, 8, 3)))])


@pytest.mark.parametrize("keep", [0, 7, 100, 5000])
def test_a_truncated_file_names_the_file(files, keep):
    path = files["root"] / f"truncated{keep}.safetensors"
    path.write_bytes(files["cn"].read_bytes()[:keep])
    with pytest.raises(CheckpointError, match=f"truncated{keep}.safetensors"):
        sd_core.load_controlnet(path, "cpu", torch.float32)


def test_a_missing_file_and_a_folder_without_a_controlnet(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        sd_core.load_controlnet(tmp_path / "nothing.safetensors")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        sd_core.load_controlnet(tmp_path / "folder")


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (None, "missing"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        (Image.new("RGB", (0, 0)), "empty"),
        ("not_a_file.png", "not_a_file.png"),
        ("TEXTFILE", "cannot identify image file"),
        (np.full((8, 8, 3), 2.0), "[0, 1]"),
        (object(), "expected a PIL image or a numpy array"),
    ],
)
def test_a_control_image_that_is_empty_or_no_picture(files, net, image, words):
    if isinstance(image, str) and image == "TEXTFILE":
        image = files["root"] / "notes.png"
        image.write_text("this is not a picture")
    with pytest.raises(SettingError, match=words.replace("[", r"\[").replace("]", r"\]")) as err:
        sd_core.Control(net, image)
    assert err.value.setting == "control_image"


@pytest.mark.parametrize(
    ("kw", "setting"),
    [
        ({"strength": 2.5}, "control_strength"),
        ({"strength": float("nan")}, "control_strength"),
        ({"start": 0.8, "end": 0.2}, "control_start"),
        ({"end": 1.5}, "control_end"),
        ({"control_mode": "loud"}, "control_mode"),
        ({"steps": "comfy"}, "control_steps"),
        ({"guess_mode": True, "control_mode": "prompt"}, "control_mode"),
    ],
)
def test_bad_unit_values_name_the_setting(net, kw, setting):
    with pytest.raises(SettingError) as err:
        sd_core.Control(net, np.zeros((8, 8, 3), np.uint8), **kw)
    assert err.value.setting == setting


def test_settings_check_the_units(net):
    with pytest.raises(SettingError) as err:
        sd_core.GenerationSettings(prompt="x", control=["depth.png"])
    assert err.value.setting == "control"
    with pytest.raises(SettingError, match="must be a loaded ControlNet") as err:
        sd_core.Control("cn.safetensors", np.zeros((8, 8, 3), np.uint8))
    assert err.value.setting == "controlnet"
    unit = sd_core.Control(net, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SettingError) as err:
        sd_core.GenerationSettings(prompt="x", control=[unit], tile=sd_core.TileOptions(64, 64))
    assert err.value.setting == "tile"
    assert sd_core.GenerationSettings(prompt="x", control=unit).control == (unit,)
