"""SDXL in the modes SD1 has beyond plain parity: outpainting, seamless tiling, tiled denoising, hires fix (whose
second pass is conditioned on its own size), every sampler with batches and callbacks, and the size-conditioning
settings refused where a model does not take them, naming the setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sdxl_fixtures import write_sdxl_checkpoint

import sd_core
from sd_core import sdxl
from sd_core.limits import SettingError


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = write_sdxl_checkpoint(tmp_path_factory.mktemp("sdxl") / "base.safetensors")
    return sd_core.load(path, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    path = write_sdxl_checkpoint(tmp_path_factory.mktemp("sdxl") / "refiner.safetensors", refiner=True)
    return sd_core.load(path, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def inpaint_model(tmp_path_factory):
    path = write_sdxl_checkpoint(tmp_path_factory.mktemp("sdxl") / "inpaint.safetensors", inpainting=True)
    return sd_core.load(path, device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("model", ["base", "inpaint_model"])
def test_outpaint_extends_and_keeps_the_original(request, model, photo):
    pipe = request.getfixturevalue(model)
    out = np.asarray(pipe.outpaint(photo, "a wall", right=32, bottom=13, steps=3, seed=6)[0])
    assert out.shape == (64 + 16, 64 + 32, 3)
    keep = 64 - 8 - 12  # the mask reaches 8 px into the original, its blur 12 more
    assert np.array_equal(out[:keep, :keep], np.asarray(photo)[:keep, :keep])
    assert out[:, 64:].std() > 3


def _rolled_pair(pipe, axes: str | None, shift: int):
    """The same generation from noise, and from the same noise rolled by `shift` latents along x."""
    noise = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(9))
    text = pipe.encode_prompt("stripes")
    settings = sd_core.GenerationSettings(prompt="stripes", steps=4, cfg_scale=7.5, tiling=axes)
    out = []
    for n in (noise, torch.roll(noise, shift, dims=-1)):
        with sd_core.tiling.seamless([pipe.unet, pipe.vae], axes):
            lat = pipe.denoise(settings, n, text, torch.Generator().manual_seed(0))
            out.append(np.asarray(pipe.decode_latents(lat, seamless=axes)[0]).astype(float))
    return out


def test_seamless_x_output_lives_on_a_cylinder(base):
    """Circular padding on x: rolling the noise by 4 latents (the UNet's 2 downsamplings) rolls the image."""
    a, b = _rolled_pair(base, "x", 4)
    assert np.abs(np.roll(a, 32, axis=1) - b).mean() < 0.5
    plain_a, plain_b = _rolled_pair(base, None, 4)
    assert np.abs(np.roll(plain_a, 32, axis=1) - plain_b).mean() > 2


def test_tiled_denoising_runs_and_one_tile_is_the_untiled_run(base):
    kw = {"width": 96, "height": 64, "steps": 3, "seed": 4, "batch_size": 2}
    plain = [np.asarray(i) for i in base.txt2img("a wall", **kw)]
    covering = [np.asarray(i) for i in base.txt2img("a wall", tile=sd_core.TileOptions(96, 64), **kw)]
    assert all(np.array_equal(a, b) for a, b in zip(plain, covering, strict=True))
    tiled = base.txt2img("a wall", tile=sd_core.TileOptions(64, 64, overlap=32), **kw)
    assert tiled[0].size == (96, 64) and np.abs(np.asarray(tiled[0], float) - plain[0]).mean() > 0


def test_hires_second_pass_is_conditioned_on_its_own_size(base, monkeypatch):
    seen = []
    vectors = sdxl.vectors
    monkeypatch.setattr(
        sdxl, "vectors", lambda config, s, a, b, h, w: seen.append((h, w)) or vectors(config, s, a, b, h, w)
    )
    hires = sd_core.HiresOptions(scale=2.0, steps=2, strength=0.5)
    (img,) = base.txt2img("a wall", width=32, height=48, steps=2, seed=1, hires=hires)
    assert img.size == (64, 96)
    assert seen == [(48, 32), (96, 64)]


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m", "dpmpp_sde", "unipc"])
def test_samplers_batches_and_callbacks(base, sampler):
    steps = []
    imgs = base.txt2img("a cat", width=32, height=32, steps=3, seed=12, sampler=sampler, batch_size=2,
                        callback=lambda info: steps.append(info.step))  # fmt: skip
    assert len(imgs) == 2 and steps == [1, 2, 3]
    assert [i.info["seed"] for i in imgs] == [12, 13]


def test_cancel_stops_the_run(base):
    def cancel(info):
        raise sd_core.Cancelled

    with pytest.raises(sd_core.Cancelled):
        base.txt2img("a cat", width=32, height=32, steps=3, callback=cancel)


@pytest.mark.parametrize(
    ("model", "setting", "value"),
    [
        ("sd1", "original_size", (512, 512)),
        ("sd1", "crops_coords_top_left", (0, 0)),
        ("base", "aesthetic_score", 6.0),
        ("base", "negative_aesthetic_score", 2.5),
        ("refiner", "target_size", (64, 64)),
    ],
)
def test_size_conditioning_a_model_does_not_take_is_refused(request, model, setting, value):
    with pytest.raises(SettingError, match=setting) as err:
        request.getfixturevalue(model).txt2img("a cat", width=32, height=32, steps=1, **{setting: value})
    assert err.value.setting == setting


@pytest.mark.parametrize(
    ("setting", "value"),
    [("original_size", (0, 64)), ("crops_coords_top_left", (-1, 0)), ("target_size", (64,)),
     ("aesthetic_score", -1.0), ("empty_negative", "blank")],
)  # fmt: skip
def test_bad_size_conditioning_values_name_the_setting(setting, value):
    with pytest.raises(SettingError) as err:
        sd_core.GenerationSettings(prompt="x", **{setting: value})
    assert err.value.setting == setting


def test_size_not_a_multiple_of_8_names_the_field(base):
    with pytest.raises(SettingError) as err:
        base.txt2img("a cat", width=1020, height=1024)
    assert err.value.setting == "width"
