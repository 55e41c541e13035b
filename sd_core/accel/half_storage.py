"""Half-precision weights with float32 arithmetic, for bf16/fp16 models on CPUs that have no half-precision kernels.

Why: oneDNN's bf16 and fp16 kernels need AVX-512 (BW/VL/DQ), AVX-NE-CONVERT or AMX. Without them (AVX2-only CPUs such
as AMD Zen 3) eager PyTorch falls back to generic bf16 convolutions and GEMMs: an SD1.5 UNet call at 256x256 (CFG
batch of 2) measured 150 s in bf16 against 3.7 s in float32 on a 2-core EPYC Zen 3. There a half-precision model keeps
its weights in half precision (the memory it was chosen for) and each Conv2d/Linear converts its weight to float32 for
the call and back after it: the same call takes 6.9 s. Activations between layers stay in the model's dtype, so the
result is the half-precision model's up to summation order (the products are exact either way; both accumulate in
float32). Layers stay `nn.Conv2d`/`nn.Linear` instances (`state_dict()` unchanged); `.to()` or `restore` gives the
plain layers back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HALF = (torch.bfloat16, torch.float16)


def half_kernels_available(dtype: torch.dtype) -> bool:
    """True when this CPU has oneDNN kernels for `dtype` (float32 always; bf16/fp16 by instruction set)."""
    if dtype not in HALF:
        return True
    mk = getattr(torch.ops, "mkldnn", None)
    check = "_is_mkldnn_bf16_supported" if dtype == torch.bfloat16 else "_is_mkldnn_fp16_supported"
    try:
        return torch.backends.mkldnn.is_available() and mk is not None and bool(getattr(mk, check)())
    except (AttributeError, RuntimeError):
        return False


class _Upcast:
    weight: nn.Parameter
    bias: nn.Parameter | None

    def _float_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.weight.float(), None if self.bias is None else self.bias.float()

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), ...: a plain module again first
        restore_module(self)
        return self._apply(fn, recurse)


class UpcastConv2d(_Upcast, nn.Conv2d):
    """A Conv2d with half-precision weights computed in float32 (`_conv_forward` keeps seamless tiling's padding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x.float(), *self._float_params()).to(x.dtype)


class UpcastLinear(_Upcast, nn.Linear):
    """A Linear with half-precision weights computed in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), *self._float_params()).to(x.dtype)


_PLAIN = {UpcastConv2d: nn.Conv2d, UpcastLinear: nn.Linear}
_UPCAST = {nn.Conv2d: UpcastConv2d, nn.Linear: UpcastLinear}


def upcast_half_layers(module: nn.Module) -> int:
    """Make every plain Conv2d/Linear of `module` whose CPU weight is bf16/fp16 compute in float32, in place, where
    this CPU has no oneDNN kernels for that dtype. Returns the number of layers changed."""
    count = 0
    for m in module.modules():
        cls = _UPCAST.get(type(m))
        w = getattr(m, "weight", None)
        if cls and isinstance(w, torch.Tensor) and w.device.type == "cpu" and w.dtype in HALF:
            if not half_kernels_available(w.dtype):
                m.__class__ = cls
                count += 1
    return count


def restore_module(m: nn.Module) -> bool:
    plain = _PLAIN.get(type(m))
    if plain is not None:
        m.__class__ = plain
    return plain is not None


def restore(module: nn.Module) -> int:
    """Undo `upcast_half_layers`."""
    return sum(restore_module(m) for m in list(module.modules()))


def is_upcast(module: nn.Module) -> bool:
    return any(type(m) in _PLAIN for m in module.modules())
