"""SDXL loading: families and configs from the shapes of single files (original layout) and diffusers folders, each
network equal to diffusers'/transformers' own on the same weights, casting while reading, the OpenCLIP layer-count
rule, the v-prediction override, and bad files refused naming the file."""

from __future__ import annotations

import pytest
import torch
from sdxl_fixtures import sdxl_folder, write_sdxl_checkpoint

import sd_core
from sd_core.checkpoint import CheckpointError, read_shapes, read_state_dict, write_safetensors
from sd_core.model_config import SD2_TEXT, SD2_UNET, SD_VAE, infer_config
from sd_core.models.text_encoder import CLIPTextEncoder, hf_to_openclip
from sd_core.models.unet import UNetModel
from sd_core.models.vae import AutoencoderKL

KINDS = {"base": {}, "refiner": {"refiner": True}, "inpaint": {"inpainting": True}}
FAMILIES = {"base": "sdxl", "refiner": "sdxl-refiner", "inpaint": "sdxl-inpaint"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    return {kind: write_sdxl_checkpoint(root / f"{kind}.safetensors", **kw) for kind, kw in KINDS.items()}


def source(files, kind: str, layout: str):
    return files[kind] if layout == "single" else sdxl_folder(**KINDS[kind])


@pytest.mark.parametrize("layout", ["single", "folder"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_family_in_info_and_pipeline(files, kind, layout):
    path = source(files, kind, layout)
    assert sd_core.inspect_model(path).family == FAMILIES[kind]
    pipe = sd_core.load(path, device="cpu", dtype=torch.float32)
    assert pipe.family == FAMILIES[kind]
    assert (pipe.defaults.width, pipe.defaults.height) == (1024, 1024)


def test_single_file_layout_is_the_original(files):
    keys = read_shapes(files["base"])
    assert "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    refiner = read_shapes(files["refiner"])
    assert "conditioner.embedders.0.model.text_projection" in refiner
    assert not any(k.startswith("conditioner.embedders.1.") for k in refiner)


@pytest.mark.parametrize("layout", ["single", "folder"])
def test_config_from_shapes(files, layout):
    config = infer_config(read_shapes(source(files, "base", layout)))
    assert config.unet["transformer_depth"] == [0, 1, 2]
    assert config.unet["transformer_depth_middle"] == 2
    assert (config.unet["context_dim"], config.unet["adm_in_channels"], config.unet["num_head_channels"]) == (
        192,
        128 + 6 * 256,
        64,
    )
    assert [c["act"] for c in config.text_encoders] == ["quick_gelu", "gelu"]
    assert (config.text_skips, config.pad_tokens, config.size_embed_dim) == ([1, 1], [49407, 0], 256)
    assert config.latent_scale == 0.13025
    refiner = infer_config(read_shapes(source(files, "refiner", layout)))
    assert (refiner.aesthetic, refiner.size_embed_dim, refiner.pad_tokens) == (True, 256, [0])


@pytest.mark.parametrize("layout", ["single", "folder"])
@pytest.mark.parametrize("kind", ["base", "refiner"])
def test_text_towers_equal_transformers(files, kind, layout):
    """Each tower's penultimate hidden states (no final norm) and bigG's projected pooled output."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = sdxl_folder(**KINDS[kind])
    pipe = sd_core.load(source(files, kind, layout), device="cpu", dtype=torch.float32, optimize=False)
    tokens = torch.tensor([[49406, 320, 1215, 3032, 2569, 49407] + [0] * 71])
    refs = [CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", local_files_only=True)]
    if kind == "base":
        refs.insert(0, CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True))
    for n, (ref, tower) in enumerate(zip(refs, pipe.text_encoder.embedders, strict=True)):
        last = n == len(refs) - 1
        expected = ref(tokens, output_hidden_states=True)
        hidden, pooled = tower.hidden_and_pooled(tokens, 1, pooled=last)
        torch.testing.assert_close(hidden, expected.hidden_states[-2], rtol=1e-5, atol=1e-5)
        if last:
            torch.testing.assert_close(pooled, expected.text_embeds, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["single", "folder"])
@pytest.mark.parametrize("kind", ["base", "refiner", "inpaint"])
def test_unet_with_added_conditioning_equals_diffusers(files, kind, layout):
    from diffusers import UNet2DConditionModel

    from sd_core.models.conditioner import size_vector

    ref = UNet2DConditionModel.from_pretrained(sdxl_folder(**KINDS[kind]) / "unet", local_files_only=True)
    pipe = sd_core.load(source(files, kind, layout), device="cpu", dtype=torch.float32, optimize=False)
    g = torch.Generator().manual_seed(0)
    cfg = ref.config
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=g)
    context = torch.randn(2, 77, cfg.cross_attention_dim, generator=g)
    pooled = torch.randn(2, 128, generator=g)
    ids = torch.tensor([[64.0, 64, 0, 0, 64, 64], [32, 48, 3, 5, 72, 80]])[:, : 5 if kind == "refiner" else 6]
    t = torch.tensor([500.0, 20.0])
    with torch.no_grad():
        expected = ref(x, t, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
        ours = pipe.unet(x, t, context, size_vector(pooled, ids, 256))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_vae_equals_diffusers(files):
    from diffusers import AutoencoderKL as Reference

    ref = Reference.from_pretrained(sdxl_folder() / "vae", local_files_only=True)
    pipe = sd_core.load(files["base"], device="cpu", dtype=torch.float32, optimize=False)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(pipe.vae.decode(z), ref.decode(z).sample, rtol=1e-4, atol=1e-5)


def test_casting_while_reading_leaves_position_ids_and_logit_scale(files):
    sd = read_state_dict(files["base"], dtype=torch.bfloat16)
    assert sd["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    assert sd["conditioner.embedders.1.model.logit_scale"].dtype == torch.float32
    assert sd["conditioner.embedders.1.model.text_projection"].dtype == torch.bfloat16
    assert sd["model.diffusion_model.label_emb.0.0.weight"].dtype == torch.bfloat16


def test_bf16_load_runs(files):
    pipe = sd_core.load(files["base"], device="cpu", dtype=torch.bfloat16, vae_dtype=torch.float32)
    assert next(pipe.unet.parameters()).dtype == torch.bfloat16
    (img,) = pipe.txt2img("a wall", width=32, height=32, steps=2, seed=1)
    assert img.size == (32, 32)


def test_prediction_override_and_v_pred_marker(files, tmp_path):
    assert sd_core.load(files["base"], device="cpu", dtype=torch.float32).config.prediction == "eps"
    assert sd_core.load(files["base"], device="cpu", dtype=torch.float32, prediction="v").config.prediction == "v"
    sd = read_state_dict(files["base"])
    sd["v_pred"] = torch.tensor([])  # ComfyUI's marker of v-prediction SDXL files
    write_safetensors(tmp_path / "v.safetensors", sd)
    assert sd_core.load(tmp_path / "v.safetensors", device="cpu", dtype=torch.float32).config.prediction == "v"


# --- OpenCLIP towers read by their layer count -------------------------------------------------------------------


def _sd2_shapes(text_layers: int) -> dict[str, tuple[int, ...]]:
    """Shapes of a full-size SD2 file whose OpenCLIP tower has `text_layers` resblocks (meta tensors: no memory)."""
    with torch.device("meta"):
        unet, vae = UNetModel(SD2_UNET), AutoencoderKL(SD_VAE)
        text = CLIPTextEncoder({**SD2_TEXT, "num_layers": text_layers})
    shapes = {"model.diffusion_model." + k: tuple(v.shape) for k, v in unet.state_dict().items()}
    shapes.update({"first_stage_model." + k: tuple(v.shape) for k, v in vae.state_dict().items()})
    oc = hf_to_openclip(text.state_dict())
    shapes.update({"cond_stage_model.model." + k: tuple(v.shape) for k, v in oc.items()})
    return shapes


@pytest.mark.parametrize(("layers", "skip"), [(24, 1), (23, 0)])
def test_sd2_openclip_tower_with_23_resblocks_uses_all_of_them(layers, skip):
    """SD2 uses the 23rd layer's output: the penultimate of the full 24-layer tower, or the last of a 23-layer one
    (files converted back from diffusers folders), never one layer fewer."""
    config = infer_config(_sd2_shapes(layers))
    assert (config.text["num_layers"], config.text_skip) == (layers, skip)


@pytest.mark.parametrize(("layers", "skip"), [(32, 1), (31, 0)])
def test_sdxl_bigg_penultimate_rule_only_with_the_full_tower(files, layers, skip):
    shapes = read_shapes(files["base"])
    prefix = "conditioner.embedders.1.model."
    tower = {k: v for k, v in shapes.items() if k.startswith(prefix)}
    shapes = {k: v for k, v in shapes.items() if not k.startswith(prefix)}
    for k, v in tower.items():  # the tiny tower at bigG's width 1280, with `layers` resblocks
        name = k[len(prefix) :]
        wide = tuple(1280 if d == 128 else 5120 if d == 512 else 3840 if d == 384 else d for d in v)
        if name.startswith("transformer.resblocks.0."):
            for n in range(layers):
                shapes[prefix + name.replace(".0.", f".{n}.", 1)] = wide
        elif not name.startswith("transformer.resblocks."):
            shapes[k] = wide
    shapes.update({k: (v[0], 64 + 1280) for k, v in shapes.items() if k.endswith("attn2.to_k.weight")})
    shapes.update({k: (v[0], 64 + 1280) for k, v in shapes.items() if k.endswith("attn2.to_v.weight")})
    label = "model.diffusion_model.label_emb.0.0.weight"
    shapes[label] = (shapes[label][0], 1280 + 6 * 256)
    config = infer_config(shapes)
    assert (config.text_encoders[1]["num_layers"], config.text_skips) == (layers, [1, skip])


# --- bad inputs --------------------------------------------------------------------------------------------------


def test_missing_text_encoder_names_the_file(files, tmp_path):
    sd = {k: v for k, v in read_state_dict(files["base"]).items() if not k.startswith("conditioner.embedders.1.")}
    write_safetensors(tmp_path / "no_bigg.safetensors", sd)
    with pytest.raises(CheckpointError, match=r"no_bigg\.safetensors: .*a text encoder is missing"):
        sd_core.load(tmp_path / "no_bigg.safetensors", device="cpu")


def test_truncated_file_names_the_file(files, tmp_path):
    data = files["base"].read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: .*truncated"):
        sd_core.load(tmp_path / "cut.safetensors", device="cpu")


def test_lora_file_passed_as_a_model_is_named(tmp_path):
    lora = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
    }
    write_safetensors(tmp_path / "style_lora.safetensors", lora)
    with pytest.raises(CheckpointError, match=r"style_lora\.safetensors: this is a LoRA"):
        sd_core.load(tmp_path / "style_lora.safetensors", device="cpu")


def test_controlnet_file_passed_as_a_model_is_named(tmp_path):
    controlnet = {
        "control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3),
        "control_model.time_embed.0.weight": torch.zeros(1280, 320),
    }
    write_safetensors(tmp_path / "canny.safetensors", controlnet)
    with pytest.raises(CheckpointError, match=r"canny\.safetensors: this is a ControlNet"):
        sd_core.inspect_model(tmp_path / "canny.safetensors")
