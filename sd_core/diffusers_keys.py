"""Rename diffusers-folder keys (UNet, VAE, CLIP text encoder) to the single-file LDM layout.

The two layouts hold the same tensors; only the names differ, by a few fixed renames plus block index arithmetic.
The arithmetic follows each folder's own `config.json` (blocks, resnets per block), so distilled models with fewer
resnets or no mid block map as well as SD1.5. Every function here works on names only; the caller moves tensors.
A key that no rule knows raises `ValueError` naming it: silently dropping weights would hide a broken model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."

# diffusers ResnetBlock2D parameter -> LDM ResBlock parameter.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
# diffusers VAE attention (current and pre-0.14 names) -> LDM AttnBlock.
_VAE_ATTN = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}
_VAE_CONV_ATTENTION = re.compile(r"first_stage_model\.(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight")
_TEXT_ROOTS = ("embeddings.", "encoder.", "final_layer_norm.")

# Class defaults of diffusers' UNet2DConditionModel / AutoencoderKL, for config.json files that omit a field.
_UNET_DEFAULT_BLOCKS = 4
_UNET_DEFAULT_LAYERS = 2
_VAE_DEFAULT_BLOCKS = 1
_VAE_DEFAULT_LAYERS = 1

Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _layers(config: Mapping, n_blocks: int, default: int) -> list[int]:
    """`layers_per_block` as a per-block list (diffusers accepts an int or one value per block)."""
    value = config.get("layers_per_block", default)
    if isinstance(value, int):
        return [value] * n_blocks
    values = [int(v) for v in value]
    if len(values) != n_blocks:
        raise ValueError(f"layers_per_block {values} does not match {n_blocks} blocks")
    return values


def _check(index: int, limit: int, what: str) -> int:
    if index >= limit:
        raise ValueError(f"{what} index {index} is out of range for the config ({limit} per block)")
    return index


def _resnet(name: str, table: Mapping[str, str], key: str) -> str:
    if name not in table:
        raise ValueError(f"unknown resnet parameter {name!r} in {key!r}")
    return table[name]


def _apply(rules: list[Rule], key: str, component: str) -> str:
    for pattern, build in rules:
        match = pattern.fullmatch(key)
        if match:
            return build(match)
    raise ValueError(f"unknown diffusers {component} key {key!r}")


def _unet_rules(config: Mapping, keys: set[str]) -> list[Rule]:
    n = len(config.get("down_block_types") or ()) or _UNET_DEFAULT_BLOCKS
    down_layers = _layers(config, n, _UNET_DEFAULT_LAYERS)
    up_layers = [count + 1 for count in reversed(down_layers)]  # up blocks also consume the downsampler's skip
    # LDM numbers the blocks flat: input_blocks.0 is conv_in, then per level its resnets and (except the last) a
    # downsampler; output_blocks per level its resnets, the last of which also carries the upsampler.
    down_start = [1 + sum(count + 1 for count in down_layers[:i]) for i in range(n)]
    up_start = [sum(up_layers[:i]) for i in range(n)]
    up_has_attn = [any(k.startswith(f"up_blocks.{i}.attentions.") for k in keys) for i in range(n)]

    def level(match: re.Match[str]) -> int:
        return _check(int(match["i"]), n, "block")

    def down(match: re.Match[str]) -> int:
        i = level(match)
        return down_start[i] + _check(int(match["j"]), down_layers[i], "down resnet/attention")

    def up(match: re.Match[str]) -> int:
        i = level(match)
        return up_start[i] + _check(int(match["j"]), up_layers[i], "up resnet/attention")

    def rn(match: re.Match[str]) -> str:
        return _resnet(match["p"], _UNET_RESNET, match.string)

    def downsample(m: re.Match[str]) -> str:
        i = level(m)
        return f"input_blocks.{down_start[i] + down_layers[i]}.0.op.{m['rest']}"

    def upsample(m: re.Match[str]) -> str:
        i = level(m)
        return f"output_blocks.{up_start[i] + up_layers[i] - 1}.{2 if up_has_attn[i] else 1}.conv.{m['rest']}"

    def mid_resnet(m: re.Match[str]) -> str:
        return f"middle_block.{2 * int(m['j'])}.{rn(m)}.{m['rest']}"

    def mid_attention(m: re.Match[str]) -> str:
        return f"middle_block.{2 * int(m['j']) + 1}.{m['rest']}"

    r = re.compile
    res = r"(?P<j>\d+)\.(?P<p>\w+)\.(?P<rest>.+)"
    return [
        (r(r"conv_in\.(?P<rest>.+)"), lambda m: f"input_blocks.0.0.{m['rest']}"),
        (r(r"time_embedding\.linear_1\.(?P<rest>.+)"), lambda m: f"time_embed.0.{m['rest']}"),
        (r(r"time_embedding\.linear_2\.(?P<rest>.+)"), lambda m: f"time_embed.2.{m['rest']}"),
        (r(r"add_embedding\.linear_1\.(?P<rest>.+)"), lambda m: f"label_emb.0.0.{m['rest']}"),
        (r(r"add_embedding\.linear_2\.(?P<rest>.+)"), lambda m: f"label_emb.0.2.{m['rest']}"),
        (r(r"conv_norm_out\.(?P<rest>.+)"), lambda m: f"out.0.{m['rest']}"),
        (r(r"conv_out\.(?P<rest>.+)"), lambda m: f"out.2.{m['rest']}"),
        (r(rf"down_blocks\.(?P<i>\d+)\.resnets\.{res}"), lambda m: f"input_blocks.{down(m)}.0.{rn(m)}.{m['rest']}"),
        (
            r(r"down_blocks\.(?P<i>\d+)\.attentions\.(?P<j>\d+)\.(?P<rest>.+)"),
            lambda m: f"input_blocks.{down(m)}.1.{m['rest']}",
        ),
        (r(r"down_blocks\.(?P<i>\d+)\.downsamplers\.0\.conv\.(?P<rest>.+)"), downsample),
        (r(rf"mid_block\.resnets\.{res}"), mid_resnet),
        (r(r"mid_block\.attentions\.(?P<j>\d+)\.(?P<rest>.+)"), mid_attention),
        (r(rf"up_blocks\.(?P<i>\d+)\.resnets\.{res}"), lambda m: f"output_blocks.{up(m)}.0.{rn(m)}.{m['rest']}"),
        (
            r(r"up_blocks\.(?P<i>\d+)\.attentions\.(?P<j>\d+)\.(?P<rest>.+)"),
            lambda m: f"output_blocks.{up(m)}.1.{m['rest']}",
        ),
        (r(r"up_blocks\.(?P<i>\d+)\.upsamplers\.0\.conv\.(?P<rest>.+)"), upsample),
    ]


def _vae_rules(config: Mapping) -> list[Rule]:
    n = len(config.get("up_block_types") or ()) or _VAE_DEFAULT_BLOCKS
    layers = int(config.get("layers_per_block", _VAE_DEFAULT_LAYERS))  # the decoder has one resnet more per level

    def level(m: re.Match[str]) -> int:
        return _check(int(m["i"]), n, "block")

    def rn(m: re.Match[str]) -> str:
        return _resnet(m["p"], _VAE_RESNET, m.string)

    def attn(m: re.Match[str]) -> str:
        return f"{m['side']}.mid.attn_1.{_VAE_ATTN[m['p']]}.{m['rest']}"

    def encoder_block(m: re.Match[str]) -> str:
        j = _check(int(m["j"]), layers, "encoder resnet")
        return f"encoder.down.{level(m)}.block.{j}.{rn(m)}.{m['rest']}"

    def decoder_block(m: re.Match[str]) -> str:
        j = _check(int(m["j"]), layers + 1, "decoder resnet")
        return f"decoder.up.{n - 1 - level(m)}.block.{j}.{rn(m)}.{m['rest']}"

    r = re.compile
    res = r"(?P<j>\d+)\.(?P<p>\w+)\.(?P<rest>.+)"
    attn_names = "|".join(re.escape(name) for name in _VAE_ATTN)
    return [
        (r(r"(?P<side>encoder|decoder)\.conv_norm_out\.(?P<rest>.+)"), lambda m: f"{m['side']}.norm_out.{m['rest']}"),
        (r(r"(?:encoder|decoder)\.conv_(?:in|out)\..+|(?:post_)?quant_conv\..+"), lambda m: m.string),
        (r(rf"encoder\.down_blocks\.(?P<i>\d+)\.resnets\.{res}"), encoder_block),
        (
            r(r"encoder\.down_blocks\.(?P<i>\d+)\.downsamplers\.0\.conv\.(?P<rest>.+)"),
            lambda m: f"encoder.down.{level(m)}.downsample.conv.{m['rest']}",
        ),
        (r(rf"decoder\.up_blocks\.(?P<i>\d+)\.resnets\.{res}"), decoder_block),
        (
            r(r"decoder\.up_blocks\.(?P<i>\d+)\.upsamplers\.0\.conv\.(?P<rest>.+)"),
            lambda m: f"decoder.up.{n - 1 - level(m)}.upsample.conv.{m['rest']}",
        ),
        (
            r(rf"(?P<side>encoder|decoder)\.mid_block\.resnets\.{res}"),
            lambda m: f"{m['side']}.mid.block_{int(m['j']) + 1}.{rn(m)}.{m['rest']}",
        ),
        (
            r(rf"(?P<side>encoder|decoder)\.mid_block\.attentions\.0\.(?P<p>{attn_names})\.(?P<rest>.+)"),
            attn,
        ),
    ]


def unet_key_map(keys: Iterable[str], config: Mapping) -> dict[str, str]:
    """diffusers UNet2DConditionModel key -> LDM key (with `model.diffusion_model.`), per the folder's config."""
    keys = set(keys)
    rules = _unet_rules(config, keys)
    return {key: UNET_PREFIX + _apply(rules, key, "UNet") for key in sorted(keys)}


def vae_key_map(keys: Iterable[str], config: Mapping) -> dict[str, str]:
    """diffusers AutoencoderKL key -> LDM key (with `first_stage_model.`); decoder blocks are numbered in reverse."""
    rules = _vae_rules(config)
    return {key: VAE_PREFIX + _apply(rules, key, "VAE") for key in sorted(set(keys))}


def text_key_map(keys: Iterable[str], prefix: str = "cond_stage_model.transformer.") -> dict[str, str]:
    """HF CLIPTextModel(WithProjection) key (transformers 4.x `text_model.*` or 5.x without it) -> LDM key under
    `prefix` (SDXL: `conditioner.embedders.N.transformer.`); drops `position_ids` (a constant buffer, not a weight)."""
    mapping = {}
    for key in sorted(set(keys)):
        name = key.removeprefix("text_model.")
        if name == "embeddings.position_ids":
            continue
        if name == "text_projection.weight":
            mapping[key] = prefix + name
            continue
        if not name.startswith(_TEXT_ROOTS):
            raise ValueError(f"unknown text encoder key {key!r}")
        mapping[key] = prefix + "text_model." + name
    return mapping


def is_vae_conv_attention(ldm_key: str) -> bool:
    """True for the VAE mid-block attention weights that LDM stores as 1x1 convs but diffusers as Linear."""
    return _VAE_CONV_ATTENTION.fullmatch(ldm_key) is not None


def ldm_shape(ldm_key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The LDM shape of a renamed tensor: Linear [C, C] becomes a 1x1 conv [C, C, 1, 1] for VAE attention."""
    if len(shape) == 2 and is_vae_conv_attention(ldm_key):
        return (*shape, 1, 1)
    return tuple(shape)
