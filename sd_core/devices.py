"""Device and dtype choice.

Defaults, and why:
- CUDA first, then Apple MPS, then the CPU.
- GPUs run in float16 (half the memory, tensor cores); the VAE falls back to float32 when float16 decodes to NaN
  (the pipeline checks), the known cause of black images.
- On the CPU, bfloat16 only where the processor has native bf16 arithmetic (AVX512-BF16 or AMX): measured about
  2x faster than float32 there. Without it bf16 is emulated and slower than float32, so float32 is used.
"""

from __future__ import annotations

import functools

import torch

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or the best one available."""
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} requested but CUDA is not available")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device={device!r} requested but MPS is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); Linux reads /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The requested dtype, or the fastest safe one for the device."""
    if dtype is not None:
        if isinstance(dtype, torch.dtype):
            return dtype
        try:
            return DTYPES[str(dtype).lower()]
        except KeyError:
            raise ValueError(f"dtype={dtype!r} is not one of {sorted(set(DTYPES))}") from None
    if device.type in ("cuda", "mps"):
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
