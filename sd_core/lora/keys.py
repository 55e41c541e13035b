"""Where a LoRA file's keys land in sd_core's networks: the per-family naming table and the name lookups.

LoRA files name layers in the trainer's module names, not the checkpoint's: kohya-ss writes `lora_unet_` + the
**diffusers** UNet path with dots as underscores for SD1/SD2 (`lora_unet_down_blocks_0_attentions_0_proj_in`) and the
Hugging Face CLIP path for the text encoder (`lora_te_text_model_encoder_layers_0_self_attn_q_proj`, SD2 too);
diffusers/PEFT files write the dotted paths under `unet.` / `text_encoder.`. sd_core's UNet is in the LDM layout, so
each of its layers is given its diffusers name (`ldm_to_diffusers_unet`) and both spellings are looked up.

`FAMILIES` is the one table: per model family, which key prefixes belong to which network and how that network's
layers are named in files. SDXL's kohya files name the UNet in the LDM layout (`lora_unet_input_blocks_4_1_...`,
sd_core's own paths, `label_emb` and `time_embed` included) and its two towers `lora_te1_` (CLIP-L) / `lora_te2_`
(bigG); its diffusers/PEFT files `unet.` (diffusers names) and `text_encoder.` / `text_encoder_2.`. The refiner has
its own entry: its UNet and the bigG tower only. Prefixes (and `markers`) of another family's entry identify a file
made for another model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from .errors import LoraError


@dataclass(frozen=True)
class Component:
    """One network of a family as LoRA files address it: the pipeline attribute, kohya's key prefix (`_` separators)
    and how kohya names its layers, diffusers/PEFT's dotted prefix and how they name them ("diffusers_unet": the
    diffusers UNet path of an LDM-layout UNet; "own": the module path itself, e.g. SDXL's kohya UNet keys), and which
    multiplier of `<lora:name:te:unet>` scales it ("te" or "unet")."""

    attribute: str
    kohya_prefix: str
    kohya_naming: str
    dotted_prefix: str
    dotted_naming: str
    multiplier: str


@dataclass(frozen=True)
class FamilyKeys:
    """The networks a family's LoRA files patch, and `markers`: key prefixes that only this family's files use (SD1's
    and SDXL's kohya files share `lora_unet_`, but name the UNet's layers in different layouts), so that a file made
    for it is recognised on another model."""

    name: str
    components: tuple[Component, ...]
    markers: tuple[str, ...] = ()


_UNET_DIFFUSERS = Component("unet", "lora_unet_", "diffusers_unet", "unet.", "diffusers_unet", "unet")
_TEXT_HF = Component("text_encoder", "lora_te_", "own", "text_encoder.", "own", "te")
_SD_MARKERS = ("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_", "lora_te_")
# SDXL: kohya-ss trains its own copy of the original (LDM-layout) UNet, so `lora_unet_` + sd_core's own module path;
# the two towers under `lora_te1_` (CLIP-L) and `lora_te2_` (OpenCLIP bigG), both in HF CLIP names, which are
# sd_core's (bigG's fused q/k/v is split into q_proj/k_proj/v_proj at loading, so each LoRA lands on its own layer)
_UNET_LDM = Component("unet", "lora_unet_", "own", "unet.", "diffusers_unet", "unet")
_SDXL_TEXT_L = Component("text_encoder", "lora_te1_", "own", "text_encoder.", "own", "te")
_SDXL_TEXT_G = Component("text_encoder_2", "lora_te2_", "own", "text_encoder_2.", "own", "te")
_LDM_UNET_MARKERS = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")

FAMILIES: dict[str, FamilyKeys] = {
    "sd1": FamilyKeys("SD1", (_UNET_DIFFUSERS, _TEXT_HF), _SD_MARKERS),
    "sd2": FamilyKeys("SD2", (_UNET_DIFFUSERS, _TEXT_HF), _SD_MARKERS),
    # SDXL files converted from diffusers' trainers (`convert_state_dict_to_kohya`) write `lora_unet_` + the
    # diffusers path, as ComfyUI reads them too: the UNet is indexed under both spellings
    "sdxl": FamilyKeys("SDXL", (_UNET_LDM, _UNET_DIFFUSERS, _SDXL_TEXT_L, _SDXL_TEXT_G), _LDM_UNET_MARKERS),
    # the refiner has only the bigG tower; its UNet (384 wide, 4 levels) takes no base-model LoRA's UNet layers
    "sdxl-refiner": FamilyKeys("SDXL refiner", (_UNET_LDM, _SDXL_TEXT_G), _LDM_UNET_MARKERS),
}
"""Family ("sd1", "sd2", "sdxl", "sdxl-refiner"; inpainting models share their base's entry) -> its LoRA naming."""

OTHER_FAMILIES: dict[str, str] = {
    "lora_transformer_": "a DiT model (SD3/Flux)",
    "transformer.": "a DiT model (SD3/Flux)",
}
"""Key prefixes of families without an entry in `FAMILIES` yet: a file with them is refused as made for that family
(prefixes that `FAMILIES` entries use are told apart by the entries themselves)."""


def family_keys(family: str) -> FamilyKeys:
    """The family's entry: its own ("sdxl-refiner"), else its base's ("sd1-inpaint" -> "sd1")."""
    base = family if family in FAMILIES else family.split("-")[0]
    if base not in FAMILIES:
        raise LoraError(f"LoRA files are not supported for {family} models yet (only {', '.join(FAMILIES)})")
    return FAMILIES[base]


# --- LDM UNet layer -> diffusers UNet layer --------------------------------------------------------------------------

_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_TOP = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",  # SDXL's vector MLP
    "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}


def _block_places(cfg: dict) -> tuple[dict[int, tuple[int, int | None]], dict[int, tuple[int, int]]]:
    """LDM input block index -> (level, resnet index or None for the downsampler); output block index -> (diffusers
    up-block index, resnet index), from the UNet config (`UNetModel.config`)."""
    levels = len(cfg["channel_mult"])
    inputs: dict[int, tuple[int, int | None]] = {}
    index = 1
    for level in range(levels):
        for j in range(cfg["num_res_blocks"][level]):
            inputs[index] = (level, j)
            index += 1
        if level != levels - 1:
            inputs[index] = (level, None)
            index += 1
    outputs: dict[int, tuple[int, int]] = {}
    index = 0
    for up, level in enumerate(reversed(range(levels))):
        for j in range(cfg["num_res_blocks_output"][level]):
            outputs[index] = (up, j)
            index += 1
    return inputs, outputs


def _resnet_part(rest: list[str]) -> str | None:
    for ldm, diffusers in _RESNET.items():
        parts = ldm.split(".")
        if rest[: len(parts)] == parts:
            return ".".join([diffusers, *rest[len(parts) :]])
    return None


def ldm_to_diffusers_unet(name: str, cfg: dict) -> str | None:
    """The diffusers UNet2DConditionModel name of an LDM-layout UNet module (`input_blocks.1.1.proj_in` ->
    `down_blocks.0.attentions.0.proj_in`), or None for a module diffusers has no counterpart for."""
    for ldm, diffusers in _TOP.items():
        if name == ldm or name.startswith(ldm + "."):
            return diffusers + name[len(ldm) :]
    parts = name.split(".")
    inputs, outputs = _block_places(cfg)
    if parts[0] == "input_blocks" and len(parts) >= 3:
        place = inputs.get(int(parts[1]))
        if place is None:
            return None
        level, j = place
        if j is None:  # Downsample: `input_blocks.N.0.op`
            return f"down_blocks.{level}.downsamplers.0.conv" + ("." + ".".join(parts[4:]) if parts[4:] else "")
        return _in_block(f"down_blocks.{level}", j, parts[2], parts[3:])
    if parts[0] == "middle_block" and len(parts) >= 2:
        k, attention = int(parts[1]), bool(cfg.get("transformer_depth_middle", 1))
        if attention and k == 1:
            return ".".join(["mid_block.attentions.0", *parts[2:]])
        resnet = _resnet_part(parts[2:])
        return None if resnet is None else f"mid_block.resnets.{k // 2 if attention else k}.{resnet}"
    if parts[0] == "output_blocks" and len(parts) >= 3:
        place = outputs.get(int(parts[1]))
        if place is None:
            return None
        up, j = place
        if parts[3:4] == ["conv"]:  # Upsample: `output_blocks.N.{1|2}.conv`
            return ".".join([f"up_blocks.{up}.upsamplers.0.conv", *parts[4:]])
        return _in_block(f"up_blocks.{up}", j, parts[2], parts[3:])
    return None


def _in_block(block: str, j: int, layer: str, rest: list[str]) -> str | None:
    if layer == "0":
        resnet = _resnet_part(rest)
        return None if resnet is None else f"{block}.resnets.{j}.{resnet}"
    return ".".join([f"{block}.attentions.{j}", *rest]) if layer == "1" else None


# --- the lookups ---------------------------------------------------------------------------------------------------


def patchable_layers(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, layer) of every layer a LoRA can patch: the Linear and Conv2d layers (packed and upcast ones are
    subclasses)."""
    for path, layer in module.named_modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            yield path, layer


def weight_shape(layer: nn.Module) -> tuple[int, ...]:
    """A Linear's or Conv2d's weight shape from its attributes (a packed weight's own shape is its blocked layout)."""
    if isinstance(layer, nn.Linear):
        return (layer.out_features, layer.in_features)
    return (layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size)


def source_names(naming: str, network: nn.Module) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Layer name as files write it (dotted, by `naming`) -> (the layer's path in `network`, its weight shape)."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for path, layer in patchable_layers(network):
        name = ldm_to_diffusers_unet(path, network.config) if naming == "diffusers_unet" else path
        if name is not None:
            out[name] = (path, weight_shape(layer))
            if name.startswith("text_model."):  # transformers 5 writes CLIP's names without this level
                out[name.removeprefix("text_model.")] = (path, weight_shape(layer))
    return out


class LayerIndex:
    """A model's patchable layers under the names its family's LoRA files use: `find(module_key)` -> (component,
    layer path, weight shape) for a kohya key stem (`lora_unet_down_blocks_0_...`) or a dotted one
    (`unet.down_blocks.0....`)."""

    def __init__(self, family: str, networks: dict[str, nn.Module]) -> None:
        self.family = family_keys(family)
        self._kohya: dict[str, tuple[Component, str, tuple[int, ...]]] = {}
        self._dotted: dict[str, tuple[Component, str, tuple[int, ...]]] = {}
        for component in self.family.components:
            network = networks[component.attribute]
            for name, (path, shape) in source_names(component.dotted_naming, network).items():
                self._dotted[component.dotted_prefix + name] = (component, path, shape)
            for name, (path, shape) in source_names(component.kohya_naming, network).items():
                self._kohya[component.kohya_prefix + name.replace(".", "_")] = (component, path, shape)
        own = {p for c in self.family.components for p in (c.kohya_prefix, c.dotted_prefix)}
        own |= set(self.family.markers)
        foreign: dict[str, list[str]] = {}
        for entry in FAMILIES.values():
            if entry.name == self.family.name:
                continue
            prefixes = [p for c in entry.components for p in (c.kohya_prefix, c.dotted_prefix)] + list(entry.markers)
            for prefix in prefixes:
                names = foreign.setdefault(prefix, [])
                if prefix not in own and entry.name not in names:
                    names.append(entry.name)
        for prefix, family in OTHER_FAMILIES.items():
            if prefix not in own:
                foreign.setdefault(prefix, []).append(family)
        # longest prefixes first: `lora_unet_input_blocks_` names SDXL where `lora_unet_` names no one; a prefix of
        # both SDXL and its refiner (`lora_te2_`) is named after the base model, what such files are made for
        self._foreign = {
            p: "/".join(x for x in n if not (x.endswith(" refiner") and x.removesuffix(" refiner") in n))
            for p, n in sorted(foreign.items(), key=lambda i: -len(i[0]))
            if n
        }

    def kohya_names(self) -> dict[str, tuple[Component, str, tuple[int, ...]]]:
        """Every patchable layer under its kohya name (what a trainer writes for this model)."""
        return dict(self._kohya)

    def find(self, module_key: str) -> tuple[Component, str, tuple[int, ...]] | None:
        return self._kohya.get(module_key) or self._dotted.get(module_key)

    def foreign(self, module_key: str) -> str | None:
        """The family a key belongs to when its prefix is not this family's (e.g. "SDXL" for `lora_te1_...`)."""
        if self.find(module_key) is not None:
            return None
        for prefix, family in self._foreign.items():
            if module_key.startswith(prefix):
                return family
        return None
