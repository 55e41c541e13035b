"""diffusers folders -> LDM layout, checked against diffusers' own LDM->diffusers converters as the oracle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel

from sd_core.checkpoint import (
    CheckpointError,
    read_dtypes,
    read_folder_hints,
    read_shapes,
    read_state_dict,
    write_safetensors,
)
from sd_core.diffusers_keys import text_key_map, unet_key_map, vae_key_map

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TEXT = "cond_stage_model.transformer."

SD_LIKE_UNET = dict(
    sample_size=8,
    block_out_channels=(8, 16, 16),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=16,
    attention_head_dim=2,
    norm_num_groups=4,
)
DISTILLED_UNET = {**SD_LIKE_UNET, "layers_per_block": 1, "mid_block_type": None}
SD_LIKE_VAE = dict(
    block_out_channels=(8, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=2,
    norm_num_groups=4,
    latent_channels=4,
    sample_size=16,
)
DISTILLED_VAE = {
    **SD_LIKE_VAE,
    "block_out_channels": (8, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "layers_per_block": 1,
}
TEXT_CONFIG = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    vocab_size=64,
    max_position_embeddings=77,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values everywhere: at init norms are 1 and many biases 0, which would hide a swapped key."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def _pipeline(root: Path, unet_kwargs: dict, vae_kwargs: dict, prediction: str = "epsilon") -> dict:
    """A diffusers folder with random-weight components; returns the models for comparison."""
    models = {
        "unet": _randomize(UNet2DConditionModel(**unet_kwargs), 1),
        "vae": _randomize(AutoencoderKL(**vae_kwargs), 2),
        "text_encoder": _randomize(CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)), 3),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "scheduler": ["diffusers", "PNDMScheduler"],
    }
    (root / "model_index.json").write_text(json.dumps(index))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": prediction}))
    return models


def _part(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if k.startswith(prefix)}


def _assert_same_state(converted: dict, original: dict) -> None:
    assert sorted(converted) == sorted(original)
    mismatched = [k for k in original if not torch.equal(converted[k], original[k])]
    assert mismatched == []


@pytest.fixture(scope="module")
def sd_like(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd_like")
    return root, _pipeline(root, SD_LIKE_UNET, SD_LIKE_VAE, prediction="v_prediction")


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    root = tmp_path_factory.mktemp("distilled")
    return root, _pipeline(root, DISTILLED_UNET, DISTILLED_VAE)


@pytest.fixture(scope="module")
def sd_like_state(sd_like):
    return read_state_dict(sd_like[0])


# --- exact renaming, proven by diffusers' converters ------------------------------------------------------------


def test_unet_matches_diffusers_converter(sd_like, sd_like_state):
    unet = sd_like[1]["unet"]
    converted = convert_ldm_unet_checkpoint(_part(sd_like_state, UNET), dict(unet.config))
    _assert_same_state(converted, unet.state_dict())


def test_vae_matches_diffusers_converter(sd_like, sd_like_state):
    vae = sd_like[1]["vae"]
    converted = convert_ldm_vae_checkpoint(_part(sd_like_state, VAE), dict(vae.config))
    _assert_same_state(converted, vae.state_dict())


def test_text_encoder_matches_diffusers_converter(sd_like, sd_like_state):
    text = sd_like[1]["text_encoder"]
    converted = convert_ldm_clip_checkpoint(_part(sd_like_state, TEXT))
    expected = {"text_model." + k: v for k, v in text.state_dict().items()}
    _assert_same_state(converted, expected)


def test_distilled_unet_without_mid_block_matches_converter(distilled):
    root, models = distilled
    converted = convert_ldm_unet_checkpoint(_part(read_state_dict(root), UNET), dict(models["unet"].config))
    _assert_same_state(converted, models["unet"].state_dict())


def test_distilled_vae_matches_converter(distilled):
    root, models = distilled
    converted = convert_ldm_vae_checkpoint(_part(read_state_dict(root), VAE), dict(models["vae"].config))
    _assert_same_state(converted, models["vae"].state_dict())


def test_upsampler_follows_the_attention_when_there_is_one(sd_like_state):
    # diffusers' converter accepts the upsampler at either index, so it cannot check this; the LDM UNet needs it.
    upsamplers = sorted(k for k in sd_like_state if k.startswith(UNET + "output_blocks.") and ".conv.weight" in k)
    assert upsamplers == [UNET + "output_blocks.2.1.conv.weight", UNET + "output_blocks.5.2.conv.weight"]


def test_vae_attention_is_a_1x1_conv(sd_like_state):
    assert sd_like_state[VAE + "decoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)


def test_folder_shapes_match_state_dict(sd_like, sd_like_state):
    assert read_shapes(sd_like[0]) == {k: tuple(v.shape) for k, v in sd_like_state.items()}


def test_folder_dtypes_use_ldm_keys(sd_like, sd_like_state):
    assert read_dtypes(sd_like[0]) == {k: "float32" for k in sd_like_state}


def test_folder_cast_to_half(sd_like, sd_like_state):
    half = read_state_dict(sd_like[0], dtype=torch.float16)
    key = UNET + "input_blocks.1.1.proj_in.weight"
    assert torch.equal(half[key], sd_like_state[key].half())


# --- key arithmetic against the SD1.5 layout of the checkpoint facts --------------------------------------------


@pytest.mark.parametrize(
    ("diffusers", "ldm"),
    [
        ("conv_in.weight", "input_blocks.0.0.weight"),
        ("time_embedding.linear_1.weight", "time_embed.0.weight"),
        ("time_embedding.linear_2.bias", "time_embed.2.bias"),
        ("down_blocks.0.resnets.1.time_emb_proj.weight", "input_blocks.2.0.emb_layers.1.weight"),
        ("down_blocks.1.resnets.0.conv_shortcut.weight", "input_blocks.4.0.skip_connection.weight"),
        ("down_blocks.1.attentions.1.proj_in.weight", "input_blocks.5.1.proj_in.weight"),
        ("down_blocks.2.downsamplers.0.conv.weight", "input_blocks.9.0.op.weight"),
        ("down_blocks.3.resnets.1.norm2.bias", "input_blocks.11.0.out_layers.0.bias"),
        ("mid_block.resnets.0.norm1.weight", "middle_block.0.in_layers.0.weight"),
        ("mid_block.attentions.0.norm.weight", "middle_block.1.norm.weight"),
        ("mid_block.resnets.1.conv2.weight", "middle_block.2.out_layers.3.weight"),
        ("up_blocks.0.resnets.2.conv1.bias", "output_blocks.2.0.in_layers.2.bias"),
        ("up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.1.conv.weight"),
        ("up_blocks.1.upsamplers.0.conv.weight", "output_blocks.5.2.conv.weight"),
        ("up_blocks.3.attentions.2.proj_out.bias", "output_blocks.11.1.proj_out.bias"),
        ("conv_norm_out.weight", "out.0.weight"),
        ("conv_out.bias", "out.2.bias"),
    ],
)
def test_sd15_unet_names(diffusers, ldm):
    config = {
        "layers_per_block": 2,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    }
    keys = [diffusers, "up_blocks.1.attentions.0.norm.weight"]  # SD1.5's up block 1 has attention
    assert unet_key_map(keys, config)[diffusers] == UNET + ldm


@pytest.mark.parametrize(
    ("diffusers", "ldm"),
    [
        ("encoder.down_blocks.1.resnets.0.conv_shortcut.weight", "encoder.down.1.block.0.nin_shortcut.weight"),
        ("encoder.down_blocks.2.downsamplers.0.conv.bias", "encoder.down.2.downsample.conv.bias"),
        ("decoder.up_blocks.0.resnets.2.norm1.weight", "decoder.up.3.block.2.norm1.weight"),
        ("decoder.up_blocks.2.upsamplers.0.conv.weight", "decoder.up.1.upsample.conv.weight"),
        ("encoder.mid_block.resnets.1.conv1.weight", "encoder.mid.block_2.conv1.weight"),
        ("decoder.mid_block.attentions.0.to_out.0.bias", "decoder.mid.attn_1.proj_out.bias"),
        ("decoder.mid_block.attentions.0.group_norm.weight", "decoder.mid.attn_1.norm.weight"),
        ("encoder.mid_block.attentions.0.query.weight", "encoder.mid.attn_1.q.weight"),
        ("encoder.conv_norm_out.weight", "encoder.norm_out.weight"),
        ("post_quant_conv.weight", "post_quant_conv.weight"),
    ],
)
def test_sd15_vae_names(diffusers, ldm):
    config = {"layers_per_block": 2, "up_block_types": ["UpDecoderBlock2D"] * 4}
    assert vae_key_map([diffusers], config)[diffusers] == VAE + ldm


def test_text_keys_with_transformers4_prefix():
    key = "text_model.encoder.layers.0.self_attn.q_proj.weight"
    assert text_key_map([key]) == {key: TEXT + key}


def test_text_position_ids_are_dropped():
    assert text_key_map(["text_model.embeddings.position_ids", "embeddings.position_ids"]) == {}


def test_unknown_unet_key_is_named():
    with pytest.raises(ValueError, match=r"'class_embedding.linear_1.weight'"):
        unet_key_map(["class_embedding.linear_1.weight"], {})


def test_sdxl_added_embedding_maps_to_label_emb():
    mapping = unet_key_map(["add_embedding.linear_1.weight", "add_embedding.linear_2.bias"], {})
    assert list(mapping.values()) == [
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.label_emb.0.2.bias",
    ]


def test_weights_beyond_the_config_are_refused():
    with pytest.raises(ValueError, match=r"out of range"):
        unet_key_map(["down_blocks.0.resnets.2.conv1.weight"], {"layers_per_block": 2})


# --- folder handling --------------------------------------------------------------------------------------------


def _vae_folder(root: Path, **save_kwargs) -> AutoencoderKL:
    vae = _randomize(AutoencoderKL(**DISTILLED_VAE), 4)
    vae.save_pretrained(root / "vae", **save_kwargs)
    (root / "model_index.json").write_text("{}")
    return vae


def _check_vae(root: Path, vae: AutoencoderKL) -> None:
    converted = convert_ldm_vae_checkpoint(read_state_dict(root), dict(vae.config))
    _assert_same_state(converted, vae.state_dict())


def test_fp16_variant_folder(tmp_path):
    vae = _vae_folder(tmp_path, variant="fp16")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    _check_vae(tmp_path, vae)


def test_bin_folder_is_read(tmp_path):
    vae = _vae_folder(tmp_path, safe_serialization=False)
    assert (tmp_path / "vae" / "diffusion_pytorch_model.bin").is_file()
    _check_vae(tmp_path, vae)


def test_sharded_folder_is_read(tmp_path):
    vae = _vae_folder(tmp_path, max_shard_size="20KB")
    assert len(list((tmp_path / "vae").glob("*.safetensors"))) > 1
    _check_vae(tmp_path, vae)


def test_single_component_folder(tmp_path):
    vae = _vae_folder(tmp_path)
    converted = convert_ldm_vae_checkpoint(read_state_dict(tmp_path / "vae"), dict(vae.config))
    _assert_same_state(converted, vae.state_dict())


def test_unknown_key_in_folder_names_folder_and_key(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    write_safetensors(tmp_path / "unet" / "diffusion_pytorch_model.safetensors", {"mystery.weight": torch.ones(1)})
    with pytest.raises(CheckpointError, match=r"unet: .*'mystery.weight'"):
        read_state_dict(tmp_path)


def test_folder_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=str(tmp_path.name)):
        read_state_dict(tmp_path)


# --- hints ------------------------------------------------------------------------------------------------------


def test_hints_v_prediction(sd_like):
    assert read_folder_hints(sd_like[0])["prediction"] == "v"


def test_hints_epsilon(distilled):
    assert read_folder_hints(distilled[0])["prediction"] == "eps"


def test_hints_latent_scale(sd_like):
    assert read_folder_hints(sd_like[0])["latent_scale"] == pytest.approx(0.18215)


def test_hints_are_empty_for_a_single_file(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"w": torch.ones(1)})
    assert read_folder_hints(path) == {}
