"""Reading and writing model files: single-file `.safetensors` / `.ckpt` and diffusers folders, all in LDM key layout.
The public entry points of the engine's model files live here; the `.safetensors` format itself is
`sd_core.safetensors_io`, the diffusers folder layout `sd_core.diffusers_folder`.

Why it looks the way it does:
- `.safetensors` files are memory-mapped copy-on-write (see `sd_core.safetensors_io`): a model never exists twice
  in RAM.
- Pickles (`.ckpt`, `.pt`, `.pth`, `.bin`) are only ever opened with `torch.load(weights_only=True)`: a pickle can
  run code, and we refuse any file that needs more than tensors and plain containers.
- EMA copies (`model_ema.*`, flattened names) in non-pruned single files are dropped: the LDM layout is the trained
  weights, and keeping both would double the memory for weights nobody loads.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from . import diffusers_keys
from .diffusers_folder import components, is_sdxl_folder, key_map, read_folder_hints, weight_files
from .diffusers_keys import VAE_PREFIX
from .safetensors_io import (
    CheckpointError,
    DtypeOf,
    PathLike,
    cast_to,
    read_header,
    read_metadata,
    read_safetensors,
    release_pages,
    write_safetensors,
)

__all__ = [
    "CheckpointError",
    "read_dtypes",
    "read_folder_hints",
    "read_metadata",
    "read_pickle",
    "read_shapes",
    "read_state_dict",
    "release_pages",
    "save_checkpoint",
    "write_safetensors",
]

_TORCH_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
_EMA_PREFIX = "model_ema."
_WRAPPERS = ("state_dict", "params_ema", "params")


# --- pickles (.ckpt / .pt / .pth / .bin) -------------------------------------------------------------------------


def read_pickle(path: PathLike) -> object:
    """A torch pickle's object as saved (nested dicts, lists, strings, numbers and tensors: textual-inversion `.pt`
    files), loaded with `weights_only=True` (memory-mapped when the file is a zip): a pickle that needs anything
    else, code included, is a `CheckpointError` naming the file, and nothing in it runs."""
    path = Path(path)
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {e}") from e
        detail = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), "")
        raise CheckpointError(
            f"{path}: contains code or objects other than tensors and was not loaded "
            f"(pickled checkpoints can run code when loaded). {detail}".strip()
        ) from e
    except Exception as e:  # torch.load raises many kinds of errors on damaged files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {type(e).__name__}: {e}") from e
    return obj


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a torch pickle, loaded with `weights_only=True` (and memory-mapped when the file is a zip)."""
    obj = read_pickle(path)
    # the wrappers tensors come in: Lightning's `state_dict`, BasicSR's `params_ema` (preferred) or `params`
    wrapper = next((k for k in _WRAPPERS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
    if wrapper is not None:
        obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    return {
        key: value
        for key, value in obj.items()
        if isinstance(key, str) and isinstance(value, torch.Tensor) and not key.startswith(_EMA_PREFIX)
    }


def _single_file_kind(path: Path) -> str:
    """'safetensors' or 'pickle', from the content when it is recognisable, else from the suffix."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: no such file or folder") from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from e
    if head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "pickle"
    if not head:
        raise CheckpointError(f"{path}: empty file")
    return "pickle" if path.suffix.lower() in _TORCH_SUFFIXES else "safetensors"


# --- reading files and folders -----------------------------------------------------------------------------------


def _read_file(path: Path, dtype_of: DtypeOf, device: torch.device) -> dict[str, torch.Tensor]:
    if _single_file_kind(path) == "safetensors":
        return read_safetensors(path, dtype_of, device, exclude=(_EMA_PREFIX,))
    return {key: cast_to(t, dtype_of(key), device) for key, t in _load_pickle(path).items()}


def _file_info(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """key -> (shape, dtype) of one file, from the header (safetensors) or a memory-mapped load (pickles)."""
    if _single_file_kind(path) == "safetensors":
        entries = read_header(path).entries
        return {key: (e.shape, e.dtype) for key, e in entries.items() if not key.startswith(_EMA_PREFIX)}
    return {key: (tuple(t.shape), t.dtype) for key, t in _load_pickle(path).items()}


def _read_folder(
    path: Path, dtype: torch.dtype | None, vae_dtype: torch.dtype | None, device: torch.device
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    sdxl = is_sdxl_folder(path)
    for kind, folder in components(path):
        raw: dict[str, torch.Tensor] = {}
        component_dtype = vae_dtype if kind == "vae" else dtype
        for file in weight_files(folder):
            raw.update(_read_file(file, lambda _key, d=component_dtype: d, device))
        for key, ldm_key in key_map(kind, folder, raw, sdxl=sdxl).items():
            t = raw[key]
            out[ldm_key] = t.reshape(diffusers_keys.ldm_shape(ldm_key, tuple(t.shape)))  # a view
    return out


def _info(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """LDM key -> (shape, dtype) of a file or folder, without reading tensor data where the format allows."""
    if not path.is_dir():
        return _file_info(path)
    out = {}
    sdxl = is_sdxl_folder(path)
    for kind, folder in components(path):
        raw: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for file in weight_files(folder):
            raw.update(_file_info(file))
        for key, ldm_key in key_map(kind, folder, raw, sdxl=sdxl).items():
            shape, dtype = raw[key]
            out[ldm_key] = (diffusers_keys.ldm_shape(ldm_key, shape), dtype)
    return out


def _dtype_of(key: str, dtype: torch.dtype | None, vae_dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype a single file's tensor is cast to while reading: the VAE's, or the model's; OpenCLIP's
    `logit_scale` (unused) keeps its own, as do integer buffers (`position_ids`, `cast_to`)."""
    if key.endswith("logit_scale"):
        return None
    return vae_dtype if key.startswith(VAE_PREFIX) else dtype


# --- public entry points: reading --------------------------------------------------------------------------------


def read_shapes(path: PathLike) -> dict[str, tuple[int, ...]]:
    """LDM key -> shape, without reading tensor data where the format allows (safetensors headers); pickles are
    memory-mapped, so their data is not read either unless they use the legacy non-zip format."""
    return {key: shape for key, (shape, _) in _info(Path(path)).items()}


def read_dtypes(path: PathLike) -> dict[str, str]:
    """LDM key -> stored dtype name ("float16", "bfloat16", ...), read like `read_shapes` (for `sd-core info`)."""
    return {key: str(dtype).removeprefix("torch.") for key, (_, dtype) in _info(Path(path)).items()}


def read_state_dict(
    path: PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    vae_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file or diffusers folder in LDM key layout, floating ones cast to `dtype` (the
    VAE's to `vae_dtype` when given: see `devices.pick_vae_dtype`).

    Tensors are converted one at a time; with a `.safetensors` file whose dtype already matches on the CPU they are
    zero-copy views of the memory-mapped file (writable; writes never reach the file).
    """
    path = Path(path)
    device = torch.device(device)
    vae_dtype = dtype if vae_dtype is None else vae_dtype
    if path.is_dir():
        out = _read_folder(path, dtype, vae_dtype, device)
    else:
        out = _read_file(path, lambda key: _dtype_of(key, dtype, vae_dtype), device)
    if not out:
        raise CheckpointError(f"{path}: contains no tensors")
    return out


# --- public entry points: writing --------------------------------------------------------------------------------


def save_checkpoint(
    path: PathLike,
    unet_sd: Mapping[str, torch.Tensor],
    vae_sd: Mapping[str, torch.Tensor],
    text_sd: Mapping[str, torch.Tensor],
    *,
    text_prefix: str = "cond_stage_model.transformer.",
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a single-file LDM `.safetensors` checkpoint from the three models' own state dicts.

    `text_sd` keys are the text encoder's (e.g. `text_model.encoder...`); use `text_prefix="cond_stage_model.model."`
    for SD2 OpenCLIP names.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path}: checkpoints are only written as .safetensors")
    tensors: dict[str, torch.Tensor] = {}
    for prefix, sd in (
        (diffusers_keys.UNET_PREFIX, unet_sd),
        (diffusers_keys.VAE_PREFIX, vae_sd),
        (text_prefix, text_sd),
    ):
        for key, t in sd.items():
            if prefix + key in tensors:
                raise CheckpointError(f"{path}: key {prefix + key!r} given twice")
            tensors[prefix + key] = t
    write_safetensors(path, tensors, metadata)
