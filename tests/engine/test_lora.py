"""LoRA behaviour beyond parity: the layer names, exact restore (acceptance 3), the speed levers, every mode, the
tags, and bad inputs (acceptance 6: each a clear error naming the file or the name, the model left as it was)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from lora_files import kohya_lora, save
from model_fixtures import _cached_folder, write_tiny_checkpoint

import sd_core
from sd_core import limits
from sd_core.diffusers_keys import unet_key_map
from sd_core.lora.files import LoraError
from sd_core.lora.keys import ldm_to_diffusers_unet
from sd_core.lora.tags import LoraTag, parse_tag, split_tags
from sd_core.model_config import SD2_UNET, SD15_UNET
from sd_core.models.unet import UNetModel

KW = dict(width=64, height=64, steps=4, sampler="euler", cfg_scale=7.5, seed=3)


@pytest.fixture(scope="module")
def reference_parts():
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        str(_cached_folder(0, False, False)), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, reference_parts):
    d = tmp_path_factory.mktemp("loras")
    save(d / "style.safetensors", kohya_lora(reference_parts.unet, reference_parts.text_encoder, seed=1))
    return d


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")


@pytest.fixture(scope="module")
def pipe(checkpoint, lora_dir):
    return sd_core.load(checkpoint, device="cpu", dtype=torch.float32, lora_dirs=[lora_dir])


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(img) for img in images])


# --- names -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [SD15_UNET, SD2_UNET], ids=["sd15", "sd2"])
def test_every_layer_has_its_diffusers_name(config):
    """The inverse of the folder reader's diffusers -> LDM renaming, for every weight of the SD1.5/SD2 UNets."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        ours = UNetModel(config)
        theirs = UNet2DConditionModel(
            cross_attention_dim=config["context_dim"],
            attention_head_dim=8 if config["num_heads"] == 8 else [5, 10, 20, 20],
            use_linear_projection=config["use_linear_in_transformer"],
        )
    to_ldm = unet_key_map(theirs.state_dict().keys(), theirs.config)
    expected = {ldm.removeprefix("model.diffusion_model."): key for key, ldm in to_ldm.items()}
    for key in ours.state_dict():
        layer, _, kind = key.rpartition(".")
        assert f"{ldm_to_diffusers_unet(layer, ours.config)}.{kind}" == expected[key], key


# --- restore, levers, modes ----------------------------------------------------------------------------------------


def test_run_after_a_lora_is_byte_identical_to_a_fresh_model(pipe, checkpoint):
    """Acceptance 3: packed CPU layers (the default levers) repack the merged weights, and removing the LoRA puts
    back the original tensors."""
    pipe.txt2img("a wall <lora:style:0.8>", **KW)
    after = pixels(pipe.txt2img("a wall", **KW))
    fresh = sd_core.load(checkpoint, device="cpu", dtype=torch.float32)
    assert np.array_equal(after, pixels(fresh.txt2img("a wall", **KW)))


def test_restore_puts_back_the_same_tensors(pipe):
    before = {name: p for name, p in pipe.unet.named_parameters()}
    pipe.txt2img("a wall <lora:style:1>", **KW)
    assert pipe.extra_networks.patcher.patched_layers > 0
    pipe.txt2img("a wall", **KW)
    assert all(p is before[name] for name, p in pipe.unet.named_parameters())


def test_same_loras_again_are_not_merged_again(pipe):
    pipe.txt2img("a wall <lora:style:1>", **KW)
    weights = [p for p in pipe.unet.parameters()]
    pipe.txt2img("another wall <lora:style:1>", **KW)
    assert all(a is b for a, b in zip(weights, pipe.unet.parameters(), strict=True))


def test_bfloat16_restores_exactly(checkpoint, lora_dir):
    pipe = sd_core.load(checkpoint, device="cpu", dtype=torch.bfloat16, lora_dirs=[lora_dir])
    plain = pixels(pipe.txt2img("a wall", **KW))
    assert not np.array_equal(plain, pixels(pipe.txt2img("a wall <lora:style:1>", **KW)))
    assert np.array_equal(plain, pixels(pipe.txt2img("a wall", **KW)))


def test_unpacked_model_gives_the_packed_models_image(checkpoint, lora_dir, pipe):
    plain = sd_core.load(checkpoint, device="cpu", dtype=torch.float32, lora_dirs=[lora_dir], optimize=False)
    a, b = pixels(plain.txt2img("a wall <lora:style:1>", **KW)), pixels(pipe.txt2img("a wall <lora:style:1>", **KW))
    assert np.abs(a.astype(float) - b).mean() < 0.5


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_loras_argument_in_other_modes(pipe, mode):
    image = np.full((64, 64, 3), 120, np.uint8)
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1
    args = (image,) if mode == "img2img" else (image, mask)
    run = getattr(pipe, mode)
    plain = pixels(run(*args, "a wall", **KW))
    with_lora = run(*args, "a wall", loras={"style": 1.0}, **KW)
    assert np.abs(pixels(with_lora).astype(float) - plain).mean() > 1.0
    assert "<lora:style:1>" in with_lora[0].info["parameters"].splitlines()[0]
    assert 'Lora hashes: "style: ' in with_lora[0].info["parameters"]


def test_hires_prompt_tags_apply_to_the_second_pass(pipe):
    hires = sd_core.HiresOptions(scale=1.5, strength=0.5, prompt="a wall <lora:style:1>")
    plain = pixels(pipe.txt2img("a wall", hires=sd_core.HiresOptions(scale=1.5, strength=0.5), **KW))
    tagged = pipe.txt2img("a wall", hires=hires, **KW)
    assert np.abs(pixels(tagged).astype(float) - plain).mean() > 1.0
    assert "Lora hashes" in tagged[0].info["parameters"]


def test_a_compiled_unet_refuses_loras(checkpoint, lora_dir):
    """torch.compile freezes the weights into its graphs: a LoRA would silently not apply, so it is refused."""
    pipe = sd_core.load(checkpoint, device="cpu", dtype=torch.float32, lora_dirs=[lora_dir])
    pipe.accel.compiled_unet = pipe.unet  # stands for the compiled module: only its presence counts
    with pytest.raises(LoraError, match="torch.compile"):
        pipe.txt2img("a wall <lora:style:1>", **KW)
    assert pipe.extra_networks.patcher.patched_layers == 0


@pytest.mark.parametrize(
    ("loras", "why"),
    [({"style": "much"}, "not a number"), ({"style": float("nan")}, "finite"), ({"": 1.0}, "not a LoRA name"),
     ("style", "mapping"), ({"style": 1e9}, "at most")],
)  # fmt: skip
def test_loras_setting_is_checked(loras, why):
    with pytest.raises(limits.SettingError, match=why) as caught:
        sd_core.GenerationSettings(prompt="x", loras=loras)
    assert caught.value.setting == "loras"


@pytest.mark.cuda
@pytest.mark.parametrize("low_vram", [False, True], ids=["cuda-graphs", "low-vram"])
def test_cuda_levers_apply_and_restore_exactly(checkpoint, lora_dir, low_vram):
    """On a GPU the default levers (channels_last, CUDA graphs) or low-VRAM offloading see the merged weights, and a
    run after the LoRA is removed is byte-identical to one before (benchmarks/gpu_check.sh runs the cuda tests)."""
    pipe = sd_core.load(checkpoint, device="cuda", dtype="fp16", lora_dirs=[lora_dir], low_vram=low_vram)
    plain = pixels(pipe.txt2img("a wall", **KW))
    assert not np.array_equal(plain, pixels(pipe.txt2img("a wall <lora:style:1>", **KW)))
    assert np.array_equal(plain, pixels(pipe.txt2img("a wall", **KW)))


# --- tags ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "tag"),
    [
        ("style", LoraTag("style", 1.0, 1.0)),
        ("style:0.6", LoraTag("style", 0.6, 0.6)),
        ("style:0.3:1.2", LoraTag("style", 0.3, 1.2)),
        ("style:0.5:unet=0.1", LoraTag("style", 0.5, 0.1)),
        ("style:unet=0.2", LoraTag("style", 1.0, 0.2)),
        ("style:te=0.5", LoraTag("style", 0.5, 0.5)),  # the UNet's default is the text encoder's
        ("style:-1", LoraTag("style", -1.0, -1.0)),
    ],
)
def test_tag_weights_in_a1111s_order(body, tag):
    assert parse_tag(body) == tag


def test_tags_leave_the_prompt():
    assert split_tags("a wall, <lora:style:0.5> bricks <lyco:x:1>") == (
        "a wall,  bricks ",
        [LoraTag("style", 0.5, 0.5), LoraTag("x", 1.0, 1.0)],
    )


def test_negative_prompt_tags_stay_text(pipe):
    """A1111 applies only the positive prompt's tags: in the negative prompt the tag is text."""
    tagged = pipe.encode_prompt("a wall", "blurry <lora:style:1>")[1]
    assert not torch.equal(tagged, pipe.encode_prompt("a wall", "blurry")[1])


# --- bad inputs (acceptance 6) ----------------------------------------------------------------------------------


@pytest.fixture
def untouched(pipe):
    """Checks after the test that the model's weights are those of the base model (no LoRA in force)."""
    pipe.txt2img("a wall", **KW)  # no LoRA in force
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    text = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    yield
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
    assert all(torch.equal(v, text[k]) for k, v in pipe.text_encoder.state_dict().items())


def expect_error(pipe, prompt: str, *words: str, error: type = LoraError):
    with pytest.raises(error) as caught:
        pipe.txt2img(prompt, **KW)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("text_encoder", [True, False], ids=["unet-and-te", "unet-only"])
def test_sdxl_lora_on_sd1(pipe, lora_dir, untouched, text_encoder):
    tensors = {
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 640),
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(640, 4),
    }
    if text_encoder:
        tensors["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 768)
        tensors["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(3072, 4)
    save(lora_dir / "xl.safetensors", tensors)
    expect_error(pipe, "a wall <lora:xl:1>", "xl.safetensors", "SDXL", "SD1")


def test_sd2_sized_lora_on_sd1(pipe, lora_dir, untouched):
    """Same layer names as SD1, other widths: refused with the layer named, not applied."""
    stem = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    save(lora_dir / "wide.safetensors", {
        f"{stem}.lora_down.weight": torch.zeros(4, 1024), f"{stem}.lora_up.weight": torch.zeros(4096, 4),
    })  # fmt: skip
    expect_error(pipe, "a wall <lora:wide:1>", "wide.safetensors", stem, "another model family")


def test_file_without_lora_keys(pipe, lora_dir, untouched):
    save(lora_dir / "model.safetensors", {"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)})
    expect_error(pipe, "a wall <lora:model:1>", "model.safetensors", "no LoRA layer")


def test_truncated_file(pipe, lora_dir, untouched):
    whole = (lora_dir / "style.safetensors").read_bytes()
    (lora_dir / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    expect_error(pipe, "a wall <lora:cut:1>", "cut.safetensors", "truncated")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_that_would_run_code(pipe, lora_dir, untouched, capsys):
    with open(lora_dir / "evil.pt", "wb") as f:
        pickle.dump({"lora_unet_conv_in.lora_down.weight": _RunsCode()}, f)
    expect_error(pipe, "a wall <lora:evil:1>", "evil.pt", "code")
    assert "this must never run" not in capsys.readouterr().out


def test_unknown_lora_name(pipe, untouched):
    expect_error(pipe, "a wall <lora:nosuch:1>", "'nosuch'", "LoRA folders")


def test_sd1_lora_on_sdxl_is_refused_naming_the_family(lora_dir):
    """An SD1 kohya file asked of an SDXL model is an error naming the file and both families, not ignored;
    generations without it are untouched."""
    from sdxl_fixtures import sdxl_folder

    pipe = sd_core.load(sdxl_folder(0), device="cpu", dtype=torch.float32, lora_dirs=[lora_dir])
    with pytest.raises(LoraError, match=r"style\.safetensors: a LoRA for SD1/SD2; this model is SDXL"):
        pipe.txt2img("a wall <lora:style:1>", **KW)
    assert pipe.txt2img("a wall", **KW)[0].size == (64, 64)


@pytest.mark.parametrize("name", ["../style", "/etc/passwd", "sub/style", "..", "..\\style"])
def test_names_that_are_paths_are_refused(pipe, untouched, name):
    expect_error(pipe, f"a wall <lora:{name}:1>", "not a plain name", error=limits.SettingError)


def test_unsupported_kind_is_refused(pipe, lora_dir, untouched):
    stem = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save(lora_dir / "dora.safetensors", {
        f"{stem}.lora_down.weight": torch.zeros(4, 32, 1, 1), f"{stem}.lora_up.weight": torch.zeros(32, 4, 1, 1),
        f"{stem}.dora_scale": torch.ones(1, 32, 1, 1),
    })  # fmt: skip
    expect_error(pipe, "a wall <lora:dora:1>", "dora.safetensors", "DoRA")


def test_partial_match_is_applied_and_reported(pipe, lora_dir, caplog):
    stem = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save(lora_dir / "part.safetensors", {
        f"{stem}.lora_down.weight": torch.ones(4, 32, 1, 1), f"{stem}.lora_up.weight": torch.ones(32, 4, 1, 1),
        "lora_unet_down_blocks_7_resnets_0_conv1.lora_down.weight": torch.ones(4, 32, 3, 3),
        "lora_unet_down_blocks_7_resnets_0_conv1.lora_up.weight": torch.ones(32, 4, 1, 1),
    })  # fmt: skip
    with caplog.at_level("WARNING"):
        pipe.txt2img("a wall <lora:part:0.01>", **KW)
    assert "part.safetensors: 1 layers patched, 1 keys match no layer" in caplog.text
    assert pipe.extra_networks.patcher.patched_layers == 1
