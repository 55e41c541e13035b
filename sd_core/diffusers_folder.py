"""The diffusers folder layout: which component folders a model folder has (`unet/`, `vae/`, `text_encoder/`, or one
component folder on its own), which weight files of each to read (format, variant, shards), how their keys map to the
LDM layout, and what the folder's configs say beyond the weights (`read_folder_hints`). Reading the weight files is
`sd_core.checkpoint`'s: each one is an ordinary single file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from . import diffusers_keys
from .safetensors_io import CheckpointError, PathLike

_WEIGHT_FILE = re.compile(
    r"(?P<base>diffusion_pytorch_model|model|pytorch_model)(?:\.(?P<variant>\w+))?\.(?P<ext>safetensors|bin)"
)
_INDEX_FILE = re.compile(
    r"(?P<base>diffusion_pytorch_model|model|pytorch_model)\.(?P<ext>safetensors|bin)\.index(?:\.(?P<variant>\w+))?\.json"
)
_COMPONENT_CLASSES = {
    "UNet2DConditionModel": "unet",
    "AutoencoderKL": "vae",
    "CLIPTextModel": "text_encoder",
    "CLIPTextModelWithProjection": "text_encoder_2",
}
_KINDS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def weight_files(folder: Path) -> list[Path]:
    """The weight files of one component: safetensors before .bin, no variant before a variant (fp16 first),
    a single file before a sharded set."""
    choices = []
    for file in folder.iterdir():
        for pattern, sharded in ((_WEIGHT_FILE, False), (_INDEX_FILE, True)):
            match = pattern.fullmatch(file.name)
            if match:
                variant = match["variant"]
                rank = (match["ext"] != "safetensors", variant is not None, variant != "fp16", sharded, file.name)
                choices.append((rank, file, sharded))
    if not choices:
        raise CheckpointError(f"{folder}: no weight file (*.safetensors or *.bin) in this folder")
    _, file, sharded = min(choices)
    if not sharded:
        return [file]
    weight_map = _read_json(file).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{file}: no weight_map")
    return [folder / name for name in sorted(set(weight_map.values()))]


def _component_kind(folder: Path) -> str:
    config = _read_json(folder / "config.json")
    names = [config.get("_class_name"), *(config.get("architectures") or [])]
    for name in names:
        if name in _COMPONENT_CLASSES:
            return _COMPONENT_CLASSES[name]
    raise CheckpointError(f"{folder / 'config.json'}: unsupported model class {[n for n in names if n]}")


def components(path: Path) -> list[tuple[str, Path]]:
    """(kind, folder) pairs: a pipeline folder's unet/vae/text_encoder(_2), or a single component folder."""
    if (path / "model_index.json").is_file() or any((path / kind).is_dir() for kind in ("unet", "vae")):
        found = [(kind, path / kind) for kind in _KINDS if (path / kind).is_dir()]
        if not found:
            raise CheckpointError(f"{path}: diffusers folder without unet/, vae/ or text_encoder/")
        return found
    if (path / "config.json").is_file():
        return [(_component_kind(path), path)]
    raise CheckpointError(f"{path}: not a model folder (no model_index.json and no config.json)")


def is_sdxl_folder(path: Path) -> bool:
    """An SDXL pipeline folder: it has `text_encoder_2/` (the refiner has only that one) or its UNet takes SDXL's
    size-conditioning vector (`addition_embed_type` "text_time")."""
    if not path.is_dir():
        return False
    if (path / "text_encoder_2").is_dir():
        return True
    unet = path / "unet" / "config.json"
    return unet.is_file() and _read_json(unet).get("addition_embed_type") == "text_time"


def key_map(kind: str, folder: Path, keys: Iterable[str], *, sdxl: bool = False) -> dict[str, str]:
    """diffusers key -> LDM key for one component folder. SDXL text encoders go to `conditioner.embedders.N`:
    `text_encoder` 0, `text_encoder_2` 1, or 0 when it is the only one (the refiner), in HF names."""
    try:
        if kind in ("text_encoder", "text_encoder_2"):
            if not sdxl:
                return diffusers_keys.text_key_map(keys)
            first = kind == "text_encoder" or not (folder.parent / "text_encoder").is_dir()
            return diffusers_keys.text_key_map(keys, f"conditioner.embedders.{0 if first else 1}.transformer.")
        config = _read_json(folder / "config.json")
        if kind == "unet":
            return diffusers_keys.unet_key_map(keys, config)
        return diffusers_keys.vae_key_map(keys, config)
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{folder}: {e}") from e


def read_folder_hints(path: PathLike) -> dict:
    """What a diffusers folder says beyond its weights: `prediction` ("eps" / "v", from the scheduler config) and
    `latent_scale` (the VAE's `scaling_factor`). Empty for single files and for folders that say nothing."""
    path = Path(path)
    hints: dict = {}
    if not path.is_dir():
        return hints
    scheduler = path / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        prediction = {"epsilon": "eps", "v_prediction": "v"}.get(_read_json(scheduler).get("prediction_type"))
        if prediction:
            hints["prediction"] = prediction
    vae = path / "vae" / "config.json"
    if vae.is_file():
        scale = _read_json(vae).get("scaling_factor")
        if isinstance(scale, (int, float)):
            hints["latent_scale"] = float(scale)
    return hints
