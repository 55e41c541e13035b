"""The few layer operations that some devices run as one fused kernel, written here once as plain maths.

A residual add after a convolution, a bias added per channel, GEGLU's gated product, a convolution after a 2x
upsample: each is an expression of ordinary layers. A layer object may offer the same sums as a method
(`forward_add`, `forward_bias`, `forward_upsampled`, `geglu`); these functions use it when it is there and the plain
expression otherwise. So the networks hold only the maths, and whoever supplies faster layers (`sd_core.accel`
swaps in prepacked oneDNN layers on the CPU) plugs in without the networks knowing it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def add_residual(layer: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """`residual + layer(x)` (the residual add of ResBlocks, attention and MLP blocks)."""
    fused = getattr(layer, "forward_add", None)
    if fused is not None:
        return fused(x, residual)
    return residual + layer(x)


def add_channel_bias(conv: nn.Module, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`conv(x) + bias[:, :, None, None]`: a per-image, per-channel bias [B or 1, C_out] (the timestep embedding)."""
    fused = getattr(conv, "forward_bias", None)
    if fused is not None:
        return fused(x, bias)
    return conv(x) + bias[:, :, None, None]


def upsample_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`conv(nearest_2x_upsample(x))`, the upsampling step of the VAE decoder."""
    fused = getattr(conv, "forward_upsampled", None)
    if fused is not None:
        return fused(x)
    return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def geglu(proj: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Gated GELU: `value * gelu(gate)` with `value, gate = proj(x).chunk(2)`."""
    fused = getattr(proj, "geglu", None)
    if fused is not None:
        return fused(x)
    value, gate = proj(x).chunk(2, dim=-1)
    if torch.is_grad_enabled():
        return value * F.gelu(gate)
    return F.gelu(gate).mul_(value)


def silu_(x: torch.Tensor) -> torch.Tensor:
    """SiLU in place when no autograd graph is recorded (after a GroupNorm whose output nobody else holds)."""
    return F.silu(x, inplace=not (torch.is_grad_enabled() and x.requires_grad))
