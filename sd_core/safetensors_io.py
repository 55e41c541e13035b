"""The `.safetensors` format, read and written here (no `safetensors` package): the header parser and validator,
memory-mapped reads, `release_pages`, and `write_safetensors`. It knows files and tensors only; the LDM key layout,
pickles and diffusers folders are `sd_core.checkpoint`'s.

Why it looks the way it does:
- Each tensor read is a zero-copy view of a copy-on-write memory map (the page cache), cast or moved one tensor at a
  time, so a model never exists twice in RAM.
- The header is validated first, because a truncated download otherwise surfaces later as a confusing shape error.
- Hosts are assumed little-endian (as the format itself is).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

PathLike = str | os.PathLike
DtypeOf = Callable[[str], "torch.dtype | None"]  # tensor name -> the dtype to cast it to (None: keep the file's)

_MAX_HEADER = 100_000_000  # the format's own limit; anything larger is not a safetensors header

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


def read_header(path: Path) -> _Header:
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
    return dict(read_header(Path(path)).metadata)


def cast_to(t: torch.Tensor, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
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


def read_safetensors(
    path: Path, dtype_of: DtypeOf, device: torch.device, exclude: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file, except those whose names start with one of `exclude`, each cast to
    `dtype_of(name)` on `device` (`cast_to`): zero-copy views of a private memory map where nothing changes."""
    header = read_header(path)
    names = [name for name in header.entries if not name.startswith(exclude)]
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
        out[name] = cast_to(t, dtype_of(name), device)
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
