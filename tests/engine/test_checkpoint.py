"""Single-file reading and writing: safetensors (with the `safetensors` package as the oracle) and torch pickles."""

from __future__ import annotations

import json
import os
import shlex
import struct
import sys
from pathlib import Path

import psutil
import pytest
import safetensors
import safetensors.torch
import torch

from sd_core.checkpoint import (
    CheckpointError,
    read_dtypes,
    read_metadata,
    read_shapes,
    read_state_dict,
    save_checkpoint,
    write_safetensors,
)

DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.uint16,
    torch.uint32,
    torch.uint64,
]


def _sample(dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, (3, 5), generator=g).bool()
    if dtype.is_floating_point:
        return (torch.randn(3, 5, generator=g) * 4).to(dtype)
    return torch.randint(0, 100, (3, 5), generator=g).to(dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality that also works for dtypes without comparison kernels (float8, uint64)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _mixed() -> dict[str, torch.Tensor]:
    return {f"t.{str(d).removeprefix('torch.')}": _sample(d, i) for i, d in enumerate(DTYPES)}


def _in_file_mapping(t: torch.Tensor, path: Path) -> bool:
    """True when the tensor's memory lies inside a memory mapping of `path` (per /proc/self/maps)."""
    real = str(path.resolve())
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == real:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if lo <= start and end <= hi:
                    return True
    return False


def _raw_safetensors(path: Path, header: dict, data: bytes) -> None:
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


# --- safetensors: interoperability ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_package_reads_what_we_write(tmp_path, dtype):
    path = tmp_path / "ours.safetensors"
    t = _sample(dtype)
    write_safetensors(path, {"x": t})
    assert _same(safetensors.torch.load_file(path)["x"], t)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_we_read_what_package_writes(tmp_path, dtype):
    path = tmp_path / "theirs.safetensors"
    t = _sample(dtype)
    safetensors.torch.save_file({"x": t}, path)
    assert _same(read_state_dict(path)["x"], t)


def test_mixed_dtypes_round_trip_through_package(tmp_path):
    tensors = _mixed()
    path = tmp_path / "mixed.safetensors"
    write_safetensors(path, tensors)
    back = safetensors.torch.load_file(path)
    assert back.keys() == tensors.keys() and all(_same(back[k], tensors[k]) for k in tensors)


def test_package_reads_our_metadata(tmp_path):
    path = tmp_path / "meta.safetensors"
    write_safetensors(path, {"x": torch.ones(2)}, {"format": "pt", "note": "héllo"})
    with safetensors.safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt", "note": "héllo"}


def test_we_read_package_metadata(tmp_path):
    path = tmp_path / "meta.safetensors"
    safetensors.torch.save_file({"x": torch.ones(2)}, path, metadata={"modelspec.title": "tiny"})
    assert read_metadata(path) == {"modelspec.title": "tiny"}


def test_header_is_padded_to_8_bytes(tmp_path):
    path = tmp_path / "pad.safetensors"
    write_safetensors(path, {"abc": torch.ones(3, dtype=torch.float16)})
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert length % 8 == 0


def test_scalar_and_empty_tensors_round_trip(tmp_path):
    path = tmp_path / "odd.safetensors"
    tensors = {"scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4)}
    write_safetensors(path, tensors)
    back = read_state_dict(path)
    assert _same(back["scalar"], tensors["scalar"]) and _same(back["empty"], tensors["empty"])


def test_non_contiguous_tensor_is_written_by_value(tmp_path):
    path = tmp_path / "t.safetensors"
    t = torch.arange(12.0).reshape(3, 4).t()
    write_safetensors(path, {"t": t})
    assert torch.equal(safetensors.torch.load_file(path)["t"], t)


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "fail.safetensors"
    with pytest.raises(NotImplementedError):  # a meta tensor has no data to write
        write_safetensors(path, {"ok": torch.ones(2), "bad": torch.ones(2, device="meta")})
    assert list(tmp_path.iterdir()) == []


# --- safetensors: memory behaviour ------------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_matching_dtype_is_zero_copy_view_of_the_file(tmp_path):
    path = tmp_path / "z.safetensors"
    write_safetensors(path, {"w": torch.randn(64, 64)})
    t = read_state_dict(path)["w"]
    assert _in_file_mapping(t, path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_cast_tensor_is_not_backed_by_the_file(tmp_path):
    path = tmp_path / "z.safetensors"
    write_safetensors(path, {"w": torch.randn(64, 64)})
    t = read_state_dict(path, dtype=torch.float16)["w"]
    assert t.dtype == torch.float16 and not _in_file_mapping(t, path)


def test_mapped_tensor_is_writable_without_touching_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {"w": torch.zeros(16)})
    before = path.read_bytes()
    t = read_state_dict(path)["w"]
    t += 1
    assert torch.equal(t, torch.ones(16)) and path.read_bytes() == before


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cast_to_half_types(tmp_path, dtype):
    path = tmp_path / "c.safetensors"
    w = torch.randn(8, 8)
    write_safetensors(path, {"w": w})
    assert torch.equal(read_state_dict(path, dtype=dtype)["w"], w.to(dtype))


def test_the_vae_can_have_its_own_dtype(tmp_path):
    """Single file (`first_stage_model.*` keys) and diffusers folder (`vae/`): only the VAE takes `vae_dtype`."""
    from model_fixtures import write_tiny_folder

    path = tmp_path / "v.safetensors"
    write_safetensors(path, {"first_stage_model.decoder.w": torch.ones(4), "model.diffusion_model.w": torch.ones(4)})
    sd = read_state_dict(path, dtype=torch.bfloat16, vae_dtype=torch.float32)
    assert sd["first_stage_model.decoder.w"].dtype == torch.float32
    assert sd["model.diffusion_model.w"].dtype == torch.bfloat16
    folder = read_state_dict(write_tiny_folder(tmp_path / "f"), dtype=torch.bfloat16, vae_dtype=torch.float32)
    dtypes = {key.split(".")[0]: t.dtype for key, t in folder.items() if t.is_floating_point()}
    assert dtypes == {"first_stage_model": torch.float32, "model": torch.bfloat16, "cond_stage_model": torch.bfloat16}


def test_cast_leaves_integer_tensors_alone(tmp_path):
    path = tmp_path / "i.safetensors"
    ids = torch.arange(77, dtype=torch.int64)
    write_safetensors(path, {"position_ids": ids, "w": torch.ones(2)})
    assert _same(read_state_dict(path, dtype=torch.float16)["position_ids"], ids)


@pytest.mark.cuda  # skipped where torch sees no CUDA device (tests/conftest.py)
def test_read_to_cuda_with_cast(tmp_path):
    path = tmp_path / "g.safetensors"
    w = torch.randn(8, 8)
    write_safetensors(path, {"w": w, "ids": torch.arange(4)})
    sd = read_state_dict(path, dtype=torch.float16, device="cuda")
    assert sd["w"].is_cuda and torch.equal(sd["w"].cpu(), w.half()) and sd["ids"].dtype == torch.int64


def test_read_shapes_reads_only_the_header(tmp_path):
    # A 64 MiB tensor in a sparse file: reading its data would show up in the process's read() byte count.
    path = tmp_path / "big.safetensors"
    n = 16 * 1024 * 1024
    blob = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + 4 * n)
    io = psutil.Process().io_counters
    before = io().read_chars
    shapes = read_shapes(path)
    assert shapes == {"w": (n,)} and io().read_chars - before < 1024 * 1024


def test_read_dtypes_reports_stored_dtypes(tmp_path):
    path = tmp_path / "d.safetensors"
    write_safetensors(path, {"w": torch.ones(2, dtype=torch.bfloat16), "ids": torch.arange(3)})
    assert read_dtypes(path) == {"w": "bfloat16", "ids": "int64"}


def test_read_dtypes_of_a_ckpt(tmp_path):
    path = tmp_path / "d.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2, dtype=torch.float16)}}, path)
    assert read_dtypes(path) == {"w": "float16"}


def test_ema_keys_are_dropped_from_safetensors(tmp_path):
    path = tmp_path / "ema.safetensors"
    write_safetensors(path, {"model.diffusion_model.out.2.bias": torch.ones(4), "model_ema.out2bias": torch.ones(4)})
    assert list(read_state_dict(path)) == ["model.diffusion_model.out.2.bias"]


# --- safetensors: damaged files ---------------------------------------------------------------------------------


def _good_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"a": torch.randn(32), "b": torch.randn(32)})
    return path


def test_truncated_file_is_refused_naming_the_file(tmp_path):
    path = _good_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        read_state_dict(path)


def test_garbage_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(os.urandom(3) + b"this is not a model at all" * 40)
    with pytest.raises(CheckpointError, match=r"garbage\.safetensors"):
        read_state_dict(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.safetensors: empty file"):
        read_state_dict(path)


def test_header_pointing_past_the_end_is_refused(tmp_path):
    path = tmp_path / "past.safetensors"
    _raw_safetensors(path, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}, bytes(16))
    with pytest.raises(CheckpointError, match=r"past\.safetensors: tensor 'w'"):
        read_state_dict(path)


def test_header_json_that_does_not_parse_is_refused(tmp_path):
    path = tmp_path / "json.safetensors"
    blob = b'{"w": {"dtype": '
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(8))
    with pytest.raises(CheckpointError, match=r"json\.safetensors: .*JSON"):
        read_state_dict(path)


def test_size_not_matching_dtype_and_shape_is_refused(tmp_path):
    path = tmp_path / "size.safetensors"
    _raw_safetensors(path, {"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 16]}}, bytes(16))
    with pytest.raises(CheckpointError, match=r"size\.safetensors: tensor 'w'.*needs 8"):
        read_state_dict(path)


def test_overlapping_tensors_are_refused(tmp_path):
    path = tmp_path / "overlap.safetensors"
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    _raw_safetensors(path, header, bytes(24))
    with pytest.raises(CheckpointError, match=r"overlap"):
        read_state_dict(path)


def test_unknown_dtype_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "dtype.safetensors"
    _raw_safetensors(path, {"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 4]}}, bytes(4))
    with pytest.raises(CheckpointError, match=r"dtype\.safetensors: tensor 'w': unsupported dtype"):
        read_shapes(path)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothere\.safetensors"):
        read_state_dict(tmp_path / "nothere.safetensors")


# --- torch pickles ----------------------------------------------------------------------------------------------


class _Payload:
    """Pickles to a call of os.system that creates a marker file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _evil_ckpt(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": _Payload(marker)}, path)
    return path, marker


def test_ckpt_plain_dict_loads(tmp_path):
    path = tmp_path / "good.ckpt"
    tensors = {"w": torch.randn(3, 3), "ids": torch.arange(5)}
    torch.save(tensors, path)
    back = read_state_dict(path)
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_ckpt_state_dict_wrapper_is_unwrapped_and_ema_dropped(tmp_path):
    path = tmp_path / "wrapped.ckpt"
    sd = {"model.diffusion_model.out.2.bias": torch.ones(4), "model_ema.diffusion_modelout2bias": torch.ones(4)}
    torch.save({"state_dict": sd, "global_step": 470000, "epoch": 3}, path)
    assert list(read_state_dict(path)) == ["model.diffusion_model.out.2.bias"]


def test_ckpt_non_tensor_entries_are_ignored(tmp_path):
    path = tmp_path / "flat.ckpt"
    torch.save({"w": torch.ones(2), "global_step": 5, "name": "x"}, path)
    assert list(read_state_dict(path)) == ["w"]


def test_legacy_non_zip_ckpt_loads(tmp_path):
    path = tmp_path / "legacy.ckpt"
    w = torch.randn(4)
    torch.save({"state_dict": {"w": w}}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(read_state_dict(path)["w"], w)


def test_ckpt_cast_to_half(tmp_path):
    path = tmp_path / "cast.ckpt"
    w = torch.randn(4)
    torch.save({"w": w}, path)
    assert torch.equal(read_state_dict(path, dtype=torch.float16)["w"], w.half())


def test_ckpt_shapes(tmp_path):
    path = tmp_path / "shapes.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2, 3), "b": torch.ones(5)}}, path)
    assert read_shapes(path) == {"w": (2, 3), "b": (5,)}


def test_code_payload_is_live(tmp_path):
    """Guards the refusal test below: the payload does run when a file is unpickled without weights_only."""
    path, marker = _evil_ckpt(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_ckpt_with_code_is_refused_and_nothing_runs(tmp_path):
    path, marker = _evil_ckpt(tmp_path)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: contains code or objects other than tensors"):
        read_state_dict(path)
    assert not marker.exists()


def test_garbage_ckpt_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"PK\x03\x04" + os.urandom(200))
    with pytest.raises(CheckpointError, match=r"junk\.ckpt: not a readable PyTorch checkpoint"):
        read_state_dict(path)


def test_safetensors_content_is_recognised_whatever_the_suffix(tmp_path):
    path = tmp_path / "renamed.ckpt"
    write_safetensors(path, {"w": torch.ones(3)})
    assert torch.equal(read_state_dict(path)["w"], torch.ones(3))


# --- save_checkpoint --------------------------------------------------------------------------------------------


def test_save_checkpoint_uses_ldm_prefixes(tmp_path):
    path = tmp_path / "model.safetensors"
    save_checkpoint(
        path,
        {"out.2.bias": torch.ones(4)},
        {"decoder.conv_out.bias": torch.ones(3)},
        {"text_model.final_layer_norm.bias": torch.ones(8)},
    )
    assert set(read_shapes(path)) == {
        "model.diffusion_model.out.2.bias",
        "first_stage_model.decoder.conv_out.bias",
        "cond_stage_model.transformer.text_model.final_layer_norm.bias",
    }


def test_save_checkpoint_text_prefix_and_metadata(tmp_path):
    path = tmp_path / "sd2.safetensors"
    save_checkpoint(
        path, {}, {}, {"ln_final.weight": torch.ones(8)}, text_prefix="cond_stage_model.model.", metadata={"a": "b"}
    )
    assert list(read_shapes(path)) == ["cond_stage_model.model.ln_final.weight"] and read_metadata(path) == {"a": "b"}


def test_save_checkpoint_refuses_other_suffixes(tmp_path):
    with pytest.raises(CheckpointError, match=r"model\.ckpt"):
        save_checkpoint(tmp_path / "model.ckpt", {"w": torch.ones(1)}, {}, {})
