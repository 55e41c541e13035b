"""What a checkpoint is, read from its tensor shapes alone (no hub configs, no guessing from file names).

`infer_config(shapes)` takes full single-file LDM keys (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.*` or `cond_stage_model.model.*`; SDXL: `conditioner.embedders.N.transformer.*` in HF
names or `conditioner.embedders.N.model.*` in OpenCLIP names) and returns the constructor dicts of the networks plus the
facts the pipeline needs (family, text layer, pad token). The reference SD1.5/SD2 configs below are what the rules give
for the released models.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
HF_TEXT_PREFIX = "cond_stage_model.transformer."
OPENCLIP_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIX = "conditioner.embedders."
SDXL_LATENT_SCALE = 0.13025
OPENCLIP_FULL_DEPTH = {1024: 24, 1280: 32}
"""Layers of the complete OpenCLIP text towers by width (ViT-H for SD2, ViT-bigG for SDXL). Files converted back from
diffusers folders carry one layer fewer (diffusers drops SD2's unused last layer): such a tower is used whole."""

SD15_UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "channel_mult": [1, 2, 4, 4],
    "num_res_blocks": [2, 2, 2, 2],
    "num_res_blocks_output": [3, 3, 3, 3],
    "transformer_depth": [1, 1, 1, 0],
    "transformer_depth_output": [1, 1, 1, 0],
    "mid_block": True,
    "transformer_depth_middle": 1,
    "num_heads": 8,
    "num_head_channels": -1,
    "context_dim": 768,
    "use_linear_in_transformer": False,
}
SD2_UNET = {
    **SD15_UNET,
    "num_heads": -1,
    "num_head_channels": 64,
    "context_dim": 1024,
    "use_linear_in_transformer": True,
}
SD_VAE = {"in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "z_channels": 4,
          "embed_dim": 4}  # fmt: skip
SD15_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "num_layers": 12,
    "num_heads": 12,
    "intermediate_size": 3072,
    "max_positions": 77,
    "act": "quick_gelu",
}
SD2_TEXT = {
    **SD15_TEXT,
    "hidden_size": 1024,
    "num_layers": 24,
    "num_heads": 16,
    "intermediate_size": 4096,
    "act": "gelu",
}


@dataclass
class ModelConfig:
    family: str  # "sd1", "sd2", "sd1-inpaint", "sd2-inpaint", "sdxl", "sdxl-refiner", "sdxl-inpaint"
    unet: dict
    vae: dict
    text: dict
    latent_scale: float = 0.18215
    prediction: str = "eps"  # "v" for SD2-768 style models: not visible in the shapes, the loader probes or is told
    text_skip: int = 0  # hidden state -(1 + text_skip) goes through final_layer_norm
    pad_token: int = 49407
    inpainting: bool = False
    text_format: str = "hf"  # "hf": cond_stage_model.transformer.* ; "openclip": cond_stage_model.model.*
    params: dict[str, int] = field(default_factory=dict)  # parameter count per component: unet, vae, text
    # SDXL: one config, layer skip and pad token per tower (`conditioner.embedders.N`; `text` is the first's), the
    # width of each size number's embedding, and whether the vector ends with an aesthetic score (the refiner)
    text_encoders: list[dict] = field(default_factory=list)
    text_skips: list[int] = field(default_factory=list)
    pad_tokens: list[int] = field(default_factory=list)
    size_embed_dim: int = 0
    aesthetic: bool = False

    @property
    def sdxl(self) -> bool:
        return self.family.startswith("sdxl")

    @property
    def text_width(self) -> int:
        """The text encoders' widths together: the width of the textual-inversion embeddings the model takes (SDXL:
        CLIP-L's and bigG's, as A1111 counts an SDXL embedding)."""
        return sum(self.text_widths)

    @property
    def text_widths(self) -> tuple[int, ...]:
        """Each text tower's width, in checkpoint order: the towers a textual-inversion embedding must be made for
        (SDXL's `clip_l` and `clip_g`; the refiner's bigG alone)."""
        towers = self.text_encoders if self.sdxl and self.text_encoders else [self.text]
        return tuple(int(t["hidden_size"]) for t in towers)


def _sub(shapes: dict[str, tuple[int, ...]], prefix: str) -> dict[str, tuple[int, ...]]:
    return {k[len(prefix) :]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}


def key_indices(shapes: dict, pattern: str) -> list[int]:
    """Sorted distinct integers N in the keys matching `pattern` (a regex with one `(\\d+)` group, matched at the
    start of the key)."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes if (m := rx.match(k))})


def _need(shapes: dict, key: str, what: str) -> tuple[int, ...]:
    """The shape at `key`, or an error naming the network (`what`: "UNet", "ControlNet", ...) and the key."""
    if key not in shapes:
        raise ValueError(f"not a Stable Diffusion {what}: missing {key!r}")
    return shapes[key]


def transformer_depth_at(shapes: dict, prefix: str) -> int:
    """Number of transformer blocks in the SpatialTransformer at `prefix` (0 if there is none)."""
    return len(key_indices(shapes, re.escape(prefix) + r"transformer_blocks\.(\d+)\."))


def _uniform(values: list[int], what: str, network: str = "UNet") -> int:
    if len(set(values)) > 1:
        raise ValueError(f"unsupported {network} layout: {what} varies within a resolution level ({values})")
    return values[0] if values else 0


def input_levels(shapes: dict, model_channels: int, network: str) -> tuple[list[int], list[int], list[int]]:
    """The input side that UNets and ControlNets (a copy of a UNet's encoder) share: ResBlocks grouped into levels,
    a Downsample (`.0.op`) closing each level but the last. Returns per level the ResBlock count, the channel
    multiplier and the transformer depth; errors name `network`."""
    res_counts: list[int] = [0]
    level_ch: list[list[int]] = [[]]
    depths: list[list[int]] = [[]]
    blocks = key_indices(shapes, r"input_blocks\.(\d+)\.")
    if blocks != list(range(len(blocks))):
        raise ValueError(f"unsupported {network} layout: input_blocks indices {blocks}")
    for n in blocks[1:]:
        if f"input_blocks.{n}.0.op.weight" in shapes:
            res_counts.append(0)
            level_ch.append([])
            depths.append([])
            continue
        res_counts[-1] += 1
        level_ch[-1].append(_need(shapes, f"input_blocks.{n}.0.out_layers.3.weight", network)[0])
        depths[-1].append(transformer_depth_at(shapes, f"input_blocks.{n}.1."))
    if 0 in res_counts:
        raise ValueError(f"unsupported {network} layout: a resolution level without ResBlocks")
    channel_mult = []
    for chans in level_ch:
        ch = _uniform(chans, "channel count", network)
        if ch % model_channels:
            raise ValueError(f"unsupported {network} layout: {ch} channels is not a multiple of {model_channels}")
        channel_mult.append(ch // model_channels)
    return res_counts, channel_mult, [_uniform(d, "transformer depth", network) for d in depths]


def infer_unet_config(shapes: dict[str, tuple[int, ...]], sd2: bool | None = None) -> dict:
    """UNet config from shapes with `model.diffusion_model.` stripped. `sd2` picks the head rule (8 heads vs
    64-channel heads); None decides from the context width (1024 -> SD2, 768 -> SD1, else linear proj_in -> SD2).
    A `label_emb` (SDXL's size-conditioning vector) gives `adm_in_channels`."""
    conv_in = _need(shapes, "input_blocks.0.0.weight", "UNet")
    conv_out = _need(shapes, "out.2.weight", "UNet")
    _need(shapes, "time_embed.0.weight", "UNet")
    label = shapes.get("label_emb.0.0.weight")
    if label is None and any(k.startswith("label_emb.") for k in shapes):
        raise ValueError("unsupported UNet: a label_emb that is not SDXL's (class-conditioned models such as unCLIP)")
    mc = conv_in[0]

    res_counts, channel_mult, transformer_depth = input_levels(shapes, mc, "UNet")
    levels = len(res_counts)

    # output side, deepest level first: an Upsample (`.1.conv` or `.2.conv`) closes each level but the shallowest
    out_counts: list[int] = [0]
    out_depths: list[list[int]] = [[]]
    out_blocks = key_indices(shapes, r"output_blocks\.(\d+)\.")
    for n in out_blocks:
        out_counts[-1] += 1
        out_depths[-1].append(transformer_depth_at(shapes, f"output_blocks.{n}.1."))
        if f"output_blocks.{n}.1.conv.weight" in shapes or f"output_blocks.{n}.2.conv.weight" in shapes:
            out_counts.append(0)
            out_depths.append([])
    if len(out_counts) != levels or 0 in out_counts:
        raise ValueError("unsupported UNet layout: output_blocks do not mirror the input_blocks levels")
    out_counts.reverse()
    out_depths.reverse()

    mid = key_indices(shapes, r"middle_block\.(\d+)\.")
    depth_middle = transformer_depth_at(shapes, "middle_block.1.") if mid else 0

    context_dims = {v[1] for k, v in shapes.items() if k.endswith("attn2.to_k.weight")}
    if len(context_dims) != 1:
        raise ValueError(f"not a Stable Diffusion UNet: cross-attention context widths {sorted(context_dims)}")
    context_dim = context_dims.pop()
    proj_in = [v for k, v in shapes.items() if k.endswith(".proj_in.weight")]
    linear = len(proj_in[0]) == 2
    if sd2 is None:
        sd2 = context_dim == 1024 or (context_dim != 768 and linear)
    return {
        "in_channels": conv_in[1],
        "out_channels": conv_out[0],
        "model_channels": mc,
        "channel_mult": channel_mult,
        "num_res_blocks": res_counts,
        "num_res_blocks_output": out_counts,
        "transformer_depth": transformer_depth,
        "transformer_depth_output": [_uniform(d, "transformer depth") for d in out_depths],
        "mid_block": bool(mid),
        "transformer_depth_middle": depth_middle,
        "num_heads": -1 if sd2 else 8,
        "num_head_channels": 64 if sd2 else -1,
        "context_dim": context_dim,
        "use_linear_in_transformer": linear,
        **({"adm_in_channels": label[1]} if label else {}),
    }


def infer_vae_config(shapes: dict[str, tuple[int, ...]]) -> dict:
    """VAE config from shapes with `first_stage_model.` stripped."""
    conv_in = _need(shapes, "encoder.conv_in.weight", "VAE")
    ch = conv_in[0]
    levels = key_indices(shapes, r"encoder\.down\.(\d+)\.")
    if not levels:
        raise ValueError("not a Stable Diffusion VAE: missing 'encoder.down.0.*'")
    ch_mult = [_need(shapes, f"encoder.down.{i}.block.0.conv2.weight", "VAE")[0] // ch for i in levels]
    return {
        "in_channels": conv_in[1],
        "out_ch": _need(shapes, "decoder.conv_out.weight", "VAE")[0],
        "ch": ch,
        "ch_mult": ch_mult,
        "num_res_blocks": len(key_indices(shapes, r"encoder\.down\.0\.block\.(\d+)\.")),
        "z_channels": _need(shapes, "decoder.conv_in.weight", "VAE")[1],
        "embed_dim": _need(shapes, "post_quant_conv.weight", "VAE")[1],
    }


def infer_text_config(shapes: dict[str, tuple[int, ...]], openclip: bool, act: str, projection: bool = False) -> dict:
    """Text encoder config from shapes with the `cond_stage_model.transformer.` / `.model.` prefix stripped. With
    `projection` (SDXL's bigG, whose pooled output is used), its `text_projection` gives `projection_dim`: OpenCLIP
    stores it [width, dim], HF as a Linear; SD2 ignores its own."""
    projection = shapes.get("text_projection" if openclip else "text_projection.weight") if projection else None
    shapes = {k: v for k, v in shapes.items() if not k.startswith("text_projection")}
    if openclip:
        tok = _need(shapes, "token_embedding.weight", "OpenCLIP text encoder")
        pos = _need(shapes, "positional_embedding", "OpenCLIP text encoder")
        layers = key_indices(shapes, r"transformer\.resblocks\.(\d+)\.")
        fc1 = _need(shapes, "transformer.resblocks.0.mlp.c_fc.weight", "OpenCLIP text encoder")
    else:
        shapes = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in shapes.items()}
        tok = _need(shapes, "text_model.embeddings.token_embedding.weight", "CLIP text encoder")
        pos = _need(shapes, "text_model.embeddings.position_embedding.weight", "CLIP text encoder")
        layers = key_indices(shapes, r"text_model\.encoder\.layers\.(\d+)\.")
        fc1 = _need(shapes, "text_model.encoder.layers.0.mlp.fc1.weight", "CLIP text encoder")
    return {
        "vocab_size": tok[0],
        "hidden_size": tok[1],
        "num_layers": len(layers),
        "num_heads": max(1, tok[1] // 64),
        "intermediate_size": fc1[0],
        "max_positions": pos[0],
        "act": act,
        **({} if projection is None else {"projection_dim": projection[1 if openclip else 0]}),
    }


def openclip_skip(config: dict) -> int:
    """The layer skip of an OpenCLIP tower whose penultimate layer a model uses (SD2, SDXL's bigG): 1 where the
    whole tower is there, 0 where its last layer is missing (`OPENCLIP_FULL_DEPTH`), so the same layer is used."""
    full = OPENCLIP_FULL_DEPTH.get(config["hidden_size"], config["num_layers"])
    return 1 if config["num_layers"] >= full else 0


def _count(shapes: dict[str, tuple[int, ...]], projection: bool = False) -> int:
    """Parameters the network loads: the position_ids buffer and OpenCLIP's logit scale are not counted, nor SD2's
    unused projection (`projection`: SDXL's bigG uses its own)."""
    unused = ("position_ids", "logit_scale") + (() if projection else ("text_projection",))
    return sum(math.prod(s) for k, s in shapes.items() if not k.endswith(unused))


def infer_config(shapes: dict[str, tuple[int, ...]]) -> ModelConfig:
    """Family and network configs of a single-file checkpoint (full LDM keys -> shapes).

    Rules: context width 1024 -> SD2, 768 -> SD1 (other widths, i.e. tiny test models: linear proj_in -> SD2);
    9 UNet input channels -> inpainting; OpenCLIP text keys -> penultimate layer (text_skip 1; a tower missing its last
    layer, as files converted back from diffusers folders: its last, `openclip_skip`), whereas an SD2 text encoder
    already in HF names (diffusers folders keep 23 of the 24 layers) uses its last layer (text_skip 0).
    `conditioner.embedders.*` text keys: SDXL (`infer_sdxl_config`)."""
    if any(k.startswith(SDXL_TEXT_PREFIX) for k in shapes):
        return infer_sdxl_config(shapes)
    unet_shapes = _sub(shapes, UNET_PREFIX)
    vae_shapes = _sub(shapes, VAE_PREFIX)
    hf_shapes = _sub(shapes, HF_TEXT_PREFIX)
    oc_shapes = _sub(shapes, OPENCLIP_TEXT_PREFIX)
    missing = [
        name
        for name, part in (
            (f"UNet ({UNET_PREFIX}*)", unet_shapes),
            (f"VAE ({VAE_PREFIX}*)", vae_shapes),
            (f"text encoder ({HF_TEXT_PREFIX}* or {OPENCLIP_TEXT_PREFIX}*)", hf_shapes or oc_shapes),
        )
        if not part
    ]
    if missing:
        raise ValueError("not a Stable Diffusion checkpoint: no " + ", no ".join(missing))

    unet = infer_unet_config(unet_shapes)
    sd2 = unet["num_head_channels"] != -1
    openclip = bool(oc_shapes) and not hf_shapes
    text = infer_text_config(oc_shapes if openclip else hf_shapes, openclip, "gelu" if sd2 else "quick_gelu")
    if text["hidden_size"] != unet["context_dim"]:
        raise ValueError(
            f"text encoder width {text['hidden_size']} does not match the UNet context width {unet['context_dim']}"
        )
    inpainting = unet["in_channels"] == 9
    family = ("sd2" if sd2 else "sd1") + ("-inpaint" if inpainting else "")
    return ModelConfig(
        family=family,
        unet=unet,
        vae=infer_vae_config(vae_shapes),
        text=text,
        text_skip=openclip_skip(text) if openclip else 0,
        pad_token=0 if sd2 else 49407,
        inpainting=inpainting,
        text_format="openclip" if openclip else "hf",
        params={"unet": _count(unet_shapes), "vae": _count(vae_shapes), "text": _count(oc_shapes or hf_shapes)},
    )


def _sdxl_towers(shapes: dict[str, tuple[int, ...]]) -> list[tuple[dict, bool]]:
    """(shapes, OpenCLIP names?) of each `conditioner.embedders.N` text tower, in order."""
    towers = []
    for n in key_indices(shapes, re.escape(SDXL_TEXT_PREFIX) + r"(\d+)\."):
        hf, oc = (_sub(shapes, f"{SDXL_TEXT_PREFIX}{n}.{kind}.") for kind in ("transformer", "model"))
        if not (hf or oc):
            raise ValueError(f"unsupported SDXL text encoder at {SDXL_TEXT_PREFIX}{n}.* (no transformer.* or model.*)")
        towers.append((oc or hf, bool(oc)))
    return towers


def infer_sdxl_config(shapes: dict[str, tuple[int, ...]]) -> ModelConfig:
    """SDXL base / inpaint (two towers: CLIP ViT-L, then OpenCLIP ViT-bigG) or refiner (bigG alone), from shapes.

    Context = the towers' widths added; `y` = the bigG's projection width + 6 size numbers (base) or 5 (refiner:
    original size, crop, aesthetic score), each `size_embed_dim` wide; the UNet's `label_emb` must take exactly that.
    Both towers give their penultimate layer without the final norm (an OpenCLIP bigG missing its last layer: its
    last, `openclip_skip`); CLIP-L pads with end-of-text, bigG with 0."""
    unet_shapes, vae_shapes = _sub(shapes, UNET_PREFIX), _sub(shapes, VAE_PREFIX)
    towers = _sdxl_towers(shapes)
    if not unet_shapes or not vae_shapes:
        missing = [p for p, part in ((UNET_PREFIX, unet_shapes), (VAE_PREFIX, vae_shapes)) if not part]
        raise ValueError("not a Stable Diffusion XL checkpoint: no " + ", no ".join(f"{p}*" for p in missing))
    if len(towers) not in (1, 2):
        raise ValueError(f"unsupported SDXL checkpoint: {len(towers)} text encoders (base: 2, refiner: 1)")
    configs = [
        infer_text_config(tower, openclip, "quick_gelu" if len(towers) == 2 and n == 0 else "gelu", projection=True)
        for n, (tower, openclip) in enumerate(towers)
    ]
    skips = [openclip_skip(c) if openclip else 1 for c, (_, openclip) in zip(configs, towers, strict=True)]
    unet = infer_unet_config(unet_shapes, sd2=True)
    width = sum(c["hidden_size"] for c in configs)
    if width != unet["context_dim"]:
        raise ValueError(
            f"SDXL text encoders are {' + '.join(str(c['hidden_size']) for c in configs)} wide, the UNet's context "
            f"{unet['context_dim']}: a text encoder is missing or from another model"
        )
    pooled, numbers = configs[-1].get("projection_dim", 0), 5 if len(towers) == 1 else 6
    if not pooled:
        raise ValueError(f"SDXL text encoder {SDXL_TEXT_PREFIX}{len(towers) - 1}: no text_projection")
    adm = unet.get("adm_in_channels", 0)
    if not adm or (adm - pooled) <= 0 or (adm - pooled) % numbers:
        raise ValueError(f"SDXL UNet label_emb takes {adm} numbers, not {pooled} + {numbers} size embeddings")
    inpainting = unet["in_channels"] == 9
    family = "sdxl-refiner" if len(towers) == 1 else "sdxl-inpaint" if inpainting else "sdxl"
    return ModelConfig(
        family=family,
        unet=unet,
        vae=infer_vae_config(vae_shapes),
        text=configs[0],
        latent_scale=SDXL_LATENT_SCALE,
        prediction="v" if "v_pred" in shapes else "eps",
        text_skip=skips[0],
        pad_token=49407 if len(towers) == 2 else 0,
        inpainting=inpainting,
        text_format="sdxl",
        params={
            "unet": _count(unet_shapes),
            "vae": _count(vae_shapes),
            "text": sum(_count(tower, projection=True) for tower, _ in towers),
        },
        text_encoders=configs,
        text_skips=skips,
        pad_tokens=[49407 if len(towers) == 2 and n == 0 else 0 for n in range(len(towers))],
        size_embed_dim=(adm - pooled) // numbers,
        aesthetic=len(towers) == 1,
    )
