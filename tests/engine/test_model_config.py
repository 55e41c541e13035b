"""Config inference from tensor shapes: tiny checkpoints of every variant and full-size shapes on the meta device."""

from __future__ import annotations

import functools

import pytest
import tiny_models as tm
import torch
from diffusers import AutoencoderKL as DiffusersVAE
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sd_core.model_config import SD2_TEXT, SD2_UNET, SD15_TEXT, SD15_UNET, SD_VAE, infer_config
from sd_core.models.text_encoder import CLIPTextEncoder, normalize_hf_keys, openclip_to_hf
from sd_core.models.unet import UNetModel
from sd_core.models.vae import AutoencoderKL

torch.set_num_threads(1)

FAMILY = {"sd1": "sd1", "sd2": "sd2", "sd1-inpaint": "sd1-inpaint", "sd2-inpaint": "sd2-inpaint", "bk": "sd1"}


@functools.cache
def tiny_checkpoint(variant: str) -> dict[str, torch.Tensor]:
    return tm.ldm_checkpoint(tm.make_components(variant), variant)


def tiny_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    return tm.shapes_of(tiny_checkpoint(variant))


def full_size_shapes(unet_kwargs: dict, text_kwargs: dict, openclip: bool) -> dict[str, tuple[int, ...]]:
    """Shapes of a full-size model built by diffusers/transformers on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_kwargs)
        vae = DiffusersVAE(**tm.SD_VAE_KWARGS)
        text = CLIPTextModel(CLIPTextConfig(**text_kwargs))
    sd = {"model.diffusion_model." + k: v for k, v in tm.unet_to_ldm(unet).items()}
    sd.update({"first_stage_model." + k: v for k, v in tm.vae_to_ldm(vae).items()})
    if openclip:
        sd.update({"cond_stage_model.model." + k: v for k, v in tm.text_to_openclip(text).items()})
    else:
        sd.update({"cond_stage_model.transformer." + k: v for k, v in tm.text_to_hf(text).items()})
    shapes = tm.shapes_of(sd)
    shapes["params"] = tuple(sum(p.numel() for p in m.parameters()) for m in (unet, vae, text))
    return shapes


@pytest.mark.parametrize("variant", tm.VARIANTS)
def test_family(variant):
    assert infer_config(tiny_shapes(variant)).family == FAMILY[variant]


@pytest.mark.parametrize("variant", tm.VARIANTS)
def test_inpainting_flag(variant):
    assert infer_config(tiny_shapes(variant)).inpainting == variant.endswith("-inpaint")


@pytest.mark.parametrize("variant", tm.VARIANTS)
def test_unet_config(variant):
    assert infer_config(tiny_shapes(variant)).unet == tm.unet_config(variant)


def test_vae_config():
    assert infer_config(tiny_shapes("sd1")).vae == tm.vae_config()


@pytest.mark.parametrize("variant", ["sd1", "sd2"])
def test_text_config(variant):
    assert infer_config(tiny_shapes(variant)).text == tm.text_config(variant)


def test_sd1_uses_8_heads():
    unet = infer_config(tiny_shapes("sd1")).unet
    assert (unet["num_heads"], unet["num_head_channels"]) == (8, -1)


def test_sd2_uses_64_channel_heads():
    unet = infer_config(tiny_shapes("sd2")).unet
    assert (unet["num_heads"], unet["num_head_channels"]) == (-1, 64)


def test_bk_sdm_layout_has_no_middle_block_and_one_resblock_per_level():
    unet = infer_config(tiny_shapes("bk")).unet
    assert unet["mid_block"] is False
    assert unet["num_res_blocks"] == [1, 1, 1]
    assert unet["transformer_depth"] == [1, 2, 0]


def test_sd1_text_uses_last_layer_and_pads_with_eos():
    config = infer_config(tiny_shapes("sd1"))
    assert (config.text_skip, config.pad_token, config.text_format) == (0, 49407, "hf")


def test_sd2_openclip_text_uses_penultimate_layer_and_pads_with_zero():
    config = infer_config(tiny_shapes("sd2"))
    assert (config.text_skip, config.pad_token, config.text_format) == (1, 0, "openclip")


def test_defaults_for_prediction_and_latent_scale():
    config = infer_config(tiny_shapes("sd2"))
    assert (config.prediction, config.latent_scale) == ("eps", 0.18215)


@pytest.mark.parametrize("variant", tm.VARIANTS)
def test_inferred_configs_build_networks_that_load_the_checkpoint_strictly(variant):
    sd = tiny_checkpoint(variant)
    config = infer_config(tm.shapes_of(sd))

    def part(prefix):
        return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

    UNetModel(config.unet).load_state_dict(part("model.diffusion_model."), strict=True)
    AutoencoderKL(config.vae).load_state_dict(part("first_stage_model."), strict=True)
    if config.text_format == "openclip":
        text = openclip_to_hf(part("cond_stage_model.model."))
    else:
        text = normalize_hf_keys(part("cond_stage_model.transformer."))
    CLIPTextEncoder(config.text).load_state_dict(text, strict=True)


def test_parameter_counts_match_the_oracles():
    components = tm.make_components("sd2")
    config = infer_config(tm.shapes_of(tm.ldm_checkpoint(components, "sd2")))
    expected = {name: sum(p.numel() for p in components[key].parameters())
                for name, key in (("unet", "unet"), ("vae", "vae"), ("text", "text_encoder"))}  # fmt: skip
    assert config.params == expected


def test_sd15_full_size_shapes_give_the_reference_configs():
    shapes = full_size_shapes(tm.SD15_UNET_KWARGS, tm.SD15_TEXT_KWARGS, openclip=False)
    params = shapes.pop("params")
    config = infer_config(shapes)
    assert (config.family, config.unet, config.vae, config.text) == ("sd1", SD15_UNET, SD_VAE, SD15_TEXT)
    assert (config.params["unet"], config.params["vae"], config.params["text"]) == params


def test_sd2_full_size_openclip_shapes_give_the_reference_configs():
    shapes = full_size_shapes(tm.SD2_UNET_KWARGS, tm.SD2_TEXT_KWARGS, openclip=True)
    params = shapes.pop("params")
    config = infer_config(shapes)
    assert (config.family, config.unet, config.text, config.text_skip) == ("sd2", SD2_UNET, SD2_TEXT, 1)
    assert (config.params["unet"], config.params["text"]) == (params[0], params[2])


def test_sd2_with_hf_text_keys_uses_the_last_of_its_23_layers():
    """A diffusers SD2 folder, renamed to LDM keys: HF names, 1024 wide, 23 layers (the 24th was dropped)."""
    shapes = full_size_shapes(tm.SD2_UNET_KWARGS, dict(tm.SD2_TEXT_KWARGS, num_hidden_layers=23), openclip=False)
    shapes.pop("params")
    config = infer_config(shapes)
    assert (config.family, config.text_skip, config.text["act"], config.text["num_layers"]) == ("sd2", 0, "gelu", 23)


def test_non_sd_shapes_raise_naming_what_is_missing():
    with pytest.raises(ValueError, match=r"no UNet \(model\.diffusion_model\.\*\)"):
        infer_config({"encoder.layer.0.weight": (8, 8)})


def test_unet_only_shapes_raise_naming_vae_and_text_encoder():
    shapes = {k: v for k, v in tiny_shapes("sd1").items() if k.startswith("model.diffusion_model.")}
    with pytest.raises(ValueError, match="no VAE .*, no text encoder"):
        infer_config(shapes)


def test_sdxl_style_text_keys_are_read_as_sdxl_towers():
    """`conditioner.embedders.*` keys make a checkpoint SDXL: a tower there without its embeddings is an error naming
    the missing key, not an SD1 model with stray keys."""
    shapes = dict(
        tiny_shapes("sd1"), **{"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (8,)}
    )
    with pytest.raises(ValueError, match="missing 'text_model.embeddings.token_embedding.weight'"):
        infer_config(shapes)


def test_text_width_must_match_the_unet_context_width():
    shapes = tiny_shapes("sd1")
    shapes.update({k: (v[0], 96) for k, v in shapes.items() if k.endswith("token_embedding.weight")})
    with pytest.raises(ValueError, match="does not match the UNet context width"):
        infer_config(shapes)
