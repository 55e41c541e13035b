"""Tiny random-weight diffusers/transformers components (the test oracle), their sd_core configs, and test-only
conversions of their weights to single-file LDM keys. Shared by the model, config, loader and pipeline tests.

Variants: "sd1" (conv proj_in, 8 heads), "sd2" (linear proj_in, 64-channel heads, OpenCLIP text keys), a "-inpaint"
suffix on either (9 input channels), and "bk" (BK-SDM style: one ResBlock per level, no middle block, transformer depth
varying by level). Norm weights and all biases are perturbed so a swapped or missing key cannot hide behind an
identity norm or a zero bias. Everything here is small enough to run in well under a second on one CPU thread.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sd_core.models.unet import UNetModel

VARIANTS = ["sd1", "sd2", "sd1-inpaint", "sd2-inpaint", "bk"]
TEXT_WIDTH = {"sd1": 128, "sd2": 192}  # 2 and 3 heads of 64 channels
TEXT_LAYERS = {"sd1": 3, "sd2": 4}
VOCAB = 1000


def base(variant: str) -> str:
    """ "sd1" or "sd2": which text encoder and head rule the variant uses."""
    return "sd2" if variant.startswith("sd2") else "sd1"


def perturb_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Add noise to every 1-D parameter (norm scales and biases) so identity/zero initialisations cannot mask errors."""
    g = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return module.eval()


# --- diffusers / transformers oracles ---------------------------------------------------------------------------------


def unet_kwargs(variant: str) -> dict:
    """diffusers `UNet2DConditionModel` arguments of a tiny variant."""
    in_channels = 9 if variant.endswith("-inpaint") else 4
    if base(variant) == "sd2":
        return dict(
            in_channels=in_channels,
            block_out_channels=(64, 128, 128),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=2,
            attention_head_dim=(1, 2, 2),  # diffusers' name for the head count: 64-channel heads
            use_linear_projection=True,
            cross_attention_dim=TEXT_WIDTH["sd2"],
        )
    kwargs = dict(
        in_channels=in_channels,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        attention_head_dim=8,  # 8 heads, as SD1
        cross_attention_dim=TEXT_WIDTH["sd1"],
    )
    if variant == "bk":
        kwargs.update(layers_per_block=1, mid_block_type=None, transformer_layers_per_block=(1, 2, 1))
    return kwargs


def make_unet(variant: str, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return perturb_(UNet2DConditionModel(**unet_kwargs(variant)), seed)


def vae_kwargs() -> dict:
    return dict(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
    )


def make_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return perturb_(AutoencoderKL(**vae_kwargs()), seed)


def text_kwargs(variant: str) -> dict:
    """transformers `CLIPTextConfig` arguments: quick_gelu for SD1 (OpenAI CLIP), gelu for SD2 (OpenCLIP)."""
    width = TEXT_WIDTH[base(variant)]
    return dict(
        vocab_size=VOCAB,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=TEXT_LAYERS[base(variant)],
        num_attention_heads=width // 64,
        max_position_embeddings=77,
        hidden_act="gelu" if base(variant) == "sd2" else "quick_gelu",
        bos_token_id=VOCAB - 2,
        eos_token_id=VOCAB - 1,
        pad_token_id=VOCAB - 1,
    )


def make_text_encoder(variant: str, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    return perturb_(CLIPTextModel(CLIPTextConfig(**text_kwargs(variant))), seed)


# --- the matching sd_core configs ------------------------------------------------------------------------------------


def unet_config(variant: str) -> dict:
    """The sd_core UNet config that describes `make_unet(variant)` (what `infer_config` must find)."""
    kw = unet_kwargs(variant)
    levels = len(kw["block_out_channels"])
    mc = kw["block_out_channels"][0]
    res = [kw["layers_per_block"]] * levels
    depth = list(kw.get("transformer_layers_per_block", (1,) * levels))
    depth = [d if t.startswith("CrossAttn") else 0 for d, t in zip(depth, kw["down_block_types"], strict=True)]
    sd2 = kw.get("use_linear_projection", False)
    return {
        "in_channels": kw["in_channels"],
        "out_channels": 4,
        "model_channels": mc,
        "channel_mult": [c // mc for c in kw["block_out_channels"]],
        "num_res_blocks": res,
        "num_res_blocks_output": [n + 1 for n in res],
        "transformer_depth": depth,
        "transformer_depth_output": depth,
        "mid_block": kw.get("mid_block_type", "UNetMidBlock2DCrossAttn") is not None,
        "transformer_depth_middle": 0 if variant == "bk" else 1,
        "num_heads": -1 if sd2 else 8,
        "num_head_channels": 64 if sd2 else -1,
        "context_dim": kw["cross_attention_dim"],
        "use_linear_in_transformer": sd2,
    }


def random_unet(variant: str) -> UNetModel:
    """sd_core's UNet of `variant` with random weights of order 0.05 (for optimised-vs-plain comparisons)."""
    unet = UNetModel(unet_config(variant)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return unet


def unet_call_inputs(variant: str, batch: int = 2, size: int = 16, same_t: bool = False):
    """(x, t, context) for one call of `random_unet(variant)`; same_t: one timestep for the whole batch."""
    g = torch.Generator().manual_seed(1)
    kw = unet_kwargs(variant)
    x = torch.randn(batch, kw["in_channels"], size, size, generator=g)
    t = torch.full((batch,), 500.0) if same_t else torch.linspace(999.0, 37.5, batch)
    return x, t, torch.randn(batch, 7, kw["cross_attention_dim"], generator=g)


def vae_config() -> dict:
    kw = vae_kwargs()
    ch = kw["block_out_channels"][0]
    return {
        "in_channels": 3,
        "out_ch": 3,
        "ch": ch,
        "ch_mult": [c // ch for c in kw["block_out_channels"]],
        "num_res_blocks": kw["layers_per_block"],
        "z_channels": 4,
        "embed_dim": 4,
    }


def text_config(variant: str) -> dict:
    kw = text_kwargs(variant)
    return {
        "vocab_size": kw["vocab_size"],
        "hidden_size": kw["hidden_size"],
        "num_layers": kw["num_hidden_layers"],
        "num_heads": kw["num_attention_heads"],
        "intermediate_size": kw["intermediate_size"],
        "max_positions": kw["max_position_embeddings"],
        "act": kw["hidden_act"],
    }


# --- test-only conversions of the oracles' weights to LDM names -------------------------------------------------------

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _rename(sd: dict, prefixes: dict[str, str], inner: dict[str, dict[str, str]]) -> dict:
    out = {}
    for key, value in sd.items():
        match = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
        if match is None:
            raise KeyError(f"no LDM name for {key!r}")
        rest = key[len(match) :]
        head, _, tail = rest.partition(".")
        rest = inner.get(match, {}).get(head, head) + ("." + tail if tail else "")
        out[prefixes[match] + rest] = value
    return out


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """diffusers UNet weights -> LDM keys (without `model.diffusion_model.`), walking the diffusers block structure."""
    prefixes = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    inner: dict[str, dict[str, str]] = {}

    def resnet(src: str, dst: str) -> None:
        prefixes[src] = dst
        inner[src] = _UNET_RESNET

    n = 1
    for b, block in enumerate(unet.down_blocks):
        for j in range(len(block.resnets)):
            resnet(f"down_blocks.{b}.resnets.{j}.", f"input_blocks.{n}.0.")
            prefixes[f"down_blocks.{b}.attentions.{j}."] = f"input_blocks.{n}.1."
            n += 1
        if block.downsamplers is not None:
            prefixes[f"down_blocks.{b}.downsamplers.0.conv."] = f"input_blocks.{n}.0.op."
            n += 1
    if unet.mid_block is not None:
        resnet("mid_block.resnets.0.", "middle_block.0.")
        prefixes["mid_block.attentions.0."] = "middle_block.1."
        resnet("mid_block.resnets.1.", "middle_block.2.")
    n = 0
    for b, block in enumerate(unet.up_blocks):
        has_attn = hasattr(block, "attentions")
        for j in range(len(block.resnets)):
            resnet(f"up_blocks.{b}.resnets.{j}.", f"output_blocks.{n}.0.")
            prefixes[f"up_blocks.{b}.attentions.{j}."] = f"output_blocks.{n}.1."
            n += 1
        if block.upsamplers is not None:
            prefixes[f"up_blocks.{b}.upsamplers.0.conv."] = f"output_blocks.{n - 1}.{2 if has_attn else 1}.conv."
    return _rename(unet.state_dict(), prefixes, inner)


def vae_to_ldm(vae: AutoencoderKL, linear_attention: bool = False) -> dict[str, torch.Tensor]:
    """diffusers VAE weights -> LDM keys (without `first_stage_model.`). Mid-block attention weights are stored as
    1x1 convs like the original files, or left as Linear [C, C] (`linear_attention`) like diffusers-converted files."""
    prefixes = {
        "encoder.conv_in.": "encoder.conv_in.",
        "encoder.conv_norm_out.": "encoder.norm_out.",
        "encoder.conv_out.": "encoder.conv_out.",
        "decoder.conv_in.": "decoder.conv_in.",
        "decoder.conv_norm_out.": "decoder.norm_out.",
        "decoder.conv_out.": "decoder.conv_out.",
        "quant_conv.": "quant_conv.",
        "post_quant_conv.": "post_quant_conv.",
    }
    inner: dict[str, dict[str, str]] = {}
    resnet = {"conv_shortcut": "nin_shortcut"}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    for b, block in enumerate(vae.encoder.down_blocks):
        for j in range(len(block.resnets)):
            prefixes[f"encoder.down_blocks.{b}.resnets.{j}."] = f"encoder.down.{b}.block.{j}."
            inner[f"encoder.down_blocks.{b}.resnets.{j}."] = resnet
        prefixes[f"encoder.down_blocks.{b}.downsamplers.0.conv."] = f"encoder.down.{b}.downsample.conv."
    levels = len(vae.decoder.up_blocks)
    for b, block in enumerate(vae.decoder.up_blocks):
        for j in range(len(block.resnets)):
            prefixes[f"decoder.up_blocks.{b}.resnets.{j}."] = f"decoder.up.{levels - 1 - b}.block.{j}."
            inner[f"decoder.up_blocks.{b}.resnets.{j}."] = resnet
        prefixes[f"decoder.up_blocks.{b}.upsamplers.0.conv."] = f"decoder.up.{levels - 1 - b}.upsample.conv."
    for part in ("encoder", "decoder"):
        for i in (0, 1):
            prefixes[f"{part}.mid_block.resnets.{i}."] = f"{part}.mid.block_{i + 1}."
            inner[f"{part}.mid_block.resnets.{i}."] = resnet
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
        inner[f"{part}.mid_block.attentions.0."] = attn
    out = _rename(vae.state_dict(), prefixes, inner)
    # diffusers keeps `to_out` as a list: "to_out.0.weight" became "proj_out.0.weight"
    out = {k.replace("proj_out.0.", "proj_out."): v for k, v in out.items()}
    if not linear_attention:
        out = {k: (v[:, :, None, None] if v.ndim == 2 else v) for k, v in out.items()}
    return out


def text_to_hf(text_encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """transformers weights -> SD1 single-file names (without `cond_stage_model.transformer.`): `text_model.*`."""
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in text_encoder.state_dict().items()}


def text_to_openclip(text_encoder: CLIPTextModel, seed: int = 0) -> dict[str, torch.Tensor]:
    """transformers weights -> SD2 OpenCLIP names (without `cond_stage_model.model.`), plus the `text_projection`
    and `logit_scale` tensors real files carry (random here: SD never uses them)."""
    hf = text_to_hf(text_encoder)
    width = hf["text_model.final_layer_norm.weight"].shape[0]
    layer_names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    g = torch.Generator().manual_seed(seed)
    out = {
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": hf["text_model.final_layer_norm.weight"],
        "ln_final.bias": hf["text_model.final_layer_norm.bias"],
        "text_projection": torch.randn(width, width, generator=g),
        "logit_scale": torch.tensor(4.6052),
    }
    for i in range(text_encoder.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [hf[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
            for hf_name, oc_name in layer_names.items():
                out[f"{dst}{oc_name}.{kind}"] = hf[f"{src}{hf_name}.{kind}"]
    return out


# --- whole tiny checkpoints -----------------------------------------------------------------------------------------


def make_components(variant: str, seed: int = 0) -> dict:
    """{"unet", "vae", "text_encoder"} oracles of one tiny model."""
    return {
        "unet": make_unet(variant, seed),
        "vae": make_vae(seed + 1),
        "text_encoder": make_text_encoder(variant, seed + 2),
    }


def ldm_checkpoint(components: dict, variant: str) -> dict[str, torch.Tensor]:
    """A single-file LDM state dict of the components, laid out like the released files: SD1 text keys under
    `cond_stage_model.transformer.text_model.` with the int64 `position_ids` buffer, SD2 under `cond_stage_model.model.`
    in OpenCLIP names."""
    sd = {"model.diffusion_model." + k: v for k, v in unet_to_ldm(components["unet"]).items()}
    sd.update({"first_stage_model." + k: v for k, v in vae_to_ldm(components["vae"]).items()})
    if base(variant) == "sd2":
        sd.update({"cond_stage_model.model." + k: v for k, v in text_to_openclip(components["text_encoder"]).items()})
    else:
        text = text_to_hf(components["text_encoder"])
        text["text_model.embeddings.position_ids"] = torch.arange(77)[None]
        sd.update({"cond_stage_model.transformer." + k: v for k, v in text.items()})
    return {k: v.detach().contiguous() for k, v in sd.items()}


def shapes_of(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


# --- full-size references ---------------------------------------------------------------------------------------------

# diffusers arguments that build an SD1.5-shaped UNet / VAE / text encoder (random weights; meta device for shapes)
SD15_UNET_KWARGS = dict(
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
)
SD2_UNET_KWARGS = dict(
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    cross_attention_dim=1024,
)
SD_VAE_KWARGS = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
)
SD15_TEXT_KWARGS = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)
SD2_TEXT_KWARGS = dict(SD15_TEXT_KWARGS, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                       num_attention_heads=16, hidden_act="gelu")  # fmt: skip
