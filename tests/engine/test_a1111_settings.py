"""A1111's generation options as engine settings, through the Python API: the sampler options (eta, s_churn,
s_tmin, s_tmax, s_noise; each only for a sampler that takes it), variation seeds and seed resize (`sd_core.noise`),
resize modes (`sd_core.resize`) and the img2img noise multiplier. The tiny models and picture are
tests/engine/conftest.py's."""

from __future__ import annotations

import math

import pytest

import sd_core
from sd_core.limits import SettingError
from sd_core.pnginfo import parse_parameters

# --- settings --------------------------------------------------------------------------------------------------


def test_defaults_pass_no_option():
    assert sd_core.GenerationSettings().sampler_options() == {}
    chosen = sd_core.GenerationSettings(sampler="Euler a", eta=0.5, s_noise=0.9)
    assert chosen.sampler_options() == {"eta": 0.5, "s_noise": 0.9}


@pytest.mark.parametrize(
    "sampler, option, value",
    [
        ("Euler", "eta", 0.0),
        ("DPM++ 2M", "eta", 1.0),
        ("LMS", "s_noise", 0.9),
        ("Euler a", "s_churn", 1.0),
        ("DDIM", "s_noise", 1.1),
        ("UniPC", "s_tmax", 5.0),
    ],
)
def test_an_option_the_sampler_cannot_use_is_an_error_naming_it(sampler, option, value):
    with pytest.raises(SettingError, match="takes no") as caught:
        sd_core.GenerationSettings(sampler=sampler, **{option: value})
    assert caught.value.setting == option


@pytest.mark.parametrize("option, value", [("eta", -0.1), ("s_churn", math.nan), ("s_noise", "1"), ("s_tmin", -1)])
def test_option_ranges(option, value):
    with pytest.raises(SettingError) as caught:
        sd_core.GenerationSettings(sampler="Euler" if option != "eta" else "Euler a", **{option: value})
    assert caught.value.setting == option


def test_eta_0_makes_euler_a_euler_and_says_so(sd1):
    kw = dict(width=64, height=64, steps=4, seed=2)
    ancestral = sd1.txt2img("a cat", sampler="Euler a", eta=0.0, **kw)[0]
    assert ancestral.tobytes() == sd1.txt2img("a cat", sampler="Euler", **kw)[0].tobytes()
    assert parse_parameters(ancestral.info["parameters"])["Eta"] == "0.0"
    assert ancestral.tobytes() != sd1.txt2img("a cat", sampler="Euler a", **kw)[0].tobytes()
    ddim = sd1.txt2img("a cat", sampler="DDIM", eta=0.5, **kw)[0]
    assert parse_parameters(ddim.info["parameters"])["Eta DDIM"] == "0.5"
    same = sd1.txt2img("a cat", sampler="Euler a", eta=1.0, **kw)[0]  # the sampler's own: not in the infotext
    assert "Eta" not in parse_parameters(same.info["parameters"])


def test_churn_in_the_pipeline_and_infotext(sd1):
    kw = dict(width=64, height=64, steps=4, seed=2, sampler="Euler")
    churned = sd1.txt2img("a cat", s_churn=1.0, s_tmax=10.0, s_noise=1.01, **kw)[0]
    params = parse_parameters(churned.info["parameters"])
    assert (params["Sigma churn"], params["Sigma tmax"], params["Sigma noise"]) == ("1.0", "10.0", "1.01")
    assert churned.tobytes() != sd1.txt2img("a cat", **kw)[0].tobytes()


# --- variation seeds and seed resize -------------------------------------------------------------------------------

KW = dict(width=64, height=64, steps=4)


def test_slerp_ends_and_parallel_fallback():
    import torch

    from sd_core.noise import slerp

    g = torch.Generator().manual_seed(0)
    low, high = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g)
    assert torch.equal(slerp(0.0, low, high), low) and torch.equal(slerp(1.0, low, high), high)
    mid = slerp(0.5, low, high)
    assert mid.norm() > 1.3 * ((low + high) / 2).norm()  # noise keeps its size, where a linear mix loses ~30%
    assert torch.equal(slerp(0.3, low, low), low * 0.3 + low * 0.7)  # A1111's weights in its fallback


def test_strength_0_is_no_variation(sd1):
    plain = sd1.txt2img("a cat", seed=4, **KW)[0]
    same = sd1.txt2img("a cat", seed=4, subseed=99, subseed_strength=0.0, **KW)[0]
    assert same.tobytes() == plain.tobytes() and "Variation seed" not in same.info["parameters"]


def test_strength_1_is_the_subseed_s_noise(sd1):
    """With a deterministic sampler the image is exactly the subseed's (the sampler would draw later noise from
    the seed's generator, as A1111)."""
    varied = sd1.txt2img("a cat", seed=4, subseed=7, subseed_strength=1.0, sampler="Euler", **KW)[0]
    assert varied.tobytes() == sd1.txt2img("a cat", seed=7, sampler="Euler", **KW)[0].tobytes()
    params = parse_parameters(varied.info["parameters"])
    assert (params["Seed"], params["Variation seed"], params["Variation seed strength"]) == ("4", "7", "1.0")


def test_a_varied_batch_keeps_the_seed_counts_the_subseed_and_is_made_again_alone(sd1):
    import numpy as np

    kw = dict(seed=4, subseed=20, subseed_strength=0.4, sampler="Euler a", **KW)
    batch = sd1.txt2img("a cat", batch_size=3, **kw)
    assert [img.info["seed"] for img in batch] == [4, 4, 4]
    assert [img.info["subseed"] for img in batch] == [20, 21, 22]
    assert [parse_parameters(img.info["parameters"])["Variation seed"] for img in batch] == ["20", "21", "22"]
    for k, img in enumerate(batch):
        alone = sd1.txt2img("a cat", **{**kw, "subseed": 20 + k})[0]
        assert np.abs(np.asarray(alone, float) - np.asarray(img, float)).mean() < 1.0
    assert batch[0].tobytes() != batch[1].tobytes()
    assert batch[0].tobytes() != sd1.txt2img("a cat", seed=4, sampler="Euler a", **KW)[0].tobytes()


def test_the_batch_s_last_subseed_must_be_valid():
    last = sd_core.limits.MAX_SEED
    sd_core.GenerationSettings(seed=last, batch_size=4, subseed=1, subseed_strength=0.5)  # the seed does not count
    with pytest.raises(SettingError) as caught:
        sd_core.GenerationSettings(subseed=last - 1, batch_size=4, subseed_strength=0.5)
    assert caught.value.setting == "subseed"


def test_seed_resize_keeps_the_noise_centred():
    import torch

    from sd_core.noise import image_seeds, start_noise

    def noise(width, height, **kw):
        s = sd_core.GenerationSettings(seed=5, width=width, height=height, batch_size=2, **kw)
        s = s.resolve("txt2img", sd_core.ModelDefaults())
        gens = [torch.Generator().manual_seed(seed) for seed in image_seeds(s)]
        return start_noise((2, 4, height // 8, width // 8), s, gens)

    small = noise(64, 64)
    big = noise(128, 96, seed_resize_from=(64, 64))
    assert torch.equal(big[:, :, 2:10, 4:12], small)  # (12 - 8) // 2 rows, (16 - 8) // 2 columns
    assert not torch.equal(big, noise(128, 96))
    assert torch.equal(big[:, :, :2], noise(128, 96)[:, :, :2])  # the rest: the own-size draw
    narrow = noise(64, 64, seed_resize_from=(96, 64))  # wider than the image: its centre is kept
    assert torch.equal(narrow, noise(96, 64)[:, :, :, 2:10])
    varied = noise(128, 96, seed_resize_from=(64, 64), subseed=9, subseed_strength=0.5)
    assert torch.equal(varied[:, :, 2:10, 4:12], noise(64, 64, subseed=9, subseed_strength=0.5))


@pytest.mark.parametrize("value", [(60, 64), (0, 64), (64,), "64x64", (64, 8200)])
def test_seed_resize_sizes(value):
    with pytest.raises(SettingError) as caught:
        sd_core.GenerationSettings(seed_resize_from=value)
    assert caught.value.setting == "seed_resize_from"


def test_seed_resize_in_the_pipeline(sd1):
    img = sd1.txt2img("a cat", seed=4, width=96, height=64, steps=3, seed_resize_from=(64, 64))[0]
    assert parse_parameters(img.info["parameters"])["Seed resize from"] == "64x64"
    plain = sd1.txt2img("a cat", seed=4, width=96, height=64, steps=3)[0]
    assert img.tobytes() != plain.tobytes()


# --- resize modes and the noise multiplier -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide(photo):
    return photo.resize((96, 64))


@pytest.mark.parametrize("mode", ["crop", "fill"])
def test_img2img_resize_modes_fit_the_picture(sd1, wide, mode):
    from sd_core import resize

    kw = dict(width=64, height=64, steps=4, seed=3, strength=0.6)
    got = sd1.img2img(wide, "a cat", resize_mode=mode, **kw)[0]
    assert got.tobytes() == sd1.img2img(resize.fit(wide, 64, 64, mode), "a cat", **kw)[0].tobytes()
    assert got.tobytes() != sd1.img2img(wide, "a cat", **kw)[0].tobytes()  # "resize" stretches


def test_whole_picture_inpainting_resize_modes_fit_picture_and_mask(sd1, wide):
    import numpy as np
    from PIL import Image

    from sd_core import resize

    mask = np.zeros((64, 96), np.uint8)
    mask[20:50, 10:40] = 255  # partly in the band "crop" cuts away
    mask = Image.fromarray(mask)
    kw = dict(width=64, height=64, steps=4, seed=3, mask_blur=0)
    got = sd1.inpaint(wide, mask, "a cat", resize_mode="crop", **kw)[0]
    assert got.size == (64, 64)
    fitted = sd1.inpaint(resize.fit(wide, 64, 64, "crop"), resize.fit(mask, 64, 64, "crop"), "a cat", **kw)[0]
    assert np.abs(np.asarray(got, float) - np.asarray(fitted, float)).max() <= 1
    assert sd1.inpaint(wide, mask, "a cat", **kw)[0].size == (96, 64)  # "resize": back at the input's size


def test_resize_mode_applies_where_there_is_a_picture(sd1, photo, square_mask):
    with pytest.raises(SettingError) as caught:
        sd1.txt2img("a cat", resize_mode="crop", **KW)
    assert caught.value.setting == "resize_mode"
    with pytest.raises(SettingError) as caught:
        sd1.inpaint(photo, square_mask, "a cat", resize_mode="fill", only_masked=True, **KW)
    assert caught.value.setting == "resize_mode"
    with pytest.raises(SettingError):
        sd_core.GenerationSettings(resize_mode="stretch")


def test_noise_multiplier(sd1, photo):
    kw = dict(steps=4, seed=3, strength=0.6)
    plain = sd1.img2img(photo, "a cat", **kw)[0]
    assert sd1.img2img(photo, "a cat", initial_noise_multiplier=1.0, **kw)[0].tobytes() == plain.tobytes()
    less = sd1.img2img(photo, "a cat", initial_noise_multiplier=0.5, **kw)[0]
    assert less.tobytes() != plain.tobytes()
    assert parse_parameters(less.info["parameters"])["Noise multiplier"] == "0.5"
    with pytest.raises(SettingError) as caught:
        sd1.txt2img("a cat", initial_noise_multiplier=0.5, **KW)
    assert caught.value.setting == "initial_noise_multiplier"
