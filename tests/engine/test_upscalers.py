"""Model upscalers: ESRGAN-family files the tests write themselves (random weights of the RRDBNet layouts), found in a
folder and run through the same path a user's file takes (`Upscalers(dirs)` -> `find` -> `upscale`)."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from esrgan_files import original_layout, rrdb_weights, write_model
from PIL import Image

from sd_core import upscalers
from sd_core.limits import SettingError
from sd_core.upscalers import esrgan


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """A gradient with a square and some noise: detail the networks respond to."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, 128)], -1)
    arr[height // 4 : height // 2, width // 4 : width // 2] = (240, 230, 30)
    arr = np.clip(arr + rng.integers(-20, 21, arr.shape), 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A user's models/ESRGAN folder: both key layouts, x4 and x2, safetensors and wrapped pickles, and files that are
    not ESRGAN-family models."""
    d = tmp_path_factory.mktemp("ESRGAN")
    write_model(d / "4x_tiny.safetensors", rrdb_weights(4))
    write_model(d / "2x_tiny.pth", rrdb_weights(2, seed=1), wrapper="params_ema")
    write_model(d / "4x_old.pth", original_layout(rrdb_weights(4)))
    write_model(d / "not_esrgan.safetensors", {"first_stage_model.encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)})
    (d / "notes.txt").write_text("not a model")
    return d


def test_a_folder_lists_its_models_and_skips_what_is_not_one(folder, caplog):
    available = upscalers.Upscalers([folder])
    assert "_scanned" not in vars(available)
    assert available.find("Lanczos") is upscalers.REGISTRY["Lanczos"]
    assert "_scanned" not in vars(available)  # a pixel upscaler is found without reading the folder
    with caplog.at_level(logging.WARNING, logger="sd_core.upscalers"):
        everything = available.all()
    assert list(everything) == ["None", "Lanczos", "Nearest", "2x_tiny", "4x_old", "4x_tiny"]
    items = {u.name: u.item() for u in available.models}
    assert items["4x_tiny"] == {
        "name": "4x_tiny",
        "model_name": "RealESRGAN",
        "model_path": str(folder / "4x_tiny.safetensors"),
        "model_url": None,
        "scale": 4,
    }
    assert (items["2x_tiny"]["scale"], items["2x_tiny"]["model_name"]) == (2, "RealESRGAN")
    assert (items["4x_old"]["scale"], items["4x_old"]["model_name"]) == (4, "ESRGAN")
    bad = str(folder / "not_esrgan.safetensors")
    assert list(available.skipped) == ["not_esrgan"] and bad in available.skipped["not_esrgan"]
    assert any(bad in r.getMessage() and "not an ESRGAN-family model" in r.getMessage() for r in caplog.records)
    with pytest.raises(SettingError) as caught:
        available.find("not_esrgan", "upscaler_1")
    assert caught.value.setting == "upscaler_1" and bad in str(caught.value) and "RRDBNet" in str(caught.value)
    with pytest.raises(SettingError, match="4x_tiny"):
        available.find("missing", "upscaler_1")  # the list of what there is
    with pytest.raises(SettingError, match="could not find upscaler named '4x_tiny'"):
        upscalers.find("4x_tiny", "upscaler_1")  # no folders: the pixel upscalers only


def test_the_pixel_registry_is_constant_and_folders_are_per_caller(folder, tmp_path):
    with pytest.raises(TypeError):
        upscalers.REGISTRY["mine"] = upscalers.Upscaler("mine")  # type: ignore[index]
    write_model(tmp_path / "elsewhere.safetensors", rrdb_weights(4, seed=3))
    assert [u.name for u in upscalers.Upscalers([tmp_path]).models] == ["elsewhere"]
    assert "elsewhere" not in upscalers.Upscalers([folder]).all() and not upscalers.BUILTIN.models
    both = upscalers.Upscalers([tmp_path, folder])
    assert [u.name for u in both.models] == ["elsewhere", "2x_tiny", "4x_old", "4x_tiny"]
    write_model(tmp_path / "4x_tiny.pth", rrdb_weights(4, seed=4))  # the same name in a later folder
    later = upscalers.Upscalers([folder, tmp_path])
    assert later.find("4x_tiny").model_path == str(folder / "4x_tiny.safetensors")
    assert "is taken by" in later.skipped["4x_tiny"]


@pytest.mark.parametrize("name, scale", [("4x_tiny", 4), ("2x_tiny", 2), ("4x_old", 4)])
def test_a_model_upscales_by_its_scale(folder, name, scale):
    upscaler = upscalers.Upscalers([folder]).find(name)
    img = picture(21, 13)  # odd sizes: x2 pixel-unshuffles its input, padded and cropped back
    once = upscaler.step(img, 1)
    assert once.size == (21 * scale, 13 * scale)
    assert pixels(once).std() > 2  # not a flat picture
    assert upscaler.upscale(img, 2).size == (40, 24)  # A1111: the target floored to a multiple of 8
    assert upscaler.upscale(img, 3.5).size == (72, 40)  # x2 runs twice to get there, then Lanczos


def reference_rrdbnet(w: dict[str, torch.Tensor], x: torch.Tensor, unshuffle: int) -> torch.Tensor:
    """RRDBNet as ESRGAN and Real-ESRGAN describe it, written out step by step over the named weights."""

    def conv(name: str, t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w[f"{name}.weight"], w[f"{name}.bias"], padding=1)

    def lrelu(t: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(t, 0.2)

    if unshuffle > 1:
        x = F.pixel_unshuffle(x, unshuffle)
    features = trunk = conv("conv_first", x)
    blocks = len({k.split(".")[1] for k in w if k.startswith("body.")})
    for n in range(blocks):
        rrdb_in = r = trunk
        for j in (1, 2, 3):
            dense = [r]
            for k in (1, 2, 3, 4):
                dense.append(lrelu(conv(f"body.{n}.rdb{j}.conv{k}", torch.cat(dense, 1))))
            r = r + 0.2 * conv(f"body.{n}.rdb{j}.conv5", torch.cat(dense, 1))
        trunk = rrdb_in + 0.2 * r
    features = features + conv("conv_body", trunk)
    k = 1
    while f"conv_up{k}.weight" in w:
        features = lrelu(conv(f"conv_up{k}", F.interpolate(features, scale_factor=2, mode="nearest")))
        k += 1
    return conv("conv_last", lrelu(conv("conv_hr", features)))


@pytest.mark.parametrize("scale, unshuffle", [(4, 1), (2, 2), (1, 4), (8, 1)])
def test_the_network_is_rrdbnet_as_published(tmp_path, scale, unshuffle):
    weights = rrdb_weights(scale, blocks=1)
    net = esrgan.load(write_model(tmp_path / f"{scale}x.safetensors", weights))
    assert net.config.scale == scale and net.config.unshuffle == unshuffle
    assert (net.config.features, net.config.growth, net.config.blocks) == (8, 4, 1)
    x = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference_rrdbnet(weights, x, unshuffle), atol=1e-5, rtol=1e-5)


def test_the_two_key_layouts_and_wrappers_give_the_same_output(tmp_path):
    weights = rrdb_weights(4, seed=5)
    files = [
        write_model(tmp_path / "basicsr.safetensors", weights),
        write_model(tmp_path / "realesrgan.pth", weights, wrapper="params_ema"),
        write_model(tmp_path / "params.pt", weights, wrapper="params"),
        write_model(tmp_path / "original.pth", original_layout(weights)),
        write_model(tmp_path / "original.safetensors", original_layout(weights)),
    ]
    img = picture(24, 20)
    outputs = [pixels(upscalers.model_upscaler(path).step(img, 4)) for path in files]
    for other in outputs[1:]:
        assert np.array_equal(other, outputs[0])
    ema = {k: v + 1 for k, v in weights.items()}  # params_ema wins over params, as in Real-ESRGAN
    torch.save({"params": ema, "params_ema": weights}, tmp_path / "both.pth")
    assert np.array_equal(pixels(upscalers.model_upscaler(tmp_path / "both.pth").step(img, 4)), outputs[0])


@pytest.mark.parametrize("scale", [4, 2])
def test_tiles_give_the_untiled_result(tmp_path, scale):
    net = esrgan.load(write_model(tmp_path / "m.safetensors", rrdb_weights(scale)))
    img = picture(45, 38)
    whole = pixels(esrgan.upscale(net, img, tile=0))
    # context wider than the network's reach (2 RRDBs: about 35 input pixels): the tiles stitch to the same picture
    tiled = pixels(esrgan.upscale(net, img, tile=16, overlap=40))
    assert tiled.shape == whole.shape == (38 * scale, 45 * scale, 3)
    assert np.abs(tiled - whole).max() <= 1
    # A1111's default context of 8 pixels: only near the seams can a pixel differ, and little
    near = pixels(esrgan.upscale(net, img, tile=16, overlap=8))
    assert np.abs(near - whole).mean() < 0.5


class _RunsCode:
    def __reduce__(self):
        return (print, ("this would run",))


def test_bad_files_are_refused_naming_the_file(tmp_path):
    code = tmp_path / "code.pth"
    with open(code, "wb") as f:
        pickle.dump({"conv_first.weight": _RunsCode()}, f, protocol=2)
    missing = {k: v for k, v in rrdb_weights(4).items() if not k.startswith("conv_hr.")}
    cases = {
        code: "contains code or objects other than tensors",
        write_model(tmp_path / "no_hr.safetensors", missing): "conv_hr.bias is missing",
        write_model(tmp_path / "other.safetensors", {"linear.weight": torch.zeros(2, 2)}): "not an ESRGAN-family",
        write_model(tmp_path / "grey.safetensors", {**rrdb_weights(4), "conv_last.weight": torch.zeros(1, 8, 3, 3)}): (
            "only RGB models"
        ),
    }
    for path, why in cases.items():
        with pytest.raises(ValueError) as caught:
            upscalers.model_upscaler(path)
        assert str(path) in str(caught.value) and why in str(caught.value), str(caught.value)
        with pytest.raises(ValueError, match=why):
            esrgan.load(path)
    available = upscalers.Upscalers([tmp_path, tmp_path / "no such folder"])
    assert available.models == [] and set(available.skipped) == {"code", "no_hr", "other", "grey"}


def test_resize_goes_through_a_model_upscaler(folder):
    available = upscalers.Upscalers([folder])
    img = picture(30, 20)
    by_name = upscalers.resize(img, 100, 70, "4x_tiny", available)
    by_object = upscalers.resize(img, 100, 70, available.find("4x_tiny"))
    assert by_name.size == (100, 70) and np.array_equal(pixels(by_name), pixels(by_object))
    lanczos = upscalers.resize(img, 100, 70, "Lanczos")
    assert not np.array_equal(pixels(by_name), pixels(lanczos))
    with pytest.raises(SettingError):
        upscalers.resize(img, 100, 70, "4x_tiny")  # not among the pixel upscalers


@pytest.mark.parametrize("size", [(128, 96), (150, 90)])  # twice, and a scale that is no integer
def test_seamless_resize_is_the_middle_of_the_repeated_image(size):
    """With `seamless="xy"` the resampling sees across the wrap edge: the result is the middle of the 3x3 repeated
    image resized, which a plain resize differs from at the borders (hires fix's and SD upscale's pixel path)."""
    img = picture(64, 48, seed=3)
    ours = np.asarray(upscalers.resize(img, *size, "Lanczos", seamless="xy"), dtype=np.float64)
    tiled = Image.new("RGB", (192, 144))
    for x in range(3):
        for y in range(3):
            tiled.paste(img, (64 * x, 48 * y))
    w, h = size
    middle = tiled.resize((w, h), Image.Resampling.LANCZOS, box=(64, 48, 128, 96))
    assert np.abs(ours - np.asarray(middle, dtype=np.float64)).mean() < 1.0
    plain = np.asarray(upscalers.resize(img, *size, "Lanczos"), dtype=np.float64)
    assert np.abs(plain[:, :4] - np.asarray(middle, dtype=np.float64)[:, :4]).mean() > 3.0
