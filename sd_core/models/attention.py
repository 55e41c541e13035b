"""Helpers shared by the networks: multi-head attention on `scaled_dot_product_attention`, the timestep embedding and
the GroupNorm flavours. No parameters live here, so the modules keep the checkpoint key layout."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, causal: bool = False) -> torch.Tensor:
    """Multi-head attention on [B, N, heads*dim] tensors; returns [B, N, heads*dim].

    One fused SDPA call (flash / memory-efficient kernels where the device has them), default 1/sqrt(dim) scale."""
    b, n, inner = q.shape
    dim = inner // heads
    q, k, v = (t.reshape(b, -1, heads, dim).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return out.transpose(1, 2).reshape(b, n, inner)


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
