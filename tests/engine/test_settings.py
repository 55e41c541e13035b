"""`GenerationSettings`: one checked object per generation, its defaults filled in by the model (`resolve`), and the
one limits table every boundary reads."""

from __future__ import annotations

import dataclasses

import pytest
from model_fixtures import write_tiny_checkpoint

import sd_core
from sd_core import GenerationSettings, InpaintOptions, ModelDefaults, limits
from sd_core.settings import CFG_SCALE_KEY, RESOLUTION_KEY

MODEL = ModelDefaults(cfg_scale=3.0, width=64, height=96)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", 5),
        ("prompt", "x" * (limits.MAX_PROMPT_CHARS + 1)),
        ("negative_prompt", None),
        ("width", 100),
        ("width", limits.MAX_SIDE + 8),
        ("height", 4),
        ("steps", 0),
        ("steps", limits.MAX_STEPS + 1),
        ("steps", 2.5),
        ("steps", True),
        ("sampler", "Eulr"),
        ("sampler", None),
        ("schedule", "karrass"),
        ("cfg_scale", float("nan")),
        ("cfg_scale", limits.MAX_CFG_SCALE + 1),
        ("seed", -2),
        ("seed", limits.MAX_SEED + 1),
        ("batch_size", 0),
        ("batch_size", limits.MAX_BATCH + 1),
        ("clip_skip", 0),
        ("clip_skip", limits.MAX_CLIP_SKIP + 1),
        ("tiling", "z"),
        ("strength", 0.0),
        ("strength", 1.5),
    ],
)
def test_a_bad_setting_is_an_error_naming_it(field, value):
    with pytest.raises(limits.SettingError) as err:
        GenerationSettings(**{field: value})
    assert err.value.setting == field and field.split("_")[0] in str(err.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("mask_blur", -1), ("padding", -1), ("fill", "grey"), ("only_masked", "yes"), ("color_match", 1)],
)
def test_a_bad_inpaint_option_is_an_error_naming_it(field, value):
    with pytest.raises(limits.SettingError) as err:
        InpaintOptions(**{field: value})
    assert err.value.setting == field


def test_sampler_and_schedule_are_resolved_once_to_canonical_names():
    s = GenerationSettings(sampler="DPM++ 2M Karras")
    assert (s.sampler, s.schedule, s.choice.label, s.choice.schedule_label) == (
        "dpmpp_2m",
        "karras",
        "DPM++ 2M",
        "Karras",
    )
    for automatic in (None, "", "Automatic", "auto", "default"):
        s = GenerationSettings(sampler="DDIM", schedule=automatic)
        assert s.schedule == "discrete" and s.choice.schedule_label == "Automatic"
    assert GenerationSettings(sampler="euler_a", schedule="Karras").schedule == "karras"
    assert dataclasses.replace(GenerationSettings(sampler="Euler a"), steps=3).sampler == "euler_ancestral"


def test_tiling_and_seed_are_normalised():
    assert GenerationSettings(tiling=True).tiling == "xy" and GenerationSettings(tiling="YX").tiling == "xy"
    assert GenerationSettings(tiling=False).tiling is None
    assert GenerationSettings(seed=-1).seed is None and GenerationSettings(seed=limits.MAX_SEED).seed == limits.MAX_SEED


def test_resolve_fills_in_the_models_defaults():
    s = GenerationSettings(prompt="x").resolve("txt2img", MODEL)
    assert (s.cfg_scale, s.width, s.height, s.strength) == (3.0, 64, 96, None)
    assert 0 <= s.seed < limits.RANDOM_SEED_RANGE
    given = GenerationSettings(cfg_scale=5, width=128, height=128, seed=7).resolve("txt2img", MODEL)
    assert (given.cfg_scale, given.width, given.height, given.seed) == (5, 128, 128, 7)


def test_resolve_takes_the_image_size_for_img2img_and_whole_picture_inpainting():
    s = GenerationSettings().resolve("img2img", MODEL, (100, 37))
    assert (s.width, s.height, s.strength) == (104, 40, 0.75)  # nearest multiples of 8 (at least 8)
    s = GenerationSettings().resolve("inpaint", MODEL, (100, 200))
    assert (s.width, s.height, s.strength, s.inpaint) == (104, 200, 1.0, InpaintOptions())
    only = GenerationSettings(inpaint=InpaintOptions(only_masked=True)).resolve("inpaint", MODEL, (100, 200))
    assert (only.width, only.height) == (64, 96)  # the crop is worked on at the model's native size


def test_settings_that_do_not_apply_to_the_mode_are_refused():
    with pytest.raises(limits.SettingError, match="strength"):
        GenerationSettings(strength=0.5).resolve("txt2img", MODEL)
    with pytest.raises(limits.SettingError, match="inpaint"):
        GenerationSettings(inpaint=InpaintOptions()).resolve("img2img", MODEL, (64, 64))
    with pytest.raises(ValueError, match="needs an input image"):
        GenerationSettings().resolve("img2img", MODEL)


# --- the CFG rule at the Python API: the model's own default wherever the caller gives none ----------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny checkpoint without metadata, and the same weights naming their own CFG scale and native size."""
    from sd_core.checkpoint import read_state_dict, write_safetensors

    folder = tmp_path_factory.mktemp("settings")
    plain = write_tiny_checkpoint(folder / "plain.safetensors", seed=2)
    named = folder / "named.safetensors"
    write_safetensors(named, read_state_dict(plain), {CFG_SCALE_KEY: "4.5", RESOLUTION_KEY: "72x64"})
    return plain, named


def test_the_api_takes_the_models_own_cfg_scale_and_size(models):
    plain, named = (sd_core.load(path, device="cpu", dtype="fp32") for path in models)
    assert plain.defaults == ModelDefaults(7.5, 512, 512, ((512, 512), (768, 512), (512, 768)))
    assert named.defaults == ModelDefaults(4.5, 72, 64, ((72, 64), (104, 64), (72, 96)))
    img = named.txt2img("a cat", steps=1, seed=1)[0]
    assert img.size == (72, 64) and "CFG scale: 4.5" in img.info["parameters"]
    img = plain.txt2img("a cat", width=64, height=64, steps=1, seed=1)[0]
    assert "CFG scale: 7.5" in img.info["parameters"]
    settings = GenerationSettings(prompt="a cat", steps=1, seed=1, cfg_scale=2)
    assert "CFG scale: 2," in named.generate(settings)[0].info["parameters"]


def test_the_built_in_model_names_its_cfg_and_native_size():
    info = sd_core.inspect_model(sd_core.builtin_model())
    assert info.defaults == ModelDefaults(3.0, 64, 64, ((64, 64), (96, 64), (64, 96)))


def test_a_bad_native_size_in_metadata_names_the_key(models, tmp_path):
    from sd_core.checkpoint import CheckpointError, read_state_dict, write_safetensors

    bad = tmp_path / "bad.safetensors"
    write_safetensors(bad, read_state_dict(models[0]), {RESOLUTION_KEY: "60"})
    with pytest.raises(CheckpointError, match=RESOLUTION_KEY):
        sd_core.inspect_model(bad)
