"""The networks against diffusers/transformers as the oracle: same weights (renamed to LDM keys), same outputs."""

from __future__ import annotations

import functools

import pytest
import tiny_models as tm
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)

from sd_core.models.text_encoder import CLIPTextEncoder, hf_to_openclip, normalize_hf_keys, openclip_to_hf
from sd_core.models.unet import UNetModel
from sd_core.models.vae import AutoencoderKL

torch.set_num_threads(1)
ATOL = 1e-5


@functools.cache
def oracle_unet(variant: str):
    return tm.make_unet(variant)


@functools.cache
def oracle_vae():
    return tm.make_vae()


@functools.cache
def oracle_text(variant: str):
    return tm.make_text_encoder(variant)


def our_unet(variant: str) -> UNetModel:
    model = UNetModel(tm.unet_config(variant))
    model.load_state_dict(tm.unet_to_ldm(oracle_unet(variant)), strict=True)
    return model.eval()


def our_vae(linear_attention: bool = False) -> AutoencoderKL:
    model = AutoencoderKL(tm.vae_config())
    model.load_state_dict(tm.vae_to_ldm(oracle_vae(), linear_attention), strict=True)
    return model.eval()


def our_text(variant: str) -> CLIPTextEncoder:
    model = CLIPTextEncoder(tm.text_config(variant))
    model.load_state_dict(tm.text_to_hf(oracle_text(variant)), strict=True)
    return model.eval()


def unet_inputs(variant: str, h: int = 16, w: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    kw = tm.unet_kwargs(variant)
    x = torch.randn(2, kw["in_channels"], h, w, generator=g)
    context = torch.randn(2, 7, kw["cross_attention_dim"], generator=g)
    return x, torch.tensor([999.0, 37.5]), context


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, tm.VOCAB, (2, 77), generator=torch.Generator().manual_seed(seed))


# --- UNet -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", tm.VARIANTS)
def test_unet_matches_diffusers(variant):
    x, t, context = unet_inputs(variant)
    with torch.no_grad():
        expected = oracle_unet(variant)(x, t, context).sample
        got = our_unet(variant)(x, t, context)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", tm.VARIANTS)
def test_unet_test_mapping_agrees_with_diffusers_converter(variant):
    """The test-side diffusers->LDM renaming is the inverse of diffusers' own LDM->diffusers conversion."""
    unet = oracle_unet(variant)
    ldm = {"model.diffusion_model." + k: v for k, v in tm.unet_to_ldm(unet).items()}
    converted = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    reference = unet.state_dict()
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[k], reference[k]) for k in reference)


@pytest.mark.parametrize("variant", tm.VARIANTS)
def test_unet_with_each_row_under_two_contexts_matches_diffusers_on_the_repeated_batch(variant):
    """Classifier-free guidance: x [B], context [uncond; cond] of 2B rows is diffusers' UNet on [x; x]. The layers
    before the first cross-attention see B rows only."""
    x, t, context = unet_inputs(variant)
    twice = torch.cat([context, torch.randn(context.shape, generator=torch.Generator().manual_seed(9))])
    model = our_unet(variant)
    seen = []
    hook = model.input_blocks[0].register_forward_hook(lambda _m, _a, out: seen.append(out.shape[0]))
    with torch.no_grad():
        expected = oracle_unet(variant)(torch.cat([x, x]), torch.cat([t, t]), twice).sample
        got = model(x, t, twice)
    hook.remove()
    assert seen == [2] and got.shape[0] == 4
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="cannot tile a batch of 2 to 3"):
        model(x, t, twice[:3])


def test_unet_latent_size_not_multiple_of_8_matches_diffusers():
    x, t, context = unet_inputs("sd1", h=10, w=14)
    with torch.no_grad():
        expected = oracle_unet("sd1")(x, t, context).sample
        got = our_unet("sd1")(x, t, context)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_unet_scalar_timestep_is_broadcast_over_the_batch():
    x, _, context = unet_inputs("sd1")
    model = our_unet("sd1")
    with torch.no_grad():
        torch.testing.assert_close(model(x, 421.25, context), model(x, torch.tensor([421.25, 421.25]), context))


def test_unet_bf16_weights_accept_fp32_inputs():
    x, t, context = unet_inputs("sd1")
    model = our_unet("sd1")
    with torch.no_grad():
        reference = model(x, t, context)
        got = model.to(torch.bfloat16)(x, t, context)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), reference, atol=0.1, rtol=0.05)


def test_unet_circular_padding_makes_it_shift_equivariant():
    """All convs are plain nn.Conv2d: switching them to circular padding (seamless tiling) gives a UNet that commutes
    with a circular shift by its total downsampling factor (4 for the 3-level tiny model)."""
    x, t, context = unet_inputs("sd1")
    model = our_unet("sd1")
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.padding_mode = "circular"
    with torch.no_grad():
        shifted_out = model(torch.roll(x, shifts=(4, 8), dims=(2, 3)), t, context)
        out = model(x, t, context)
    torch.testing.assert_close(shifted_out, torch.roll(out, shifts=(4, 8), dims=(2, 3)), atol=ATOL, rtol=0)


def test_unet_builds_on_meta_and_loads_with_assign():
    with torch.device("meta"):
        model = UNetModel(tm.unet_config("sd2"))
    model.load_state_dict(tm.unet_to_ldm(oracle_unet("sd2")), strict=True, assign=True)
    x, t, context = unet_inputs("sd2")
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(x, t, context), oracle_unet("sd2")(x, t, context).sample, atol=ATOL, rtol=0
        )


def test_unet_config_rejects_output_blocks_that_do_not_match_the_skips():
    config = dict(tm.unet_config("sd1"), num_res_blocks_output=[3, 3, 2])
    with pytest.raises(ValueError, match="skip"):
        UNetModel(config)


# --- VAE --------------------------------------------------------------------------------------------------------------


def image(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_vae_encode_matches_diffusers():
    x = image()
    with torch.no_grad():
        dist = oracle_vae().encode(x).latent_dist
        mean, logvar = our_vae().encode(x)
    torch.testing.assert_close(mean, dist.mean, atol=ATOL, rtol=0)
    torch.testing.assert_close(logvar, dist.logvar, atol=ATOL, rtol=0)


def test_vae_decode_matches_diffusers():
    z = latents()
    with torch.no_grad():
        torch.testing.assert_close(our_vae().decode(z), oracle_vae().decode(z).sample, atol=ATOL, rtol=0)


def test_vae_test_mapping_agrees_with_diffusers_converter():
    vae = oracle_vae()
    ldm = {"first_stage_model." + k: v for k, v in tm.vae_to_ldm(vae).items()}
    converted = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    reference = vae.state_dict()
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[k], reference[k]) for k in reference)


def test_vae_accepts_linear_shaped_attention_weights():
    sd = tm.vae_to_ldm(oracle_vae(), linear_attention=True)
    assert sd["decoder.mid.attn_1.q.weight"].ndim == 2
    z = latents()
    with torch.no_grad():
        torch.testing.assert_close(our_vae(linear_attention=True).decode(z), oracle_vae().decode(z).sample, atol=ATOL,
                                   rtol=0)  # fmt: skip


def test_vae_builds_on_meta_and_loads_linear_attention_weights_with_assign():
    with torch.device("meta"):
        model = AutoencoderKL(tm.vae_config())
    model.load_state_dict(tm.vae_to_ldm(oracle_vae(), linear_attention=True), strict=True, assign=True)
    assert model.decoder.mid.attn_1.q.weight.shape[-2:] == (1, 1)
    z = latents()
    with torch.no_grad():
        torch.testing.assert_close(model.eval().decode(z), oracle_vae().decode(z).sample, atol=ATOL, rtol=0)


def test_vae_prepare_state_dict_reshapes_linear_attention_weights_into_views():
    sd = tm.vae_to_ldm(oracle_vae(), linear_attention=True)
    prepared = AutoencoderKL.prepare_state_dict(sd)
    expected = {k: tuple(v.shape) for k, v in AutoencoderKL(tm.vae_config()).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in prepared.items()} == expected
    key = "encoder.mid.attn_1.proj_out.weight"
    assert prepared[key].untyped_storage().data_ptr() == sd[key].untyped_storage().data_ptr()


def test_vae_circular_padding_reaches_the_asymmetric_downsample_pad():
    """With every conv switched to circular padding the encoder commutes with a circular shift by 2 pixels (1 latent
    pixel per downsampling), which needs the right/bottom pad of the downsampler to wrap too."""
    model = our_vae()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.padding_mode = "circular"
    x = image()
    with torch.no_grad():
        mean, _ = model.encode(x)
        shifted, _ = model.encode(torch.roll(x, shifts=(2, 4), dims=(2, 3)))
    torch.testing.assert_close(shifted, torch.roll(mean, shifts=(1, 2), dims=(2, 3)), atol=ATOL, rtol=0)


# --- text encoder -----------------------------------------------------------------------------------------------------


def test_clip_sd1_matches_transformers_last_hidden_state():
    tok = tokens()
    with torch.no_grad():
        expected = oracle_text("sd1")(tok).last_hidden_state
        got = our_text("sd1")(tok)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_clip_sd2_skip_1_is_the_penultimate_layer_through_final_layer_norm():
    tok = tokens()
    oracle = oracle_text("sd2")
    with torch.no_grad():
        hidden = oracle(tok, output_hidden_states=True).hidden_states
        expected = oracle.final_layer_norm(hidden[-2])
        got = our_text("sd2")(tok, skip=1)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_openclip_to_hf_matches_diffusers_converter():
    oracle = oracle_text("sd2")
    openclip = tm.text_to_openclip(oracle)
    expected = convert_open_clip_checkpoint(oracle, {"cond_stage_model.model." + k: v for k, v in openclip.items()})
    # diffusers, too, skips `text_projection` of an SD2 file (SD never uses it) and `logit_scale`
    got = openclip_to_hf(openclip)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_openclip_to_hf_splits_in_proj_into_views():
    openclip = tm.text_to_openclip(oracle_text("sd2"))
    hf = openclip_to_hf(openclip)
    fused = openclip["transformer.resblocks.1.attn.in_proj_weight"]
    for part in "qkv":
        tensor = hf[f"text_model.encoder.layers.1.self_attn.{part}_proj.weight"]
        assert tensor.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    bias = hf["text_model.encoder.layers.1.self_attn.v_proj.bias"]
    assert bias.untyped_storage().data_ptr() == openclip["transformer.resblocks.1.attn.in_proj_bias"].data_ptr()


def test_hf_to_openclip_inverts_openclip_to_hf():
    openclip = tm.text_to_openclip(oracle_text("sd2"))
    back = hf_to_openclip(openclip_to_hf(openclip))
    assert back.keys() == openclip.keys() - {"text_projection", "logit_scale"}
    assert all(torch.equal(back[k], openclip[k]) for k in back)


def test_openclip_to_hf_rejects_an_unknown_key():
    with pytest.raises(ValueError, match="visual.proj"):
        openclip_to_hf({"visual.proj": torch.zeros(1)})


def test_normalize_hf_keys_takes_transformers5_names_and_drops_position_ids():
    sd = dict(oracle_text("sd1").state_dict())  # transformers 5.x: no `text_model.` level
    sd["embeddings.position_ids"] = torch.arange(77)[None]
    model = CLIPTextEncoder(tm.text_config("sd1"))
    model.load_state_dict(normalize_hf_keys(sd), strict=True)
    tok = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(tok), oracle_text("sd1")(tok).last_hidden_state, atol=ATOL, rtol=0)


def test_text_encoder_builds_on_meta_and_loads_openclip_views_with_assign():
    with torch.device("meta"):
        model = CLIPTextEncoder(tm.text_config("sd2"))
    model.load_state_dict(openclip_to_hf(tm.text_to_openclip(oracle_text("sd2"))), strict=True, assign=True)
    tok = tokens()
    with torch.no_grad():
        expected = oracle_text("sd2")(tok).last_hidden_state
        torch.testing.assert_close(model.eval()(tok), expected, atol=ATOL, rtol=0)
