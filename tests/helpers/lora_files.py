"""Random LoRA files in the formats that circulate, for the tiny models of `model_fixtures`.

Layer names come from the diffusers models themselves (the trainers' names): kohya-ss writes `lora_unet_` /
`lora_te_` + the module path with `_` for `.`; PEFT/diffusers the dotted path under `unet.` / `text_encoder.`.
SDXL (a second text encoder given): kohya trains its own copy of the original UNet, so its UNet keys are the LDM
names (the diffusers names renamed by sd_core's checkpoint key map, which the SDXL parity tests check), the towers
`lora_te1_` / `lora_te2_`; PEFT adds `text_encoder_2.`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
)
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
SDXL_UNET_TARGETS = (
    *UNET_TARGETS,
    "conv_in",
    "time_embedding.linear_1",
    "add_embedding.linear_1",
    "add_embedding.linear_2",
)
"""SDXL's kohya files may also name the vector MLP (`label_emb`), the time embedding and the first conv."""


def _ldm_names(unet: torch.nn.Module) -> dict[str, str]:
    """diffusers UNet module name -> its LDM name (`input_blocks.4.1...`), as kohya's SDXL UNet names it."""
    from sd_core.diffusers_keys import unet_key_map

    keys = [k for k in unet.state_dict() if k.endswith(".weight")]
    renamed = unet_key_map(keys, unet.config)
    return {k.removesuffix(".weight"): v.removeprefix("model.diffusion_model.").removesuffix(".weight")
            for k, v in renamed.items()}  # fmt: skip


def targets(model: torch.nn.Module, endings: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    """The Linear/Conv2d layers of a diffusers or transformers model whose names end in one of `endings`, named as
    trainers name them (transformers 5 drops CLIP's `text_model.` level, which trainers' files have)."""
    text = model.__class__.__name__.startswith("CLIP")
    return {
        ("text_model." + name if text and not name.startswith("text_model.") else name): m
        for name, m in model.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and name.endswith(endings)
    }


def _factors(layer: torch.nn.Module, rank: int, g: torch.Generator, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) for one layer: a Linear's [r, in] and [out, r]; a conv's [r, in, kh, kw] and [out, r, 1, 1]."""
    w = layer.weight
    if w.dim() == 2:
        return torch.randn(rank, w.shape[1], generator=g) * std, torch.randn(w.shape[0], rank, generator=g) * std
    down = torch.randn(rank, w.shape[1], *w.shape[2:], generator=g) * std
    return down, torch.randn(w.shape[0], rank, 1, 1, generator=g) * std


def kohya_lora(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module | None,
    *,
    seed: int,
    rank: int = 4,
    alpha: float | None = 2.0,
    std: float = 0.3,
    unet_endings: tuple[str, ...] = UNET_TARGETS,
    text_endings: tuple[str, ...] = TEXT_TARGETS,
    text_encoder_2: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """A kohya-ss LoRA over the UNet's attention, feed-forward and conv layers (3x3 LoCon) and the text encoder's
    attention and MLP layers, alpha != rank. With `text_encoder_2`: an SDXL LoRA (LDM UNet names, `lora_te1_` and
    `lora_te2_`; `text_encoder` None: the refiner's one tower)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    sdxl = text_encoder_2 is not None
    rename = _ldm_names(unet) if sdxl else {}
    parts = [("lora_unet_", unet, unet_endings)]
    if sdxl:
        parts += [("lora_te1_", text_encoder, text_endings), ("lora_te2_", text_encoder_2, text_endings)]
    else:
        parts.append(("lora_te_", text_encoder, text_endings))
    for prefix, model, endings in parts:
        if model is None:
            continue
        for name, layer in targets(model, endings).items():
            stem = prefix + rename.get(name, name).replace(".", "_")
            down, up = _factors(layer, rank, g, std)
            out[f"{stem}.lora_down.weight"], out[f"{stem}.lora_up.weight"] = down, up
            if alpha is not None:
                out[f"{stem}.alpha"] = torch.tensor(alpha)
    return out


def peft_lora(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module,
    *,
    seed: int,
    rank: int = 4,
    std: float = 0.3,
    text_encoder_2: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """A diffusers/PEFT-format LoRA (`unet.<path>.lora_A.weight` / `lora_B.weight`) on Linear layers (SDXL: also
    `text_encoder_2.`)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    parts = [("unet.", unet, tuple(PEFT_UNET_TARGETS)), ("text_encoder.", text_encoder, TEXT_TARGETS)]
    if text_encoder_2 is not None:
        parts.append(("text_encoder_2.", text_encoder_2, TEXT_TARGETS))
    for prefix, model, endings in parts:
        for name, layer in targets(model, endings).items():
            down, up = _factors(layer, rank, g, std)
            out[f"{prefix}{name}.lora_A.weight"], out[f"{prefix}{name}.lora_B.weight"] = down, up
    return out


PEFT_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


def peft_metadata(rank: int, alpha: float, *, sdxl: bool = False) -> dict[str, str]:
    """The safetensors metadata diffusers' `save_lora_weights` writes: each component's PEFT LoraConfig, flattened
    under the component's prefix."""
    from peft import LoraConfig

    flat = {}
    parts = [("unet", PEFT_UNET_TARGETS), ("text_encoder", list(TEXT_TARGETS))]
    if sdxl:
        parts.append(("text_encoder_2", list(TEXT_TARGETS)))
    for part, modules in parts:
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules).to_dict()
        flat.update({f"{part}.{k}": list(v) if isinstance(v, set) else v for k, v in config.items()})
    return {"format": "pt", "lora_adapter_metadata": json.dumps(flat, default=str)}


def save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path
