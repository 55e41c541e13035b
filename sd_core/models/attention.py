"""Helpers shared by the networks: multi-head attention on `scaled_dot_product_attention`, the timestep embedding and
the GroupNorm flavours. No parameters live here, so the modules keep the checkpoint key layout."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    causal: bool = False,
    dtype: torch.dtype | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Multi-head attention on [B, N, heads*dim] tensors; returns [B, N, heads*dim] in q's dtype.

    One fused SDPA call (flash / memory-efficient kernels where the device has them), default 1/sqrt(dim) scale.
    Measured on the CPU: the flash kernel torch picks by default is 4-5x faster than the math one at 1024-4096 tokens
    (`benchmarks/bench.py --levers`), so no backend is forced. `dtype`: compute in it (float32 for half-precision
    models on CPUs where half precision is slow, `devices.pick_attention_dtype`), the result rounded back once.
    `chunk`: queries in chunks of this many rows (attention slicing), which caps the score matrix where SDPA runs its
    plain (math) kernel; flash and memory-efficient kernels never build it."""
    out_dtype = q.dtype
    if dtype is not None and dtype != out_dtype:
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    b, n, inner = q.shape
    dim = inner // heads
    q, k, v = (t.reshape(b, -1, heads, dim).transpose(1, 2) for t in (q, k, v))
    size = chunk
    if size is None or n <= size or causal:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    else:
        out = torch.empty(b, n, heads, dim, dtype=q.dtype, device=q.device).transpose(1, 2)
        for start in range(0, n, size):
            out[:, :, start : start + size] = F.scaled_dot_product_attention(q[:, :, start : start + size], k, v)
    return out.transpose(1, 2).reshape(b, n, inner).to(out_dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [B] -> [B, dim] in float32, cosines first.

    Frequencies are exp(-ln(max_period) * i / half) for i < half, as the original LDM UNet (and diffusers with
    `flip_sin_to_cos=True, freq_shift=0`) compute them; float32 so that t=999.37 stays distinct from t=999."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    """The 32-group GroupNorm every SD network uses (LDM `GroupNorm32`/`Normalize`)."""
    return nn.GroupNorm(32, channels, eps=eps, affine=True)
