"""ControlNet files: the original single-file layout (`control_model.*`, or the same keys without the prefix;
`.safetensors`, and pickles only through `sd_core.checkpoint`'s `weights_only` loading), diffusers folders and
diffusers-named single files (renamed to the original layout: the UNet-encoder keys by the rules the engine's UNets
use, `sd_core.diffusers_keys`, plus the hint block, zero convs and middle-block conv), and the writer of the original
layout. `load_controlnet` infers the config from the shapes (`sd_core.controlnet.config`) and builds the network.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .. import checkpoint, diffusers_keys
from ..checkpoint import CheckpointError
from ..devices import pick_device, pick_dtype
from ..diffusers_folder import weight_files
from .config import infer_controlnet_config, is_controlnet
from .model import ControlNetModel

PREFIX = "control_model."
"""The prefix of the original layout's keys (the cldm training checkpoints; many released files drop it)."""
_DIFFUSERS_ONLY = re.compile(r"controlnet_(cond_embedding|down_blocks|mid_block)\.")


def _hint_key(rest: str, convs: int) -> str:
    """diffusers `controlnet_cond_embedding.*` -> `input_hint_block.N.*` (convs at even indices, SiLU between)."""
    if rest.startswith("conv_in."):
        return "input_hint_block.0." + rest[len("conv_in.") :]
    if rest.startswith("conv_out."):
        return f"input_hint_block.{2 * (convs - 1)}." + rest[len("conv_out.") :]
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest)
    if match is None:
        raise ValueError(f"unknown diffusers ControlNet key 'controlnet_cond_embedding.{rest}'")
    return f"input_hint_block.{2 * (int(match[1]) + 1)}.{match[2]}"


def diffusers_key_map(keys: list[str], config: Mapping | None = None) -> dict[str, str]:
    """diffusers ControlNetModel key -> original key (no prefix). The encoder follows the folder's `config.json`
    (down blocks, resnets per block); without one (a bare diffusers-named file) both are counted from the keys."""
    if config is None:
        blocks = {int(m[1]) for k in keys if (m := re.match(r"down_blocks\.(\d+)\.", k))}
        resnets = {int(m[1]) for k in keys if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))}
        config = {"down_block_types": [""] * len(blocks), "layers_per_block": len(resnets)}
    convs = 2 + len({int(m[1]) for k in keys if (m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.", k))})
    out: dict[str, str] = {}
    unet_keys = []
    for key in keys:
        if key.startswith("controlnet_cond_embedding."):
            out[key] = _hint_key(key[len("controlnet_cond_embedding.") :], convs)
        elif key.startswith("controlnet_down_blocks."):
            index, rest = key[len("controlnet_down_blocks.") :].split(".", 1)
            out[key] = f"zero_convs.{int(index)}.0.{rest}"
        elif key.startswith("controlnet_mid_block."):
            out[key] = "middle_block_out.0." + key[len("controlnet_mid_block.") :]
        else:
            unet_keys.append(key)
    for key, ldm in diffusers_keys.unet_key_map(unet_keys, config).items():
        out[key] = ldm.removeprefix(diffusers_keys.UNET_PREFIX)
    return out


def _read_folder(path: Path, dtype: torch.dtype | None, device: torch.device) -> dict[str, torch.Tensor]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: not a diffusers ControlNet folder (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_file}: cannot read JSON: {e}") from e
    if not isinstance(config, dict) or config.get("_class_name") != "ControlNetModel":
        name = config.get("_class_name") if isinstance(config, dict) else None
        raise CheckpointError(f"{path}: not a diffusers ControlNet folder (config.json names {name!r})")
    raw: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        raw.update(checkpoint.read_state_dict(file, dtype=dtype, device=device))
    return _renamed(path, raw, config)


def _renamed(path: Path, raw: dict[str, torch.Tensor], config: Mapping | None) -> dict[str, torch.Tensor]:
    try:
        mapping = diffusers_key_map(list(raw), config)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return {mapping[key]: tensor for key, tensor in raw.items()}


def read_controlnet_state_dict(
    path: str | os.PathLike, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """A ControlNet's tensors in the original layout without the prefix, floating ones cast to `dtype`. A whole cldm
    checkpoint (the ControlNet beside a Stable Diffusion model) gives its `control_model.*` part."""
    path = Path(path)
    device = torch.device(device)
    if not path.exists():
        raise FileNotFoundError(f"ControlNet not found: {path}")
    if path.is_dir():
        return _read_folder(path, dtype, device)
    sd = checkpoint.read_state_dict(path, dtype=dtype, device=device)
    if any(key.startswith(PREFIX) for key in sd):
        return {key[len(PREFIX) :]: t for key, t in sd.items() if key.startswith(PREFIX)}
    if any(_DIFFUSERS_ONLY.match(key) for key in sd):
        return _renamed(path, sd, None)
    return sd


def _what_else(keys: list[str]) -> str:
    if any(k.startswith(("model.diffusion_model.", "conditioner.")) for k in keys):
        return "a Stable Diffusion model, not a ControlNet: load it with sd_core.load"
    if any(".lora_" in k or k.startswith("lora_") for k in keys):
        return "a LoRA, not a ControlNet"
    if any(k.startswith("adapter.") for k in keys):
        return "a T2I-Adapter, which is not supported"
    if any("lora_controlnet" in k for k in keys):
        return "a Control-LoRA, which is not supported"
    return "not a ControlNet"


def load_controlnet(
    path: str | os.PathLike, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> ControlNetModel:
    """Load a ControlNet (single file or diffusers folder) for use with any model of its family. `device`/`dtype`
    default as `sd_core.load`'s; use the pipeline's (`pipe.device`, `pipe.dtype`). A file that is no ControlNet,
    or one whose weights do not fit the inferred architecture, is a `CheckpointError` naming the file."""
    path = Path(path)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    sd = read_controlnet_state_dict(path, dtype=dt, device=dev)
    shapes = {key: tuple(t.shape) for key, t in sd.items()}
    if not is_controlnet(shapes):
        raise CheckpointError(f"{path}: this is {_what_else(list(shapes))}")
    try:
        config = infer_controlnet_config(shapes)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    with torch.device("meta"):
        net = ControlNetModel(config)
    expected = {key: tuple(t.shape) for key, t in net.state_dict().items()}
    problems = [f"missing {k}" for k in sorted(expected.keys() - shapes.keys())]
    problems += [f"unexpected {k}" for k in sorted(shapes.keys() - expected.keys())]
    problems += [f"{k} {shapes[k]} (expected {s})" for k, s in expected.items() if k in shapes and shapes[k] != s]
    if problems:
        more = f" and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise CheckpointError(f"{path}: weights do not fit the inferred ControlNet: {', '.join(problems[:8])}{more}")
    net.load_state_dict(sd, strict=True, assign=True)
    net.name = path.stem if path.is_file() or not path.name else path.name
    return net.eval()


def save_controlnet(
    path: str | os.PathLike,
    net: ControlNetModel | Mapping[str, torch.Tensor],
    *,
    prefix: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a ControlNet (the network or its state dict in the original keys) as a `.safetensors` in the original
    layout, with the `control_model.` prefix (`prefix=False`: without, as many released files)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path}: ControlNets are only written as .safetensors")
    sd = net.state_dict() if isinstance(net, torch.nn.Module) else dict(net)
    head = PREFIX if prefix else ""
    checkpoint.write_safetensors(path, {head + k: v.detach().contiguous() for k, v in sd.items()}, metadata)
    return path
