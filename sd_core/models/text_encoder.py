"""The CLIP text transformer that turns 77 tokens into the UNet's cross-attention context.

Attribute names are Hugging Face CLIP names (`text_model.encoder.layers.N.self_attn.q_proj`, ...): the SD1 single-file
keys with `cond_stage_model.transformer.` stripped. SD2 files store OpenCLIP names with a fused q/k/v projection;
`openclip_to_hf` renames them (the split is three row views of the fused tensor, so no weight is copied). SDXL's
OpenCLIP ViT-bigG also keeps its `text_projection` (HF `CLIPTextModelWithProjection`'s), for the pooled output.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .layers import add_residual

EOS_TOKEN = 49407


def text_config(config: dict) -> dict:
    """Complete a text encoder config. Keys: vocab_size (49408), hidden_size, num_layers, num_heads, intermediate_size,
    max_positions (77), act ("quick_gelu" for OpenAI CLIP / SD1, "gelu" for OpenCLIP / SD2), projection_dim (0: no
    `text_projection`; SDXL's bigG 1280)."""
    cfg = dict(config)
    cfg.setdefault("vocab_size", 49408)
    cfg.setdefault("max_positions", 77)
    cfg.setdefault("num_heads", cfg["hidden_size"] // 64)
    cfg.setdefault("intermediate_size", cfg["hidden_size"] * 4)
    cfg["projection_dim"] = int(cfg.get("projection_dim") or 0)
    if cfg.setdefault("act", "quick_gelu") not in ("quick_gelu", "gelu"):
        raise ValueError(f"text encoder config: unknown activation {cfg['act']!r}")
    return cfg


class Embeddings(nn.Module):
    def __init__(self, vocab_size: int, width: int, max_positions: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(max_positions, width)

    def forward(self, tokens: torch.Tensor, token_embeds: torch.Tensor | None = None) -> torch.Tensor:
        # positions are computed, not stored: no buffer stays behind on the meta device after an assign-load
        embeds = self.token_embedding(tokens) if token_embeds is None else token_embeds
        return embeds + self.position_embedding.weight[: tokens.shape[1]]


class SelfAttention(nn.Module):
    attention_dtype: torch.dtype | None = None  # compute the attention core in this dtype (None: the inputs')

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        out = attention(q, k, v, self.heads, causal=True, dtype=self.attention_dtype)
        return self.out_proj(out) if residual is None else add_residual(self.out_proj, out, residual)


class MLP(nn.Module):
    def __init__(self, width: int, inner: int, act: str):
        super().__init__()
        self.act = act
        self.fc1 = nn.Linear(width, inner)
        self.fc2 = nn.Linear(inner, width)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc1(x)
        h = h * torch.sigmoid(1.702 * h) if self.act == "quick_gelu" else F.gelu(h)
        return self.fc2(h) if residual is None else add_residual(self.fc2, h, residual)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.self_attn = SelfAttention(cfg["hidden_size"], cfg["num_heads"])
        self.layer_norm1 = nn.LayerNorm(cfg["hidden_size"])
        self.mlp = MLP(cfg["hidden_size"], cfg["intermediate_size"], cfg["act"])
        self.layer_norm2 = nn.LayerNorm(cfg["hidden_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.self_attn(self.layer_norm1(x), residual=x)
        return self.mlp(self.layer_norm2(x), residual=x)


class Encoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg["num_layers"]))


class TextTransformer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embeddings = Embeddings(cfg["vocab_size"], cfg["hidden_size"], cfg["max_positions"])
        self.encoder = Encoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg["hidden_size"])


class CLIPTextEncoder(nn.Module):
    """`forward(tokens, skip)` = `final_layer_norm(hidden_states[-(1 + skip)])`, hidden_states[-1] being the last
    layer's output: skip=0 is SD1's `last_hidden_state`, skip=1 the penultimate layer SD2 uses ("clip skip 2").
    Layers after the requested one are not run. Output dtype = the weights' dtype. `token_embeds` [B, T, width]
    replaces the token embedding lookup (textual-inversion vectors written in; HF's `inputs_embeds`)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = text_config(config)
        self.text_model = TextTransformer(self.config)
        width, projection = self.config["hidden_size"], self.config["projection_dim"]
        self.text_projection = nn.Linear(width, projection, bias=False) if projection else None

    def forward(self, tokens: torch.Tensor, skip: int = 0, token_embeds: torch.Tensor | None = None) -> torch.Tensor:
        layers = self.text_model.encoder.layers
        if not 0 <= skip <= len(layers):
            raise ValueError(f"skip must be in [0, {len(layers)}], got {skip}")
        x = self.text_model.embeddings(tokens, token_embeds)
        for layer in layers[: len(layers) - skip]:
            x = layer(x)
        return self.text_model.final_layer_norm(x)

    def hidden_and_pooled(
        self, tokens: torch.Tensor, skip: int, pooled: bool, token_embeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """SDXL's use of a tower: `hidden_states[-(1 + skip)]` *without* the final layer norm, and (`pooled`) the
        projected pooled output: `text_projection(final_layer_norm(last layer)[first end-of-text token])`, which
        needs every layer to run. Output dtype = the weights' dtype. `token_embeds` as in `forward`."""
        layers = self.text_model.encoder.layers
        if not 0 <= skip < len(layers):
            raise ValueError(f"skip must be in [0, {len(layers) - 1}], got {skip}")
        if pooled and self.text_projection is None:
            raise ValueError("this text encoder has no text_projection: it has no pooled output")
        x = self.text_model.embeddings(tokens, token_embeds)
        hidden = None
        for n, layer in enumerate(layers if pooled else layers[: len(layers) - skip]):
            x = layer(x)
            if n == len(layers) - 1 - skip:
                hidden = x
        assert hidden is not None
        if not pooled:
            return hidden, None
        eos = (tokens == EOS_TOKEN).int().argmax(dim=-1)  # the first end-of-text token (transformers' rule)
        last = self.text_model.final_layer_norm(x)[torch.arange(x.shape[0], device=x.device), eos.to(x.device)]
        assert self.text_projection is not None
        return hidden, self.text_projection(last)


# --- key conversions -------------------------------------------------------------------------------------------------

_OPENCLIP_DROPPED = ("text_projection", "logit_scale", "attn_mask")
_OPENCLIP_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_OPENCLIP_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_HF_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def _rename_layers(
    sd: dict[str, torch.Tensor],
    top: dict[str, str],
    pattern: re.Pattern[str],
    prefix: str,
    names: dict[str, str],
    fused: Any,
    what: str,
) -> dict[str, torch.Tensor]:
    """Rename a text encoder's keys between the two layouts: whole keys through `top`, per-layer keys (`pattern`
    gives layer, name, weight/bias) through `names` under `prefix` (with `{}` for the layer); the fused attention
    projection goes to `fused(out, prefix, name, kind, value)`, which returns False for a name it does not know."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
            continue
        m = pattern.match(key)
        if m is None:
            raise ValueError(f"{what}: unexpected text encoder key {key!r}")
        layer, name, kind = m.groups()
        layer_prefix = prefix.format(layer)
        if name in names:
            out[f"{layer_prefix}{names[name]}.{kind}"] = value
        elif not fused(out, layer_prefix, name, kind, value):
            raise ValueError(f"{what}: unexpected text encoder key {key!r}")
    return out


def openclip_to_hf(sd: dict[str, torch.Tensor], *, projection: bool = False) -> dict[str, torch.Tensor]:
    """OpenCLIP text keys (`cond_stage_model.model.` stripped) -> HF CLIP names. The fused `attn.in_proj_*` is
    split into q/k/v row views (no copy); `logit_scale` is dropped, and `text_projection` too unless `projection`
    (SDXL's bigG): OpenCLIP computes `x @ P`, so the HF Linear weight is P transposed (a view)."""

    def split_qkv(out: dict, prefix: str, name: str, kind: str, value: torch.Tensor) -> bool:
        if name != "attn.in_proj":
            return False
        for part, tensor in zip("qkv", value.chunk(3, dim=0), strict=True):
            out[f"{prefix}self_attn.{part}_proj.{kind}"] = tensor
        return True

    kept = {
        key.replace(".in_proj_weight", ".in_proj.weight").replace(".in_proj_bias", ".in_proj.bias"): value
        for key, value in sd.items()
        if key not in _OPENCLIP_DROPPED
    }
    out = _rename_layers(
        kept, _OPENCLIP_TOP, _RESBLOCK, "text_model.encoder.layers.{}.", _OPENCLIP_LAYER, split_qkv, "openclip_to_hf"
    )
    if projection and "text_projection" in sd:
        out["text_projection.weight"] = sd["text_projection"].t()
    return out


def hf_to_openclip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIP names -> SD2 OpenCLIP keys (inverse of `openclip_to_hf`; q/k/v are concatenated, which copies).
    `logit_scale` cannot be recovered and is not produced; `text_projection` is, where the HF model has one."""
    sd = normalize_hf_keys(sd)

    def join_qkv(out: dict, prefix: str, name: str, kind: str, value: torch.Tensor) -> bool:
        if name not in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            return False
        if name == "self_attn.q_proj":
            hf_prefix = prefix.replace("transformer.resblocks.", "text_model.encoder.layers.")
            parts = [sd[f"{hf_prefix}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{prefix}attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
        return True

    top = {hf: oc for oc, hf in _OPENCLIP_TOP.items()}
    names = {hf: oc for oc, hf in _OPENCLIP_LAYER.items()}
    projection = sd.pop("text_projection.weight", None)
    out = _rename_layers(sd, top, _HF_LAYER, "transformer.resblocks.{}.", names, join_qkv, "hf_to_openclip")
    if projection is not None:  # SDXL's bigG: OpenCLIP stores P with x @ P
        out["text_projection"] = projection.t().contiguous()
    return out


def normalize_hf_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIP state dicts come with or without the `text_model.` level (old SD1 files and transformers 5.x lack it)
    and sometimes with the `position_ids` buffer; return the names `CLIPTextEncoder` expects."""
    out = {}
    for key, value in sd.items():
        if key == "text_projection.weight":
            out[key] = value
            continue
        if not key.startswith("text_model."):
            key = "text_model." + key
        if key == "text_model.embeddings.position_ids":
            continue
        out[key] = value
    return out
