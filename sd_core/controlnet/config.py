"""What a ControlNet is, read from its tensor shapes alone: the UNet-encoder config, the hint block's convs, and the
family it belongs to (a ControlNet guides only models of its own family and size).

Keys are the original layout's with the `control_model.` prefix stripped (`sd_core.controlnet.files` strips it and
maps diffusers folders to it). Heads are not in any shape: SD1's 8 heads, SD2's and SDXL's 64-wide heads, as the
families' UNets (`sd_core.model_config.infer_unet_config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..model_config import input_levels, key_indices, transformer_depth_at

FAMILIES = ("sd1", "sd2", "sdxl")
HINT_CONVS = 8
"""Convs in the hint block: in, three pairs (the second of each halves the size: 8x in all), out."""


@dataclass(frozen=True)
class ControlNetConfig:
    """`family`: "sd1", "sd2" or "sdxl"; `unet`: the encoder's config in `sd_core.models.unet` terms; `hint`: the
    (in, out) channels of each `input_hint_block` conv, in order (the 3rd, 5th and 7th halve the size, so an image at
    pixel size meets the latents)."""

    family: str
    unet: dict
    hint: tuple[tuple[int, int], ...]
    params: int = 0


def _need(shapes: dict, key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"not a ControlNet: missing {key!r}")
    return tuple(shapes[key])


def is_controlnet(shapes: dict) -> bool:
    """Whether these keys (prefix stripped) are a ControlNet's: a hint block and zero convs."""
    return any(k.startswith("input_hint_block.") for k in shapes) and any(k.startswith("zero_convs.") for k in shapes)


def infer_controlnet_config(shapes: dict[str, tuple[int, ...]]) -> ControlNetConfig:
    """The config of a ControlNet in the original layout (prefix stripped) from its shapes.

    Family: a `label_emb` (SDXL's vector) -> "sdxl"; else the cross-attention width, 768 -> "sd1", 1024 -> "sd2",
    other widths (small test models) by the projection: 1x1 conv -> "sd1", Linear -> "sd2"."""
    if not is_controlnet(shapes):
        raise ValueError("not a ControlNet: no input_hint_block.* and zero_convs.* keys")
    conv_in = _need(shapes, "input_blocks.0.0.weight")
    _need(shapes, "time_embed.0.weight")
    _need(shapes, "middle_block_out.0.weight")
    mc = conv_in[0]

    res_counts, channel_mult, transformer_depth = input_levels(shapes, mc, "ControlNet")
    blocks = key_indices(shapes, r"input_blocks\.(\d+)\.")
    zero_convs = key_indices(shapes, r"zero_convs\.(\d+)\.")
    if zero_convs != blocks:
        raise ValueError(f"not a ControlNet: {len(zero_convs)} zero convs for {len(blocks)} input blocks")

    mid = key_indices(shapes, r"middle_block\.(\d+)\.")
    context_dims = {v[1] for k, v in shapes.items() if k.endswith("attn2.to_k.weight")}
    if len(context_dims) != 1:
        raise ValueError(f"not a ControlNet: cross-attention context widths {sorted(context_dims)}")
    context_dim = context_dims.pop()
    proj_in = [v for k, v in shapes.items() if k.endswith(".proj_in.weight")]
    linear = len(proj_in[0]) == 2
    label = shapes.get("label_emb.0.0.weight")
    if label is not None:
        family = "sdxl"
    elif context_dim in (768, 1024):
        family = "sd1" if context_dim == 768 else "sd2"
    else:
        family = "sd2" if linear else "sd1"
    sd1 = family == "sd1"
    unet = {
        "in_channels": conv_in[1],
        "out_channels": 4,
        "model_channels": mc,
        "channel_mult": channel_mult,
        "num_res_blocks": res_counts,
        "transformer_depth": transformer_depth,
        "mid_block": bool(mid),
        "transformer_depth_middle": transformer_depth_at(shapes, "middle_block.1.") if mid else 0,
        "num_heads": 8 if sd1 else -1,
        "num_head_channels": -1 if sd1 else 64,
        "context_dim": context_dim,
        "use_linear_in_transformer": linear,
        **({"adm_in_channels": label[1]} if label else {}),
    }
    hint_indices = key_indices(shapes, r"input_hint_block\.(\d+)\.")
    if hint_indices != list(range(0, 2 * len(hint_indices), 2)) or len(hint_indices) < 2:
        raise ValueError(f"unsupported ControlNet hint block: convs at {hint_indices} (expected 0, 2, 4, ...)")
    hint = tuple(
        (_need(shapes, f"input_hint_block.{i}.weight")[1], _need(shapes, f"input_hint_block.{i}.weight")[0])
        for i in hint_indices
    )
    if hint[-1][1] != mc:
        raise ValueError(f"not a ControlNet: the hint block ends with {hint[-1][1]} channels, the encoder has {mc}")
    if len(hint) != HINT_CONVS:
        raise ValueError(f"unsupported ControlNet hint block: {len(hint)} convs (the 8x smaller latents need 8)")
    params = sum(math.prod(s) for s in shapes.values())
    return ControlNetConfig(family=family, unet=unet, hint=hint, params=params)
