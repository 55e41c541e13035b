"""Reading a LoRA-family file: its keys grouped per layer, matched to a model's layers, its hash and metadata.

The file formats (`keys` has the layer names): kohya-ss / A1111 (`<layer>.lora_down.weight`, `.lora_up.weight`,
`.alpha`), LyCORIS (LoCon's `lora_mid`, LoHa's `hada_*`, LoKr's `lokr_*`, full `diff`), diffusers/PEFT
(`<layer>.lora_A.weight` / `lora_B.weight`, alpha from the PEFT config that diffusers stores in the safetensors
metadata `lora_adapter_metadata`) and diffusers' older attention-processor names (`attn1.processor.to_q_lora.down`,
`q_proj.lora_linear_layer.up`). `.safetensors` files are memory-mapped; pickles (`.pt`, `.ckpt`) go through
`sd_core.checkpoint`'s loader, which never runs code.

Nothing here is lenient in silence: a file whose layers match nothing in the model, one made for another family, one
with a kind this engine does not apply, or one whose tensors do not fit the model's layers is a `LoraError` naming the
file; a partial match is kept and reported (`LoraFile.unmatched`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import checkpoint
from .errors import LoraError
from .keys import Component, LayerIndex
from .networks import PARTS, UNSUPPORTED, LayerChange, LayerError, kind_of

SUFFIXES = (".safetensors", ".pt", ".ckpt")
"""The LoRA file types read (A1111's)."""
ALIAS_KEY = "ss_output_name"
HASH_KEY = "sshs_model_hash"
PEFT_METADATA_KEY = "lora_adapter_metadata"


@dataclass(frozen=True)
class LayerPatch:
    """One layer of a file, matched to the model: where it goes and what it changes."""

    key: str  # the layer's key stem in the file (for messages)
    component: Component
    path: str  # the layer's path in the pipeline's `component.attribute` network
    change: LayerChange


@dataclass(frozen=True, eq=False)
class LoraFile:
    """A LoRA file read for one model family. `layers` are the matched ones; `unmatched` the key stems of layers this
    model does not have (a partial match, reported); `identity` changes when the file does."""

    path: Path
    metadata: dict[str, str]
    layers: tuple[LayerPatch, ...]
    unmatched: tuple[str, ...] = ()
    identity: tuple = field(default=())

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def alias(self) -> str:
        """A1111's alias: the training run's output name when the file records one, else the file name's stem."""
        return self.metadata.get(ALIAS_KEY) or self.name


def file_identity(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


# --- key names -----------------------------------------------------------------------------------------------------

_RENAMES = (
    # PEFT / diffusers: A = down, B = up (A1111 takes them on kohya names too)
    (re.compile(r"\.lora_A(?:\.default)?\.weight$"), ".lora_down.weight"),
    (re.compile(r"\.lora_B(?:\.default)?\.weight$"), ".lora_up.weight"),
    # diffusers' older attention processors and text-encoder patches
    (re.compile(r"\.processor\."), "."),
    (re.compile(r"\.(to_[qkv])_lora\.(down|up)\.weight$"), r".\1.lora_\2.weight"),
    (re.compile(r"\.to_out_lora\.(down|up)\.weight$"), r".to_out.0.lora_\1.weight"),
    (re.compile(r"\.lora_linear_layer\.(down|up)\.weight$"), r".lora_\1.weight"),
)
_PART = re.compile(r"^(?P<stem>.+?)\.(?P<part>" + "|".join(re.escape(p) for p in PARTS + tuple(UNSUPPORTED)) + ")$")


def normalise_key(key: str) -> str:
    for pattern, replacement in _RENAMES:
        key = pattern.sub(replacement, key)
    return key


def group_layers(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """{layer key stem: {part: tensor}} and the keys that are no layer part this engine knows."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in tensors.items():
        m = _PART.match(normalise_key(key))
        if m is None:
            unknown.append(key)
        else:
            layers.setdefault(m["stem"], {})[m["part"]] = tensor
    return layers, unknown


# --- PEFT configs (alpha outside the tensors) ----------------------------------------------------------------------


def _peft_configs(metadata: dict[str, str]) -> dict[str, dict]:
    """Per dotted prefix ("unet", "text_encoder"), the PEFT LoraConfig fields diffusers stores in the metadata."""
    raw = metadata.get(PEFT_METADATA_KEY)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    configs: dict[str, dict] = {}
    for key, value in flat.items() if isinstance(flat, dict) else ():
        prefix, _, name = key.partition(".")
        if name:
            configs.setdefault(prefix, {})[name] = value
    return configs


def _pattern_value(patterns: dict, layer: str, default: float) -> float:
    """PEFT's per-module override: the longest pattern that matches the end of the layer's dotted name."""
    best = None
    for pattern, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", layer) and (best is None or len(pattern) > len(best[0])):
            best = (pattern, value)
    return default if best is None else float(best[1])


def _peft_scale(configs: dict[str, dict], stem: str) -> float | None:
    prefix, _, layer = stem.partition(".")
    config = configs.get(prefix)
    if not config or "lora_alpha" not in config or "r" not in config:
        return None
    alpha = _pattern_value(config.get("alpha_pattern"), layer, float(config["lora_alpha"]))
    rank = _pattern_value(config.get("rank_pattern"), layer, float(config["r"]))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


# --- reading -------------------------------------------------------------------------------------------------------


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The file's tensors as stored (a memory map for `.safetensors`) and its metadata; LoraError naming the file
    when it is missing, truncated, not a tensor file, or a pickle that would run code."""
    if not path.is_file():
        raise LoraError(f"LoRA file not found: {path}")
    if path.suffix.lower() not in SUFFIXES:
        raise LoraError(f"{path}: not a LoRA file type ({', '.join(SUFFIXES)})")
    try:
        tensors = checkpoint.read_state_dict(path)
        metadata = checkpoint.read_metadata(path) if path.suffix.lower() == ".safetensors" else {}
    except checkpoint.CheckpointError as exc:
        raise LoraError(f"LoRA {exc}") from None
    return tensors, metadata


def read_lora(path: str | os.PathLike, index: LayerIndex) -> LoraFile:
    """A LoRA file matched to the model whose layers `index` names."""
    path = Path(path)
    tensors, metadata = read_tensors(path)
    layers, unknown = group_layers(tensors)
    foreign = sorted({family for stem in layers if (family := index.foreign(stem))})
    if foreign:
        raise LoraError(f"{path}: a LoRA for {foreign[0]}; this model is {index.family.name}")
    unsupported = sorted({UNSUPPORTED[part] for parts in layers.values() for part in parts if part in UNSUPPORTED})
    if unsupported:
        raise LoraError(f"{path}: holds {', '.join(unsupported)} layers, which this engine does not apply")
    configs = _peft_configs(metadata)
    matched, unmatched = [], list(unknown)
    for stem, parts in sorted(layers.items()):
        place = index.find(stem)
        if place is None:
            unmatched.append(stem)
            continue
        try:
            change = LayerChange(kind_of(parts), parts, _peft_scale(configs, stem))
            change.delta(place[2], torch.device("meta"))  # the shapes checked now, before any layer changes
        except LayerError as exc:
            raise LoraError(f"{path}: layer {stem}: {exc} (a LoRA for another model family?)") from None
        except RuntimeError as exc:  # factors that do not multiply
            raise LoraError(f"{path}: layer {stem}: tensors of mismatched shapes ({exc})") from None
        matched.append(LayerPatch(stem, place[0], place[1], change))
    if not matched:
        sample = ", ".join(sorted(layers)[:3] or unknown[:3])
        raise LoraError(
            f"{path}: no LoRA layer in this file matches the {index.family.name} model ({len(tensors)} tensors; "
            f"keys like {sample})"
        )
    return LoraFile(path, metadata, tuple(matched), tuple(unmatched), file_identity(path))


# --- hashes --------------------------------------------------------------------------------------------------------


def lora_hash(path: str | os.PathLike, metadata: dict[str, str] | None = None) -> str:
    """A1111's short LoRA hash (12 hex): the metadata's `sshs_model_hash` when present; for `.safetensors` kohya's
    "addnet" hash (sha256 of the bytes after the header), for pickles sha256 of the whole file."""
    path = Path(path)
    if metadata and metadata.get(HASH_KEY):
        return metadata[HASH_KEY][:12]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if path.suffix.lower() == ".safetensors":
            (length,) = struct.unpack("<Q", f.read(8))
            f.seek(8 + length)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]
