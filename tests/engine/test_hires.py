"""Hires fix (`GenerationSettings.hires`, `sd_core.hires`) and img2img's resize_mode "latent", as A1111 does them.

The acceptance check: a hires image is exactly img2img of its upscaled first pass with "the same settings", which
are `hires.second_pass(settings)`, spelled out field by field below: the first pass's settings (prompt, negative
prompt, CFG scale, seed, batch size, clip skip, tiling, sampler and schedule) at the hires target size, with the hires
steps (or the first pass's), the hires strength, the hires prompts/sampler/schedule where given, and `fixed_steps`
(A1111's step rule for its second pass: exactly the hires steps, the last of a schedule of
int(steps / min(strength, 0.999))). With a latent mode, img2img from the upscaled first-pass latents instead. The
tiny model and picture are tests/engine/conftest.py's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from esrgan_files import rrdb_weights, write_model

import sd_core
from sd_core import hires, images, modes, upscalers
from sd_core.limits import SettingError
from sd_core.pnginfo import parse_parameters
from sd_core.settings import GenerationSettings, HiresOptions
from sd_core.upscalers import latent

SEED, STEPS = 7, 3
BASE = dict(width=64, height=64, steps=STEPS, seed=SEED)


def pixels(img) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


def resolved(options: HiresOptions, **kw) -> GenerationSettings:
    return GenerationSettings(prompt="a cat", hires=options, **{**BASE, **kw}).resolve(
        "txt2img", sd_core.ModelDefaults()
    )


def first_pass_latents(pipe, s: GenerationSettings) -> torch.Tensor:
    """The first pass as hires runs it: txt2img's latents, before decoding."""
    text = pipe.encode_prompt(s.prompt, s.negative_prompt, s.clip_skip)
    return modes._txt2img(pipe, s, text, modes._generators(s), None)


# --- the acceptance equalities -----------------------------------------------------------------------------------

SECOND_PASS_OPTIONS = {
    "inherited": {},
    "own prompts, sampler, schedule": dict(
        prompt="a dog", negative_prompt="blurry", sampler="Euler a", schedule="karras"
    ),
}


@pytest.fixture(scope="module")
def esrgan(tmp_path_factory) -> upscalers.Upscaler:
    """A tiny random-weight 2x ESRGAN-family model file, as a model upscaler."""
    path = write_model(tmp_path_factory.mktemp("ESRGAN") / "2x_tiny.safetensors", rrdb_weights(2))
    return upscalers.model_upscaler(path)


@pytest.mark.parametrize("upscaler", ["Lanczos", "Nearest", "None", "model"])
@pytest.mark.parametrize("own", SECOND_PASS_OPTIONS)
def test_hires_with_a_pixel_upscaler_is_img2img_of_the_upscaled_first_pass(sd1, esrgan, upscaler, own):
    upscaler = esrgan if upscaler == "model" else upscaler
    options = HiresOptions(scale=2, upscaler=upscaler, steps=2, strength=0.6, **SECOND_PASS_OPTIONS[own])
    [image] = sd1.txt2img("a cat", hires=options, **BASE)
    [first] = sd1.txt2img("a cat", **BASE)
    upscaled = upscalers.resize(first, 128, 128, upscaler)
    extra = SECOND_PASS_OPTIONS[own]
    second = dict(
        prompt=extra.get("prompt", "a cat"),
        negative_prompt=extra.get("negative_prompt", ""),
        sampler=extra.get("sampler", "Euler"),
        schedule=extra.get("schedule"),
        width=128,
        height=128,
        steps=2,
        seed=SEED,
        strength=0.6,
        fixed_steps=True,
    )  # the same settings: the first pass's (CFG scale: the model's in both) with the second pass's own
    [expected] = sd1.generate(GenerationSettings(**second), upscaled)
    assert image.size == (128, 128)
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    assert parse_parameters(image.info["parameters"])["Hires upscaler"] == options.upscaler_name
    s = resolved(options)
    same = GenerationSettings(**second, cfg_scale=s.cfg_scale).resolve("img2img", sd1.defaults, (128, 128))
    # resolving draws a random variation seed where none is given (unused at strength 0): compare it as the same
    assert hires.second_pass(s) == dataclasses.replace(same, subseed=s.subseed)


def test_a_seamless_hires_with_a_tiled_second_pass_is_tiled_img2img_of_the_wrapped_upscale(sd1):
    """Acceptance 3's large-texture path, small: tiling "xy" and a tile smaller than the target. The enlargement sees
    across the wrap edge (`upscalers.resize(..., seamless=)`), the second pass is img2img in tiles, and the infotext
    names the tile, which the first pass (covered by the tile) did not use."""
    tile = sd_core.TileOptions(64, 64, overlap=32)
    options = HiresOptions(scale=2, upscaler="Lanczos", steps=2, strength=0.6)
    [image] = sd1.txt2img("a cat", hires=options, tiling="xy", tile=tile, **BASE)
    [first] = sd1.txt2img("a cat", tiling="xy", **BASE)
    upscaled = upscalers.resize(first, 128, 128, "Lanczos", seamless="xy")
    second = dict(width=128, height=128, steps=2, seed=SEED, strength=0.6, fixed_steps=True, tiling="xy", tile=tile)
    [expected] = sd1.img2img(upscaled, "a cat", **second)
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    params = parse_parameters(image.info["parameters"])
    assert (params["Tile size"], params["Tile overlap"], params["Tiling"]) == ("64x64", "32", "xy")
    [plain] = sd1.txt2img("a cat", hires=options, tiling="xy", **BASE)
    assert not np.array_equal(np.asarray(plain), np.asarray(image))  # the tiles made a difference


@pytest.mark.parametrize("mode", list(latent.LATENT_MODES))
def test_hires_with_a_latent_mode_is_img2img_from_the_upscaled_first_pass_latents(sd1, mode):
    options = HiresOptions(upscaler=mode, steps=2)
    [image] = sd1.txt2img("a cat", hires=options, **BASE)
    s = resolved(options, cfg_scale=sd1.defaults.cfg_scale)
    second = hires.second_pass(s)
    init = latent.upscale_latents(first_pass_latents(sd1, s), 16, 16, mode)
    text = sd1.encode_prompt("a cat", "", 1)
    expected = sd1.decode_latents(modes.img2img_latents(sd1, second, init, text, modes._generators(second), None))
    assert image.size == (128, 128)
    assert np.array_equal(np.asarray(image), np.asarray(expected[0]))


def test_strength_zero_is_the_upscaled_first_pass_unsampled(sd1):
    """A1111's second pass at denoising strength 0 has an empty schedule: the image is the upscaled latents decoded."""
    options = HiresOptions(upscaler="Latent (bicubic)", strength=0)
    seen = []
    [image] = sd1.txt2img("a cat", hires=options, callback=lambda info: seen.append(info.phase), **BASE)
    s = resolved(options, cfg_scale=sd1.defaults.cfg_scale)
    init = latent.upscale_latents(first_pass_latents(sd1, s), 16, 16, "Latent (bicubic)")
    assert np.array_equal(np.asarray(image), np.asarray(sd1.decode_latents(init)[0]))
    assert set(seen) == {1} and parse_parameters(image.info["parameters"])["Denoising strength"] == "0"


def test_the_second_pass_runs_exactly_its_steps_on_a1111_s_schedule(sd1):
    """A1111's hires step rule: the hires steps (or the first pass's) are the last of a longer schedule."""
    seen: list = []
    options = HiresOptions(steps=4, strength=0.7)
    sd1.txt2img("a cat", hires=options, callback=lambda i: seen.append((i.phase, i.phases, i.step, i.total)), **BASE)
    assert seen == [(1, 2, k, STEPS) for k in (1, 2, 3)] + [(2, 2, k, 4) for k in (1, 2, 3, 4)]
    second = hires.second_pass(resolved(options))
    assert second.denoising_steps() == (int(4 / 0.7), 4) == (5, 4)
    seen.clear()
    sd1.txt2img("a cat", hires=HiresOptions(strength=1.0), callback=lambda i: seen.append((i.phase, i.total)), **BASE)
    assert seen == [(1, STEPS)] * STEPS + [(2, STEPS)] * STEPS  # steps left out: the first pass's


def test_the_prompts_are_encoded_again_only_when_they_change(sd1, monkeypatch):
    calls: list = []
    encode = sd1.encode_prompt
    monkeypatch.setattr(sd1, "encode_prompt", lambda *a, **kw: calls.append(a) or encode(*a, **kw))
    sd1.txt2img("a cat", hires=HiresOptions(steps=1), **BASE)
    assert calls == [("a cat", "", 1, None)]
    calls.clear()
    sd1.txt2img("a cat", clip_skip=2, hires=HiresOptions(steps=1, negative_prompt="blurry"), **BASE)
    assert calls == [("a cat", "", 2, None), ("a cat", "blurry", 2, None)]


# --- sizes -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, first, upscale, target",
    [
        (HiresOptions(), (64, 64), (128, 128), (128, 128)),
        (HiresOptions(scale=1.5), (64, 96), (96, 144), (96, 144)),
        (HiresOptions(scale=1.3), (64, 64), (83, 83), (80, 80)),  # int(64 * 1.3), floored to a multiple of 8
        (HiresOptions(scale=3, width=128), (64, 96), (128, 192), (128, 192)),  # the scale is not used
        (HiresOptions(width=200), (64, 96), (200, 300), (200, 296)),
        (HiresOptions(height=128), (96, 64), (192, 128), (192, 128)),
        (HiresOptions(width=0, height=128), (96, 72), (170, 128), (168, 128)),  # 0: not given, as in A1111
        (HiresOptions(width=128, height=96), (64, 64), (128, 128), (128, 96)),  # cover, then the centre
        (HiresOptions(width=128, height=128), (96, 64), (192, 128), (128, 128)),
    ],
)
def test_target_sizes_follow_a1111(options, first, upscale, target):
    assert options.upscale_size(*first) == upscale
    assert options.target_size(*first) == target


def test_both_sides_crop_the_centre_of_the_covering_upscale(sd1):
    options = HiresOptions(width=128, height=96, upscaler="Latent (nearest)", steps=1)
    [image] = sd1.txt2img("a cat", hires=options, **BASE)
    assert image.size == (128, 96)
    s = resolved(options, cfg_scale=sd1.defaults.cfg_scale)
    second = hires.second_pass(s)
    covering = latent.upscale_latents(first_pass_latents(sd1, s), 16, 16, "Latent (nearest)")
    init = covering[..., 2:14, :]  # 4 latent rows too many: 2 off the top, 2 off the bottom
    text = sd1.encode_prompt("a cat", "", 1)
    expected = sd1.decode_latents(modes.img2img_latents(sd1, second, init, text, modes._generators(second), None))
    assert np.array_equal(np.asarray(image), np.asarray(expected[0]))
    assert hires.centre(torch.zeros(1, 4, 17, 20), 12, 16).shape[-2:] == (12, 16)
    cut = hires.centre(torch.arange(7.0).view(1, 1, 1, 7), 1, 4)
    assert cut.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]  # the odd column comes off the right


def test_a_target_outside_the_size_limits_names_the_hires_setting():
    with pytest.raises(SettingError) as caught:
        HiresOptions(scale=0.1).target_size(64, 64)  # 6x6: below 8
    assert caught.value.setting == "hires_scale"
    with pytest.raises(SettingError) as caught:
        HiresOptions(height=8192).target_size(512, 64)  # 65536 wide
    assert caught.value.setting == "hires_height"
    with pytest.raises(SettingError) as caught:
        hires.second_pass(resolved(HiresOptions(scale=16), width=1024))
    assert caught.value.setting == "hires_scale"


# --- settings ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value",
    [
        ("scale", 0),
        ("scale", 17),
        ("width", 100),
        ("height", 4),
        ("upscaler", "No such upscaler"),
        ("upscaler", "2x_tiny"),  # a model's name: its upscalers.Upscaler (from the caller's folders) is needed
        ("upscaler", 4),
        ("steps", -1),
        ("strength", -0.1),
        ("strength", 1.5),
        ("prompt", 3),
        ("sampler", "No such sampler"),
        ("schedule", "no such schedule"),
    ],
)
def test_a_bad_hires_option_is_an_error_naming_it(name, value):
    with pytest.raises(SettingError) as caught:
        HiresOptions(**{name: value})
    assert caught.value.setting == f"hires_{name}"


def test_hires_options_normalise_zero_to_not_given():
    options = HiresOptions(width=0, height=0, steps=0)
    assert (options.width, options.height, options.steps) == (None, None, None)
    assert sd_core.HiresOptions is HiresOptions


def test_options_that_apply_to_one_mode_are_refused_elsewhere(sd1, photo, square_mask):
    with pytest.raises(SettingError) as caught:
        sd1.img2img(photo, "a cat", hires=HiresOptions(), steps=1)
    assert caught.value.setting == "hires"
    with pytest.raises(SettingError) as caught:
        sd1.txt2img("a cat", fixed_steps=True, steps=1)
    assert caught.value.setting == "fixed_steps"
    for call in (
        lambda: sd1.txt2img("a cat", resize_mode="latent"),
        lambda: sd1.inpaint(photo, square_mask, "a", resize_mode="latent"),
    ):
        with pytest.raises(SettingError) as caught:
            call()
        assert caught.value.setting == "resize_mode"
    with pytest.raises(SettingError) as caught:
        GenerationSettings(hires={"scale": 2})
    assert caught.value.setting == "hires"
    with pytest.raises(SettingError) as caught:
        GenerationSettings(resize_mode="crop-ish")
    assert caught.value.setting == "resize_mode"


def test_the_img2img_step_rules():
    diffusers = GenerationSettings(steps=20, strength=0.75)
    fixed = GenerationSettings(steps=20, strength=0.75, fixed_steps=True)
    assert diffusers.denoising_steps() == (20, 15)
    assert fixed.denoising_steps() == (26, 20)
    assert GenerationSettings(steps=20, strength=1.0, fixed_steps=True).denoising_steps() == (20, 20)
    assert GenerationSettings(steps=20).denoising_steps() == (20, 20)
    with pytest.raises(SettingError) as caught:  # a schedule longer than the model's timesteps
        GenerationSettings(steps=100, strength=0.05, fixed_steps=True)
    assert caught.value.setting == "strength"
    with pytest.raises(SettingError) as caught:
        hires.second_pass(resolved(HiresOptions(steps=100, strength=0.05)))
    assert caught.value.setting == "hires_strength"


def test_fixed_steps_img2img_walks_the_end_of_the_longer_schedule(sd1, photo):
    sigmas: list = []
    sd1.img2img(photo, "a cat", strength=0.5, steps=2, fixed_steps=True, callback=lambda i: sigmas.append(i.sigma))
    expected = sd_core.samplers.resolve("euler").sigmas(4, sd1.noise_schedule)[2:4]
    assert torch.allclose(torch.tensor(sigmas), expected)


# --- infotext ----------------------------------------------------------------------------------------------------


def test_the_infotext_has_a1111_s_hires_fields_in_a1111_s_order(sd1):
    [image] = sd1.txt2img("a cat", hires=HiresOptions(), **BASE)
    params = parse_parameters(image.info["parameters"])
    keys = list(params)
    assert params["Size"] == "64x64"  # A1111's Size is the first pass's
    assert params["Denoising strength"] == "0.75" and params["Hires upscale"] == "2.0"
    assert params["Hires upscaler"] == "Latent"
    assert keys.index("Model") < keys.index("Denoising strength") < keys.index("Hires upscale")
    assert keys.index("Hires upscale") < keys.index("Hires upscaler")
    for absent in ("Hires steps", "Hires resize", "Hires sampler", "Hires prompt", "Hires schedule type"):
        assert absent not in params

    options = HiresOptions(
        width=128,
        steps=2,
        strength=0.5,
        upscaler="Nearest",
        prompt="a dog, running",
        negative_prompt="blurry",
        sampler="DPM++ 2M",
        schedule="karras",
    )
    [image] = sd1.txt2img("a cat", hires=options, **BASE)
    params = parse_parameters(image.info["parameters"])
    hires_keys = [k for k in params if k.startswith("Hires") or k == "Denoising strength"]
    assert hires_keys == [
        "Denoising strength",
        "Hires sampler",
        "Hires prompt",
        "Hires negative prompt",
        "Hires schedule type",
        "Hires resize",
        "Hires steps",
        "Hires upscaler",
    ]
    assert params["Hires sampler"] == "DPM++ 2M" and params["Hires schedule type"] == "Karras"
    assert params["Hires prompt"] == "a dog, running" and params["Hires negative prompt"] == "blurry"
    assert params["Hires resize"] == "128x0" and params["Hires steps"] == "2" and params["Denoising strength"] == "0.5"
    assert params["Hires upscaler"] == "Nearest"


def test_the_second_pass_inherits_the_schedule_as_a1111():
    """A hires sampler without a schedule keeps the first pass's schedule, or its own default when the first pass
    used its sampler's default ("Automatic")."""
    karras = hires.second_pass(resolved(HiresOptions(sampler="DPM++ 2M"), sampler="Euler", schedule="karras"))
    assert (karras.sampler, karras.schedule) == ("dpmpp_2m", "karras")
    automatic = hires.second_pass(resolved(HiresOptions(sampler="Euler"), sampler="DDIM"))
    assert (automatic.sampler, automatic.choice.schedule_label) == ("euler", "Automatic")
    same = hires.second_pass(resolved(HiresOptions(schedule="exponential"), sampler="Euler a"))
    assert (same.sampler, same.schedule) == ("euler_ancestral", "exponential")


# --- batches, interrupts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_each_image_of_a_hires_batch_is_made_again_alone_from_its_seed(sd1, upscaler):
    options = HiresOptions(upscaler=upscaler, steps=2, sampler="Euler a")  # draws noise at every step
    batch = sd1.txt2img("a cat", hires=options, **{**BASE, "batch_size": 2})
    assert [img.info["seed"] for img in batch] == [SEED, SEED + 1]
    for k, img in enumerate(batch):
        [alone] = sd1.txt2img("a cat", hires=options, **{**BASE, "seed": SEED + k})
        assert f"Seed: {SEED + k}" in img.info["parameters"]
        assert np.abs(pixels(alone) - pixels(img)).mean() < 1.0
    assert np.abs(pixels(batch[1]) - pixels(batch[0])).mean() > 1.0


def interrupt_at(phase: int, step: int, seen: list):
    def callback(info: sd_core.StepInfo) -> None:
        seen.append((info.phase, info.step))
        if (info.phase, info.step) == (phase, step):
            seen.append(info.denoised.clone())
            raise sd_core.Interrupted

    return callback


def test_an_interrupt_in_the_first_pass_returns_the_first_pass_s_image(sd1):
    seen: list = []
    [image] = sd1.txt2img("a cat", hires=HiresOptions(steps=2), callback=interrupt_at(1, 2, seen), **BASE)
    assert seen[:2] == [(1, 1), (1, 2)] and len(seen) == 3, "no second pass"
    assert image.size == (64, 64) and image.info["interrupted"] is True
    assert np.array_equal(np.asarray(image), np.asarray(sd1.decode_latents(seen[2])[0]))
    assert "Hires upscale: 2.0" in image.info["parameters"]


def test_an_interrupt_in_the_second_pass_returns_its_estimate(sd1):
    seen: list = []
    [image] = sd1.txt2img("a cat", hires=HiresOptions(steps=2), callback=interrupt_at(2, 1, seen), **BASE)
    assert seen[:4] == [(1, 1), (1, 2), (1, 3), (2, 1)] and len(seen) == 5
    assert image.size == (128, 128) and image.info["interrupted"] is True
    assert np.array_equal(np.asarray(image), np.asarray(sd1.decode_latents(seen[4])[0]))


def test_cancelled_in_the_second_pass_still_aborts(sd1):
    def cancel(info: sd_core.StepInfo) -> None:
        if info.phase == 2:
            raise sd_core.Cancelled

    with pytest.raises(sd_core.Cancelled):
        sd1.txt2img("a cat", hires=HiresOptions(steps=1), callback=cancel, **BASE)


# --- img2img's resize_mode "latent" -------------------------------------------------------------------------------


def test_latent_resize_encodes_at_the_image_s_size_and_resizes_the_latents(sd1, photo):
    wide = photo.resize((100, 60))  # its own size rounded to multiples of 8: 104x64 (13x8 latents)
    kw = dict(strength=0.6, steps=3, seed=SEED, width=64, height=64)
    [image] = sd1.img2img(wide, "a cat", resize_mode="latent", **kw)
    s = GenerationSettings(prompt="a cat", resize_mode="latent", **kw).resolve("img2img", sd1.defaults, wide.size)
    generators = modes._generators(s)
    own = images.resize_rgb(np.asarray(wide), 104, 64)
    init = sd1.encode_pixels(images.image_to_tensor(own), generators, 1)
    init = latent.upscale_latents(init, 8, 8, "Latent")
    text = sd1.encode_prompt("a cat", "", 1)
    expected = sd1.decode_latents(modes.img2img_latents(sd1, s, init, text, generators, None))
    assert image.size == (64, 64) and "Denoising strength: 0.6" in image.info["parameters"]
    assert np.array_equal(np.asarray(image), np.asarray(expected[0]))
    [resized] = sd1.img2img(wide, "a cat", **kw)
    assert np.abs(pixels(resized) - pixels(image)).mean() > 1.0
