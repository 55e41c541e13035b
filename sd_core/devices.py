"""Device and dtype choice.

Defaults, and why:
- CUDA first, then Apple MPS, then the CPU.
- GPUs run in float16 (half the memory, tensor cores); the VAE falls back to float32 when float16 decodes to NaN
  (the pipeline checks), the known cause of black images.
- On the CPU, bfloat16 where its matrix arithmetic is faster than float32's: processors with AMX tile units (`amx_bf16`;
  measured on a 2-core Xeon with AMX: an SD1.5 UNet step at 256x256 0.79 s in bf16 against 1.93 s in float32, at 512x512
  3.12 s against 6.60 s, VAE decode 0.26x float32's time), and AMD processors with AVX512-BF16 (Zen 4 and later), whose
  bf16 dot products do twice the work of a float32 FMA at the same rate (measured on a 2-core EPYC Zen 4: SD1.5 UNet
  call at 256x256 1.30 s in bf16 against 2.22 s in float32, VAE decode 1.47 s against 3.35 s). On Intel processors
  AVX512-BF16 without AMX is not enough: the dot-product instruction runs on one port where float32 FMAs run on two
  (measured on a 2-core AVX512-BF16 Xeon without AMX: an SD1.5 UNet step 1.2-1.5x *slower* in bf16 than in float32,
  diffusers and sd_core alike; see `benchmarks/bench.py`). Everywhere else float32.
- The VAE of a half-precision pipeline on a CPU where half precision is slow stays float32 (`pick_vae_dtype`;
  A1111's --no-half-vae): there half-precision convolutions are slower than float32 ones, and the VAE is small (84M
  parameters), so a float32 VAE decodes faster and exactly, for about 170 MB more.
- For the same reason, attention in a half-precision pipeline on such a CPU computes in float32
  (`pick_attention_dtype`; A1111's "upcast cross attention layer to float32"): attention has no weights, only q/k/v
  and the output are converted (a few MB), and the SD1.5 UNet step at 512x512 in bf16 takes 0.92x the time. Where
  bf16 is fast (the Zen 4 above) float32 attention gains nothing (0.99x), so it stays bf16.
- Where the CPU has no half-precision kernels at all (AVX2 only, e.g. AMD Zen 3), a bf16/fp16 model's convolutions
  and linears compute in float32 from their half-precision weights (`accel.half_storage`, applied by `accel.optimize`).
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
def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def cpu_has_amx_bf16() -> bool:
    """True when the CPU has AMX bf16 tile units (where bf16 beats float32 by far); Linux reads /proc/cpuinfo."""
    return "amx_bf16" in _cpu_flags()


def cpu_has_avx512() -> bool:
    """True when the CPU has AVX-512 (foundation); Linux reads /proc/cpuinfo."""
    return "avx512f" in _cpu_flags()


def cpu_bf16_is_fast() -> bool:
    """True when bf16 matrix arithmetic beats float32 on this CPU: AMX, or AVX512-BF16 on AMD (Zen 4 and later)."""
    info = _cpu_flags()
    return cpu_has_amx_bf16() or ("avx512_bf16" in info and "AuthenticAMD" in info)


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
    return torch.bfloat16 if cpu_bf16_is_fast() else torch.float32


def pick_vae_dtype(
    device: torch.device,
    dtype: torch.dtype,
    vae_dtype: str | torch.dtype | None = None,
    *,
    overflows_in_fp16: bool = False,
) -> torch.dtype:
    """The VAE's dtype in a pipeline of `dtype`: the requested one, else float32 for a bfloat16/float16 pipeline on a
    CPU where half precision is slow (`half_is_slow`; measured on an Intel CPU without AMX, SD1.5 VAE decode at
    256x256: bfloat16 4.8 s, float32 2.4 s), else `dtype` (GPUs: float16, with the pipeline's NaN fallback to
    float32). `overflows_in_fp16` (the SDXL VAE, whose activations exceed float16's range: black or NaN images) turns
    a float16 choice into bfloat16 where that is fast (CUDA GPUs that support it, `cpu_bf16_is_fast`), else float32,
    up front rather than by the retry."""
    if vae_dtype is not None:
        return pick_dtype(device, vae_dtype)
    chosen = torch.float32 if half_is_slow(device, dtype) else dtype
    if overflows_in_fp16 and chosen == torch.float16:
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        fast_bf16 = cuda_bf16 or (device.type == "cpu" and cpu_bf16_is_fast())
        return torch.bfloat16 if fast_bf16 else torch.float32
    return chosen


def pick_attention_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype attention computes in for a model of `dtype`: float32 for bfloat16/float16 where `half_is_slow`
    (half-precision dot products and exponentials are slower there than float32 ones), else None (the inputs' own)."""
    return torch.float32 if half_is_slow(device, dtype) else None


def half_is_slow(device: torch.device, dtype: torch.dtype) -> bool:
    """True for bfloat16/float16 on a CPU where float32 arithmetic is the faster one: bfloat16 unless
    `cpu_bf16_is_fast`, float16 unless AMX (no AVX512-FP16 kernel is assumed elsewhere)."""
    if device.type != "cpu":
        return False
    if dtype == torch.bfloat16:
        return not cpu_bf16_is_fast()
    return dtype == torch.float16 and not cpu_has_amx_bf16()
