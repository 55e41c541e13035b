"""Reading and writing model files: single-file `.safetensors` / `.ckpt` and diffusers folders, all in LDM key layout.

Why it looks the way it does:
- `.safetensors` is parsed here (no `safetensors` package) and memory-mapped copy-on-write: each tensor is a
  zero-copy view of the page cache, cast or moved one tensor at a time, so a model never exists twice in RAM.
  The header is validated first, because a truncated download otherwise surfaces later as a confusing shape error.
- Pickles (`.ckpt`, `.pt`, `.pth`, `.bin`) are only ever opened with `torch.load(weights_only=True)`: a pickle can
  run code, and we refuse any file that needs more than tensors and plain containers.
- EMA copies (`model_ema.*`, flattened names) in non-pruned single files are dropped: the LDM layout is the trained
  weights, and keeping both would double the memory for weights nobody loads.
- Hosts are assumed little-endian (as the safetensors format itself is).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import pickle
import re
import struct
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from . import diffusers_keys
from .diffusers_keys import VAE_PREFIX

PathLike = str | os.PathLike
DtypeOf = Callable[[str], "torch.dtype | None"]  # tensor name -> the dtype to cast it to (None: keep the file's)

_TORCH_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
_MAX_HEADER = 100_000_000  # the format's own limit; anything larger is not a safetensors header
_EMA_PREFIX = "model_ema."

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
    ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
    ("F8_E8M0", "float8_e8m0fnu"),
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
):
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class CheckpointError(ValueError):
    """A model file or folder that cannot be read; the message names the file (and key where one is at fault)."""


# --- safetensors --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # offsets relative to the start of the data section
    end: int


@dataclass(frozen=True)
class _Header:
    entries: dict[str, _Entry]
    metadata: dict[str, str]
    data_start: int


def _parse_entry(path: Path, name: str, raw: object, data_size: int) -> _Entry:
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: tensor {name!r}: {why}")

    if not isinstance(raw, dict):
        raise bad("header entry is not an object")
    dtype = _DTYPES.get(raw.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise bad(f"unsupported dtype {raw.get('dtype')!r}")
    shape, offsets = raw.get("shape"), raw.get("data_offsets")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"invalid shape {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
        raise bad(f"invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise bad(f"invalid data_offsets {offsets!r}")
    size = math.prod(shape) * dtype.itemsize
    if end - begin != size:
        raise bad(f"data_offsets span {end - begin} bytes but {raw['dtype']}{shape} needs {size}")
    if end > data_size:
        raise bad(f"data ends at byte {end} of the data section, which has only {data_size} bytes (truncated file?)")
    return _Entry(dtype, tuple(shape), begin, end)


def _read_header(path: Path) -> _Header:
    """Parse and validate the header without touching tensor data."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise CheckpointError(f"{path}: empty file")
            if size < 8:
                raise CheckpointError(f"{path}: {size} bytes is too short to be a safetensors file")
            (length,) = struct.unpack("<Q", f.read(8))
            if length > min(_MAX_HEADER, size - 8):
                raise CheckpointError(
                    f"{path}: not a safetensors file (or truncated): header length {length} does not fit in "
                    f"the {size}-byte file"
                )
            raw_header = f.read(length)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from e
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a safetensors file: header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
    data_start = 8 + length
    entries = {name: _parse_entry(path, name, raw, size - data_start) for name, raw in header.items()}
    previous = None
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin == entry.end:
            continue
        if previous is not None and entry.begin < entries[previous].end:
            raise CheckpointError(f"{path}: tensors {previous!r} and {name!r} overlap in the data section")
        previous = name
    return _Header(entries, metadata, data_start)


def read_metadata(path: PathLike) -> dict[str, str]:
    """The `__metadata__` strings of a `.safetensors` file (empty when it has none)."""
    return dict(_read_header(Path(path)).metadata)


def _target(t: torch.Tensor, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    """Cast floating tensors only (integer buffers keep their meaning); a no-op returns `t` itself (zero copy)."""
    if dtype is not None and t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)


# Live memory maps of checkpoint files: (mapping, base address, size). `release_pages` only ever touches these.
_MAPPINGS: list[tuple[weakref.ref, int, int]] = []


def _register_mapping(buffer: mmap.mmap) -> None:
    _MAPPINGS[:] = [m for m in _MAPPINGS if m[0]() is not None]
    base = torch.frombuffer(buffer, dtype=torch.uint8, count=1).data_ptr()
    _MAPPINGS.append((weakref.ref(buffer), base, len(buffer)))


def _dontneed(buffer: mmap.mmap, offset: int, nbytes: int) -> int:
    """Drop this process's pages of bytes [offset, offset + nbytes) of a private file mapping (whole pages inside
    the range only, so neighbouring tensors are never touched). Clean pages come back from the file if read again;
    callers guarantee nobody wrote to them. Returns the bytes released (0 where madvise is unavailable)."""
    page = mmap.PAGESIZE
    start = -(-offset // page) * page
    end = (offset + nbytes) // page * page
    if end <= start or not hasattr(buffer, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return 0
    try:
        buffer.madvise(mmap.MADV_DONTNEED, start, end - start)
    except (OSError, ValueError):
        return 0
    return end - start


def release_pages(t: torch.Tensor) -> int:
    """After `t` (a zero-copy view of a memory-mapped checkpoint) has been copied elsewhere (cast, packed), give its
    pages back so that RSS does not hold the file and the copy at once. Only for tensors never written to (the loader
    calls it right after loading). No-op for tensors that are not views of a live checkpoint mapping."""
    if t.device.type != "cpu" or t.layout != torch.strided or t.is_mkldnn or not t.numel() or not t.is_contiguous():
        return 0
    ptr, nbytes = t.data_ptr(), t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
    for ref, base, size in _MAPPINGS:
        buffer = ref()
        if buffer is not None and base <= ptr and ptr + nbytes <= base + size:
            return _dontneed(buffer, ptr - base, min(nbytes, t.numel() * t.element_size()))
    return 0


def _read_safetensors(path: Path, dtype_of: DtypeOf, device: torch.device) -> dict[str, torch.Tensor]:
    header = _read_header(path)
    names = [name for name in header.entries if not name.startswith(_EMA_PREFIX)]
    if not names:
        return {}
    with open(path, "rb") as f:
        # ACCESS_COPY: a private, writable mapping, so torch gets a writable buffer without copying the file and
        # writes to the tensors never reach the file. Tensors keep the mapping alive after this function returns.
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    _register_mapping(buffer)
    out = {}
    for name in names:
        entry = header.entries[name]
        offset, nbytes = header.data_start + entry.begin, entry.end - entry.begin
        if nbytes == 0:
            t = torch.empty(entry.shape, dtype=entry.dtype)
        elif offset % entry.dtype.itemsize:
            # Misaligned data (legal in the format, never written by us): copy this one tensor into aligned memory.
            t = torch.empty(entry.shape, dtype=entry.dtype)
            t.view(-1).view(torch.uint8).copy_(torch.frombuffer(buffer, dtype=torch.uint8, count=nbytes, offset=offset))
        else:
            count = nbytes // entry.dtype.itemsize
            t = torch.frombuffer(buffer, dtype=entry.dtype, count=count, offset=offset).view(entry.shape)
        out[name] = _target(t, dtype_of(name), device)
        if nbytes and out[name].data_ptr() != t.data_ptr():
            # cast or moved: the file's pages of this tensor are no longer needed; without this, a float32 file
            # loaded as bfloat16 would hold the whole file and the cast copy in RSS (1.5x the file at peak)
            _dontneed(buffer, offset, nbytes)
    return out


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def write_safetensors(
    path: PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a `.safetensors` file tensor by tensor (no in-memory copy of the whole file).

    Tensors are laid out largest element size first, so every tensor starts aligned to its element size; the file
    is written next to `path` and renamed into place, so a crash never leaves a truncated model behind.
    """
    path = Path(path)
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("safetensors metadata must map str to str")
    items = sorted(tensors.items(), key=lambda item: -item[1].element_size())
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, t in items:
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        if t.dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} cannot be stored in safetensors")
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": _DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data section must start 8-byte aligned
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for _, t in items:
                if t.numel():
                    f.write(_tensor_bytes(t))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


# --- pickles (.ckpt / .pt / .pth / .bin) -------------------------------------------------------------------------


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a torch pickle, loaded with `weights_only=True` (and memory-mapped when the file is a zip)."""
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
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
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


# --- diffusers folders --------------------------------------------------------------------------------------------

_WEIGHT_FILE = re.compile(
    r"(?P<base>diffusion_pytorch_model|model|pytorch_model)(?:\.(?P<variant>\w+))?\.(?P<ext>safetensors|bin)"
)
_INDEX_FILE = re.compile(
    r"(?P<base>diffusion_pytorch_model|model|pytorch_model)\.(?P<ext>safetensors|bin)\.index(?:\.(?P<variant>\w+))?\.json"
)
_COMPONENT_CLASSES = {"UNet2DConditionModel": "unet", "AutoencoderKL": "vae", "CLIPTextModel": "text_encoder"}


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def _weight_files(folder: Path) -> list[Path]:
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


def _components(path: Path) -> list[tuple[str, Path]]:
    """(kind, folder) pairs: a pipeline folder's unet/vae/text_encoder, or a single component folder."""
    if (path / "model_index.json").is_file() or any((path / kind).is_dir() for kind in ("unet", "vae")):
        found = [(kind, path / kind) for kind in ("unet", "vae", "text_encoder") if (path / kind).is_dir()]
        if not found:
            raise CheckpointError(f"{path}: diffusers folder without unet/, vae/ or text_encoder/")
        return found
    if (path / "config.json").is_file():
        return [(_component_kind(path), path)]
    raise CheckpointError(f"{path}: not a model folder (no model_index.json and no config.json)")


def _key_map(kind: str, folder: Path, keys: Iterable[str]) -> dict[str, str]:
    try:
        if kind == "text_encoder":
            return diffusers_keys.text_key_map(keys)
        config = _read_json(folder / "config.json")
        if kind == "unet":
            return diffusers_keys.unet_key_map(keys, config)
        return diffusers_keys.vae_key_map(keys, config)
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{folder}: {e}") from e


def _read_file(path: Path, dtype_of: DtypeOf, device: torch.device) -> dict[str, torch.Tensor]:
    if _single_file_kind(path) == "safetensors":
        return _read_safetensors(path, dtype_of, device)
    return {key: _target(t, dtype_of(key), device) for key, t in _load_pickle(path).items()}


def _file_info(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """key -> (shape, dtype) of one file, from the header (safetensors) or a memory-mapped load (pickles)."""
    if _single_file_kind(path) == "safetensors":
        entries = _read_header(path).entries
        return {key: (e.shape, e.dtype) for key, e in entries.items() if not key.startswith(_EMA_PREFIX)}
    return {key: (tuple(t.shape), t.dtype) for key, t in _load_pickle(path).items()}


def _read_folder(
    path: Path, dtype: torch.dtype | None, vae_dtype: torch.dtype | None, device: torch.device
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for kind, folder in _components(path):
        raw: dict[str, torch.Tensor] = {}
        component_dtype = vae_dtype if kind == "vae" else dtype
        for file in _weight_files(folder):
            raw.update(_read_file(file, lambda _key, d=component_dtype: d, device))
        for key, ldm_key in _key_map(kind, folder, raw).items():
            t = raw[key]
            out[ldm_key] = t.reshape(diffusers_keys.ldm_shape(ldm_key, tuple(t.shape)))  # a view
    return out


def _info(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """LDM key -> (shape, dtype) of a file or folder, without reading tensor data where the format allows."""
    if not path.is_dir():
        return _file_info(path)
    out = {}
    for kind, folder in _components(path):
        raw: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for file in _weight_files(folder):
            raw.update(_file_info(file))
        for key, ldm_key in _key_map(kind, folder, raw).items():
            shape, dtype = raw[key]
            out[ldm_key] = (diffusers_keys.ldm_shape(ldm_key, shape), dtype)
    return out


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


# --- public entry points ------------------------------------------------------------------------------------------


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
        out = _read_file(path, lambda key: vae_dtype if key.startswith(VAE_PREFIX) else dtype, device)
    if not out:
        raise CheckpointError(f"{path}: contains no tensors")
    return out
