"""SDXL LoRAs give diffusers' images (`StableDiffusionXLPipeline.load_lora_weights`, the PEFT backend) on the tiny
random-weight SDXL model of the real layout (64-wide heads, 32 GroupNorm groups): kohya-format files over the UNet in
its LDM names (attention, feed-forward, 1x1 and 3x3 convs, the time and vector MLPs, conv_in) and both towers
(`lora_te1_` CLIP-L, `lora_te2_` bigG) with alpha != rank, at weights 1.0 and 0.6, two at once, separate te/UNet
weights, and a PEFT-format file (`unet.`, `text_encoder.`, `text_encoder_2.`, alpha in the metadata). Acceptance: mean
absolute pixel difference under 1/255. Then: the exact restore, the refiner, and files of the other family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lora_files import SDXL_UNET_TARGETS, kohya_lora, peft_lora, peft_metadata, save
from lora_parity import NEGATIVE, PROMPT, SIZE, ParityRun, assert_same
from model_fixtures import _cached_folder
from sdxl_fixtures import sdxl_folder

import sd_core
from sd_core.checkpoint import read_state_dict
from sd_core.lora.files import LoraError

RUN = ParityRun(steps=6)
ours, theirs = RUN.ours, RUN.theirs


@pytest.fixture(scope="module")
def reference():
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(str(sdxl_folder()), local_files_only=True)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, reference):
    d = tmp_path_factory.mktemp("sdxl_loras")
    unet, te1, te2 = reference.unet, reference.text_encoder, reference.text_encoder_2
    style = kohya_lora(unet, te1, seed=1, unet_endings=SDXL_UNET_TARGETS, text_encoder_2=te2)
    save(d / "style.safetensors", style)
    # UNet only, as in the SD1 parity tests: diffusers 0.42 with transformers 5 re-initialises the first adapter's
    # text-encoder weights when a second file with text-encoder layers loads
    other = kohya_lora(unet, te1, seed=2, rank=2, alpha=8.0, text_endings=("none",), text_encoder_2=te2)
    save(d / "other.safetensors", other)
    peft = peft_lora(unet, te1, seed=3, rank=4, text_encoder_2=te2)
    save(d / "peft.safetensors", peft, peft_metadata(rank=4, alpha=2.0, sdxl=True))
    return d


@pytest.fixture(scope="module")
def pipe(lora_dir):
    return sd_core.load(sdxl_folder(), device="cpu", dtype=torch.float32, lora_dirs=[lora_dir])


@pytest.fixture(scope="module")
def base(pipe, reference, lora_dir):
    mine = ours(pipe)
    assert np.abs(mine - theirs(reference, {}, lora_dir)).mean() < 1.0, "the bare models must agree first"
    return mine


def test_every_layer_of_the_kohya_file_is_patched(pipe, lora_dir):
    """All UNet layers (label_emb, time_embed, conv_in included) and both towers' layers land: nothing unmatched."""
    lora = pipe.extra_networks.lora_file(lora_dir / "style.safetensors")
    assert lora.unmatched == ()
    towers = {layer.component.attribute for layer in lora.layers}
    assert towers == {"unet", "text_encoder", "text_encoder_2"}
    paths = {layer.path for layer in lora.layers if layer.component.attribute == "unet"}
    assert {"label_emb.0.0", "label_emb.0.2", "time_embed.0", "input_blocks.0.0", "input_blocks.3.0.op"} <= paths


def test_kohya_lora_at_weight_1_matches_diffusers(pipe, reference, lora_dir, base):
    assert_same(ours(pipe, f"{PROMPT} <lora:style:1>"), theirs(reference, {"style": 1.0}, lora_dir), base)


def test_kohya_file_with_diffusers_unet_names_is_the_same_lora(pipe, reference, lora_dir):
    """SDXL files converted from diffusers' trainers name the UNet `lora_unet_down_blocks_...`: the same layers."""
    from lora_files import _ldm_names

    from_ldm = {ldm.replace(".", "_"): name.replace(".", "_") for name, ldm in _ldm_names(reference.unet).items()}
    renamed = {}
    for key, tensor in read_state_dict(lora_dir / "style.safetensors").items():
        stem, _, part = key.partition(".")
        inner = stem.removeprefix("lora_unet_")
        renamed[f"lora_unet_{from_ldm[inner]}.{part}" if stem != inner else key] = tensor
    assert any(k.startswith("lora_unet_down_blocks_1_attentions_0") for k in renamed)
    save(lora_dir / "style_diffusers_names.safetensors", renamed)
    lora = pipe.extra_networks.lora_file(lora_dir / "style_diffusers_names.safetensors")
    assert lora.unmatched == ()
    assert np.array_equal(
        ours(pipe, f"{PROMPT} <lora:style_diffusers_names:1>"), ours(pipe, f"{PROMPT} <lora:style:1>")
    )


def test_kohya_lora_at_weight_0_6_matches_diffusers(pipe, reference, lora_dir, base):
    assert_same(ours(pipe, f"{PROMPT} <lora:style:0.6>"), theirs(reference, {"style": 0.6}, lora_dir), base)


def test_two_loras_one_negative_match_diffusers(pipe, reference, lora_dir, base):
    mine = ours(pipe, f"{PROMPT} <lora:style:0.8> <lora:other:-0.5>")
    assert_same(mine, theirs(reference, {"style": 0.8, "other": -0.5}, lora_dir), base)


def test_text_encoder_and_unet_weights_match_diffusers(pipe, reference, lora_dir, base):
    """A1111's `<lora:name:te:unet>`: the te weight scales both towers; diffusers takes a weight per component."""
    mine = ours(pipe, f"{PROMPT} <lora:style:0.3:1.2>")
    weights = {"text_encoder": 0.3, "text_encoder_2": 0.3, "unet": 1.2}
    assert_same(mine, theirs(reference, {"style": weights}, lora_dir), base)


def test_peft_lora_with_alpha_in_metadata_matches_diffusers(pipe, reference, lora_dir, base):
    assert_same(ours(pipe, f"{PROMPT} <lora:peft:0.7>"), theirs(reference, {"peft": 0.7}, lora_dir), base)


def test_each_tower_takes_its_own_layers(pipe, lora_dir):
    """`lora_te1_` changes only CLIP-L's part of the context (its first 64 columns), `lora_te2_` only bigG's part and
    the pooled output: a swapped or merged tower would show here."""
    pipe.extra_networks.patcher.set([])  # the LoRAs of the tests before stay in force until a run asks otherwise
    bare = pipe.encode_prompt(PROMPT, NEGATIVE)
    width_l = pipe.config.text_encoders[0]["hidden_size"]
    stem_l = "lora_te1_text_model_encoder_layers_0_mlp_fc1"
    stem_g = "lora_te2_text_model_encoder_layers_0_mlp_fc1"
    style = read_state_dict(lora_dir / "style.safetensors")
    for stem, changed in ((stem_l, "l"), (stem_g, "g")):
        save(lora_dir / f"only_{changed}.safetensors", {k: v for k, v in style.items() if k.startswith(stem)})
        pipe.extra_networks.patcher.set([])
        pipe.txt2img(f"x <lora:only_{changed}:1>", width=SIZE, height=SIZE, steps=1)  # applies it, stays in force
        cond, _, pooled, _ = pipe.encode_prompt(PROMPT, NEGATIVE)
        pipe.extra_networks.patcher.set([])
        l_moved = not torch.equal(cond[..., :width_l], bare[0][..., :width_l])
        g_moved = not torch.equal(cond[..., width_l:], bare[0][..., width_l:])
        assert (l_moved, g_moved) == (changed == "l", changed == "g")
        assert torch.equal(pooled, bare[2]) == (changed == "l")


def test_removing_the_lora_restores_the_model_bit_exactly(pipe, lora_dir):
    fresh = sd_core.load(sdxl_folder(), device="cpu", dtype=torch.float32)
    expected = ours(fresh)
    assert not np.array_equal(ours(pipe, f"{PROMPT} <lora:style:1> <lora:peft:0.5>"), expected)
    assert np.array_equal(ours(pipe), expected)
    for network in ("unet", "text_encoder"):
        now = getattr(pipe, network).state_dict()
        for name, tensor in getattr(fresh, network).state_dict().items():
            assert torch.equal(now[name], tensor), name


def test_single_file_with_fused_openclip_qkv_takes_the_same_lora(pipe, lora_dir, tmp_path):
    """The original single file stores bigG's q/k/v fused (`attn.in_proj_weight`); sd_core splits it into three
    views at loading, and `lora_te2_..._q_proj/k_proj/v_proj` must each land on its own third: the image equals the
    folder's with the same LoRA, and removing it gives the fresh file's weights back bit for bit."""
    from sdxl_fixtures import write_sdxl_checkpoint

    single = sd_core.load(write_sdxl_checkpoint(tmp_path / "xl.safetensors"), device="cpu", dtype=torch.float32,
                          lora_dirs=[lora_dir])  # fmt: skip
    bare = {k: v.clone() for k, v in single.text_encoder.state_dict().items()}
    with_lora = ours(single, f"{PROMPT} <lora:style:1>")
    assert np.abs(with_lora - ours(pipe, f"{PROMPT} <lora:style:1>")).mean() < 0.05
    assert np.abs(with_lora - ours(pipe)).mean() > 3.0
    ours(single)
    for name, tensor in single.text_encoder.state_dict().items():
        assert torch.equal(tensor, bare[name]), name


# --- the refiner ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refiner_parts():
    from diffusers import StableDiffusionXLImg2ImgPipeline

    return StableDiffusionXLImg2ImgPipeline.from_pretrained(str(sdxl_folder(refiner=True)), local_files_only=True)


def test_refiner_takes_unet_and_bigg_layers(tmp_path, refiner_parts):
    """The refiner has one tower, bigG: `lora_te2_` and the UNet's LDM names land, all of them."""
    tensors = kohya_lora(refiner_parts.unet, None, seed=4, text_encoder_2=refiner_parts.text_encoder_2)
    save(tmp_path / "ref.safetensors", tensors)
    pipe = sd_core.load(sdxl_folder(refiner=True), device="cpu", dtype=torch.float32, lora_dirs=[tmp_path])
    lora = pipe.extra_networks.lora_file(tmp_path / "ref.safetensors")
    assert lora.unmatched == () and {layer.component.attribute for layer in lora.layers} == {"unet", "text_encoder_2"}
    before = pipe.encode_prompt(PROMPT, NEGATIVE)
    pipe.extra_networks.patcher.set([])
    pipe.txt2img("x <lora:ref:1>", width=SIZE, height=SIZE, steps=1)
    assert not torch.equal(pipe.encode_prompt(PROMPT, NEGATIVE)[0], before[0])


def test_base_lora_on_the_refiner_names_the_family(tmp_path, lora_dir):
    pipe = sd_core.load(sdxl_folder(refiner=True), device="cpu", dtype=torch.float32, lora_dirs=[lora_dir])
    with pytest.raises(LoraError, match=r"style\.safetensors: a LoRA for SDXL; this model is SDXL refiner"):
        pipe.txt2img(f"{PROMPT} <lora:style:1>", width=SIZE, height=SIZE, steps=1)


# --- the other family, both ways --------------------------------------------------------------------------------


def test_sd1_lora_on_sdxl_names_the_file_and_the_family(pipe, lora_dir):
    from diffusers import StableDiffusionPipeline

    sd1 = StableDiffusionPipeline.from_pretrained(
        str(_cached_folder(0, False, False)), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    save(lora_dir / "sd1style.safetensors", kohya_lora(sd1.unet, sd1.text_encoder, seed=5))
    fresh = ours(pipe)
    with pytest.raises(LoraError, match=r"sd1style\.safetensors: a LoRA for SD1/SD2; this model is SDXL"):
        ours(pipe, f"{PROMPT} <lora:sd1style:1>")
    assert np.array_equal(ours(pipe), fresh), "the model is left as it was"


def test_sdxl_lora_on_sd1_names_the_file_and_the_family(lora_dir):
    sd1 = sd_core.load(_cached_folder(0, False, False), device="cpu", dtype=torch.float32, lora_dirs=[lora_dir])
    with pytest.raises(LoraError, match=r"style\.safetensors: a LoRA for SDXL; this model is SD1"):
        sd1.txt2img(f"{PROMPT} <lora:style:1>", width=SIZE, height=SIZE, steps=1)
