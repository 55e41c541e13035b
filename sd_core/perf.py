"""Speed and memory levers, each measured in `benchmarks/bench.py` (numbers in docs/performance.md).

CPU, on by default (`sd_core.load(..., optimize=True)`, `optimize(pipe)`):
- **Prepacked oneDNN weights** (`pack_for_cpu`): every Conv2d and Linear keeps its weight in oneDNN's blocked layout
  instead of the plain one, so the weight reorder that eager PyTorch repeats on every call is done once; convolutions
  run channels_last. The packed weight *replaces* the plain one (no second copy). In float32 the kernels are the ones
  eager PyTorch calls, so results agree to float rounding (tests: `tests/test_optimizations.py`).
- **BLAS linears** (`blas_linears_pay`, `use_blas_linears`): on CPUs without AVX-512 the float32 linears stay dense
  and run as MKL GEMMs (residual add and GEGLU's multiply in place on the GEMM's output), faster there than oneDNN's
  packed GEMMs, with nothing to pack at the first call.
- **Fused epilogues** on packed layers: residual adds run inside the conv/linear that precedes them, the timestep
  embedding is folded into the ResBlock conv bias when the batch shares one timestep (txt2img with CFG does), GEGLU is
  two GEMMs with gelu and the multiply fused, SiLU after GroupNorm runs in place.
- **Winograd 3x3 convolutions** (`winograd`, F(4x4,3x3)) in float32 where they pay (wide channels, large images:
  the UNet's 320/640-channel levels at 512x512, the whole VAE decoder): 4x fewer multiply-adds, relative error
  ~1e-5 of the output's scale instead of ~3e-6 (tests: `tests/test_winograd.py`); `use_winograd(module, False)` to opt
  out. The kernel's transform is built per call, never stored.
- **Sub-pixel upsampling** in the VAE decoder (`upsample_conv`): nearest-2x then 3x3 conv computed as four 2x2 convs
  of the low-resolution input, 2.25x fewer multiply-adds and no 4x upsampled tensor (exact up to float rounding).
- **Heap trims** before each VAE decoder level (`trim_heap_before`): lower peak RSS, a few milliseconds.
- **Freed memory kept while sampling** (`heap.freed_memory_kept`, entered by the pipeline after the first step): each
  step reuses the previous step's pages instead of faulting fresh ones in.
- **Float32 attention** in bf16/fp16 models on CPUs where half precision is slow (`set_attention_dtype`, choice in
  `devices.pick_attention_dtype`): only q/k/v and the output are converted; faster there, same accuracy.
- **Half-precision weights, float32 arithmetic** (`half_storage`) for bf16/fp16 models on CPUs without oneDNN
  half-precision kernels (AVX2-only), where PyTorch's fallback kernels are ~40x slower than float32.
Packed modules stay `nn.Conv2d`/`nn.Linear` instances: `state_dict()` gives plain tensors, `.to()` unpacks first,
seamless tiling falls back to a plain convolution, and `unpack(module)` restores the original modules.

GPU, on by default: channels_last UNet and VAE; on CUDA, each sampling run's UNet steps replayed as CUDA graphs
(`sd_core.cuda_graphs`: the first step captures, the others replay; on an H200 at 512x512 fp16, 0.37-0.42x the
eager step time at batch 1, 0.76-0.89x at batch 4; `pipe.cuda_graphs = False` to opt out).

Opt-in: `compile_models` (torch.compile; CUDA graphs with mode="reduce-overhead" on GPU), `attention_slicing`,
`LowVRAM` (one model on the GPU at a time, or the UNet block by block), `set_cpu_threads`.
`unet_flops` counts the FLOPs of one UNet call (for achieved FLOP/s next to the hardware's peak).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import devices, half_storage, heap, winograd

# --- prepacked oneDNN layers -----------------------------------------------------------------------------------------


def packing_available(dtype: torch.dtype = torch.float32) -> bool:
    """oneDNN (mkldnn) with the packed-weight ops that torch's own CPU compiler uses, able to run `dtype` on this CPU.

    oneDNN's bfloat16 kernels need AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT; on an AVX2-only CPU (e.g. AMD Zen 3) its
    weight reorder refuses bfloat16, so bfloat16 layers are not packed there (`half_storage` computes them)."""
    mk = getattr(torch.ops, "mkldnn", None)
    try:
        ops = (
            torch.backends.mkldnn.is_available()
            and mk is not None
            and hasattr(mk, "_convolution_pointwise")
            and hasattr(mk, "_reorder_convolution_weight")
            and hasattr(mk, "_linear_pointwise")
            and hasattr(mk, "_reorder_linear_weight")
        )
        return bool(ops) and dtype in (torch.float32, torch.bfloat16) and half_storage.half_kernels_available(dtype)
    except (AttributeError, RuntimeError):
        return False


def _mk():
    return torch.ops.mkldnn


def _release_if_unshared(old: torch.Tensor) -> None:
    """`old` (a weight just replaced by its packed copy) may be a zero-copy view of a memory-mapped checkpoint: give
    its pages back, so RSS does not hold the file and the packed copy at once. Only when no other tensor shares its
    storage (then nobody can see the pages again, written to or not)."""
    if old.device.type != "cpu" or old.is_mkldnn or not old.numel():
        return
    try:
        unshared = torch._C._storage_Use_Count(old.untyped_storage()._cdata) <= 2  # `old` + the temporary wrapper
    except (AttributeError, RuntimeError):
        return
    if unshared:
        from .checkpoint import release_pages

        release_pages(old)


def _pack_conv_weight(weight: torch.Tensor, conv: nn.Conv2d, input_shape) -> torch.Tensor:
    with torch.no_grad():
        return _mk()._reorder_convolution_weight(
            weight.detach(),
            list(conv.padding),
            list(conv.stride),
            list(conv.dilation),
            conv.groups,
            list(input_shape),
        )


def _pack_linear_weight(w: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _mk()._reorder_linear_weight(w.detach().contiguous(), None)


class _Packed:
    """Shared behaviour of packed layers: the fast path's conditions and transparent unpacking.

    Packing is lazy: `pack_for_cpu` only swaps the class; the first call packs (so loading stays a memory map and the
    first call costs what a plain call costs: one weight reorder)."""

    weight: nn.Parameter

    def fast(self, x: torch.Tensor) -> bool:
        """True when the packed kernel may run: CPU tensor of the weight's dtype, no autograd graph to build (the
        oneDNN ops have no backward: with anything requiring grad, the plain maths run)."""
        if x.device.type != "cpu" or x.dtype != self.weight.dtype:
            return False
        if torch.is_grad_enabled():
            return not any(t is not None and t.requires_grad for t in (x, self.weight, self.bias))
        return True

    def dense_weight(self) -> torch.Tensor:
        return self.weight.to_dense() if self.weight.is_mkldnn else self.weight

    def _apply(self, fn, recurse=True):  # .to(), .float(), .cuda(), ...: back to a plain module first
        unpack_module(self)
        return self._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for name, value in self.dense_state().items():
            destination[prefix + name] = value if keep_vars else value.detach()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        unpack_module(self)
        self._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def dense_state(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.dense_weight()}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def _set_weight(self, name: str, packed: torch.Tensor) -> None:
        old = getattr(self, name, None)
        setattr(self, name, nn.Parameter(packed, requires_grad=False))
        if old is not None:
            _release_if_unshared(old)
            del old


class PackedConv2d(_Packed, nn.Conv2d):
    """A Conv2d whose weight lives in oneDNN's blocked layout (channels_last activations).

    oneDNN's preferred layout depends on the whole problem (batch, channels, spatial size): a weight packed for
    another input shape gets reordered again on *every* call (measured: 12 such convs cost 1.3 s per SD1.5 step).
    So the weight is (re)packed once whenever the input shape changes (once per image size in practice)."""

    _packed_for: tuple[int, ...] | None = None  # input shape the weight is packed for; None: not packed yet
    winograd: bool = True  # Winograd F(4x4,3x3) where `winograd.applies` (per instance: `use_winograd`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # an instance-level `_conv_forward` is sd_core.tiling's seamless padding: honour it with the plain weight
        if self.fast(x) and "_conv_forward" not in self.__dict__:
            return self._run(x, self.bias)
        return self._conv_forward(x, self.dense_weight(), self.bias)

    def repack(self, input_shape: list[int] | tuple[int, ...]) -> None:
        """Pack the weight for inputs of `input_shape` (done automatically at the first call with a new shape)."""
        self._set_weight("weight", _pack_conv_weight(self.dense_weight(), self, input_shape))
        self._packed_for = tuple(input_shape)

    def _winograd_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The plain weight when this call goes through `winograd.conv3x3` (kept unpacked from then on: the Winograd
        kernel is built from it per call, and oneDNN's copy would be a second one), else None."""
        if not (self.winograd and winograd.applies(x, self)):
            return None
        if self.weight.is_mkldnn:
            self._set_weight("weight", self.weight.to_dense().contiguous())
            self._packed_for = None
        return self.weight

    def _run(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        weight = self._winograd_weight(x)
        if weight is not None:
            return winograd.conv3x3(x, weight, bias)
        if self._packed_for != tuple(x.shape):
            self.repack(x.shape)
        return _mk()._convolution_pointwise(
            x, self.weight, bias, self.padding, self.stride, self.dilation, self.groups, "none", [], None
        )

    def forward_add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """conv(x) + other, the add fused into the convolution."""
        if self.fast(x) and "_conv_forward" not in self.__dict__ and other.dtype == x.dtype:
            if other.shape[:2] == (x.shape[0], self.out_channels) and other.dim() == 4:
                weight = self._winograd_weight(x) if other.shape[2:] == x.shape[2:] else None
                if weight is not None:
                    return winograd.conv3x3(x, weight, self.bias, other)
                if self._packed_for != tuple(x.shape):
                    self.repack(x.shape)
                mk = _mk()
                return mk._convolution_pointwise.binary(
                    x, other, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups, "add",
                    None, None, [], None,
                )  # fmt: skip
        return self.forward(x) + other

    def forward_bias(self, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        """conv(x) + extra[None, :, None, None] with `extra` [C_out] folded into the bias."""
        if self.fast(x) and "_conv_forward" not in self.__dict__:
            bias = extra if self.bias is None else self.bias + extra
            return self._run(x, bias.to(x.dtype))
        return self.forward(x) + extra[None, :, None, None]

    def forward_upsampled(self, x: torch.Tensor) -> torch.Tensor:
        """conv(nearest 2x upsample of x) for a 3x3 conv with padding 1 ("sub-pixel"): each of the four output pixel
        phases sees only a 2x2 neighbourhood of `x`, so four 2x2 convolutions of `x` (`_phase_kernel`) give them,
        interleaved into the output. The same sums with 2.25x fewer multiply-adds, and the 4x larger upsampled input
        is never built (SD1.5 VAE decode at 256x256: 0.87x the time, `benchmarks/bench.py --levers`). Seamless
        padding works unchanged: the conv's own `_conv_forward` pads x by one pixel (zeros or circular), which is
        exactly the upsampled image's padding seen at low resolution."""
        plain_3x3 = self.kernel_size == (3, 3) and self.groups == 1 and list(self.padding) == [1, 1]
        if not (plain_3x3 and list(self.stride) == list(self.dilation) == [1, 1] and self.fast(x)):
            return self.forward(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        n, _, h, w = x.shape
        weight = self.dense_weight()
        y = torch.empty((n, self.out_channels, 2 * h, 2 * w), dtype=x.dtype, memory_format=torch.channels_last)
        for a in (0, 1):
            for b in (0, 1):
                # one phase at a time: only a quarter of the output exists twice (plain: the 4x input and the output)
                out = self._conv_forward(x, _phase_kernel(weight, a, b), self.bias)
                y[:, :, a::2, b::2] = out[:, :, a : a + h, b : b + w]
                del out
        return y


def _phase_kernel(weight: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """[C_out, C_in, 3, 3] -> [C_out, C_in, 2, 2]: the kernel over the original image that gives the output pixels at
    row parity `a` and column parity `b` of the 3x3 conv over the nearest-2x-upsampled image. Even rows see rows
    (i-1, i, i) of the original, so the taps are (w0, w1 + w2); odd rows see (i, i, i+1): (w0 + w1, w2). Summed in
    float32, rounded once to the weight's dtype."""
    w = weight.float()
    rows = (w[:, :, 0], w[:, :, 1] + w[:, :, 2]) if a == 0 else (w[:, :, 0] + w[:, :, 1], w[:, :, 2])
    r = torch.stack(rows, 2)  # [C_out, C_in, 2, 3]
    cols = (r[..., 0], r[..., 1] + r[..., 2]) if b == 0 else (r[..., 0] + r[..., 1], r[..., 2])
    return torch.stack(cols, -1).to(weight.dtype)


def blas_linears_pay(dtype: torch.dtype) -> bool:
    """Whether float32 linears should run as plain BLAS GEMMs (MKL) instead of packed oneDNN ones on this CPU: where
    measured, on AVX2-only CPUs (AMD Zen 3: MKL's GEMMs 6-14% faster than oneDNN's packed ones at every SD1.5 shape,
    fused epilogues included; docs/performance.md). Also no weight to repack at the first call and no second buffer
    for it: the weights stay the checkpoint's memory map. CPUs with AVX-512 keep oneDNN, where packing was measured."""
    return dtype == torch.float32 and torch.backends.mkl.is_available() and not devices.cpu_has_avx512()


class PackedLinear(_Packed, nn.Linear):
    """A Linear whose weight lives in oneDNN's blocked layout; bias and residual add in the GEMM's epilogue. With
    `blas` set (`blas_linears_pay`, `use_blas_linears`) the weight stays dense and the GEMM is BLAS's."""

    blas: bool = False

    def _ready(self) -> None:
        if not self.weight.is_mkldnn:
            self._set_weight("weight", _pack_linear_weight(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast(x) and not self.blas:
            self._ready()
            return _mk()._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.dense_weight(), self.bias)

    def forward_add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """linear(x) + other, the add fused into the GEMM (BLAS: added in place to the GEMM's fresh output)."""
        if (
            self.fast(x)
            and other.dtype == x.dtype
            and other.is_contiguous()
            and other.shape[-1] == self.out_features
            and other.shape[:-1] == x.shape[:-1]
        ):
            if self.blas:
                return F.linear(x, self.weight, self.bias).add_(other)
            self._ready()
            return _mk()._linear_pointwise.binary(x, other, self.weight, self.bias, "add")
        return self.forward(x) + other


class PackedGEGLUProj(PackedLinear):
    """GEGLU's projection (`value, gate = proj(x).chunk(2)`) as two packed halves: `geglu(x) = value * gelu(gate)`
    with the multiply fused into the value GEMM. Once packed, `weight`/`bias` hold the value half and
    `gate_weight`/`gate_bias` the gate half; before, `weight`/`bias` are the whole projection."""

    def _split(self) -> bool:
        return "gate_weight" in self._parameters

    def _ready(self) -> None:
        if self._split():
            return
        old, bias, half = self.weight, self.bias, self.out_features // 2
        value, gate = _pack_linear_weight(old[:half]), _pack_linear_weight(old[half:])
        self.weight = nn.Parameter(value, requires_grad=False)
        self.gate_weight = nn.Parameter(gate, requires_grad=False)
        self.gate_bias = None if bias is None else nn.Parameter(bias.detach()[half:], requires_grad=False)
        if bias is not None:
            self.bias = nn.Parameter(bias.detach()[:half], requires_grad=False)
        _release_if_unshared(old)

    def dense_weight(self) -> torch.Tensor:
        if not self._split():
            return self.weight
        return torch.cat([self.weight.to_dense(), self.gate_weight.to_dense()])

    def dense_bias(self) -> torch.Tensor | None:
        if not self._split() or self.bias is None:
            return self.bias
        return torch.cat([self.bias, self.gate_bias])

    def dense_state(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.dense_weight()}
        if self.bias is not None:
            out["bias"] = self.dense_bias()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast(x) and not self.blas:
            self._ready()
            value = _mk()._linear_pointwise(x, self.weight, self.bias, "none", [], "")
            gate = _mk()._linear_pointwise(x, self.gate_weight, self.gate_bias, "none", [], "")
            return torch.cat([value, gate], dim=-1)
        return F.linear(x, self.dense_weight(), self.dense_bias())

    def geglu(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast(x) and self.blas and not self._split():
            # the two halves of the dense [2N, K] weight are contiguous views: nothing to split or copy
            half = self.out_features // 2
            value_bias, gate_bias = (None, None) if self.bias is None else (self.bias[:half], self.bias[half:])
            gate = F.gelu(F.linear(x, self.weight[half:], gate_bias))
            return F.linear(x, self.weight[:half], value_bias).mul_(gate)
        if self.fast(x):
            self._ready()
            # GELU in ATen, not as oneDNN's "gelu" post-op: the same exact-erf GELU (outputs identical on Zen 3), and
            # there the post-op cost ~5 ms per GEMM against 0.3-1.2 ms for F.gelu (SD1.5 shapes: 3% of a UNet step)
            gate = F.gelu(_mk()._linear_pointwise(x, self.gate_weight, self.gate_bias, "none", [], ""))
            return _mk()._linear_pointwise.binary(x, gate, self.weight, self.bias, "mul")
        value, gate = self.forward(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


_PLAIN = {PackedConv2d: nn.Conv2d, PackedLinear: nn.Linear, PackedGEGLUProj: nn.Linear}


def _eligible(m: nn.Module, kind: type, dtypes: tuple[torch.dtype, ...]) -> bool:
    w = getattr(m, "weight", None)
    return (
        type(m) is kind
        and isinstance(w, torch.Tensor)
        and w.device.type == "cpu"
        and w.dtype in dtypes
        and (kind is not nn.Conv2d or (m.padding_mode == "zeros" and not isinstance(m.padding, str)))
    )


def _swap(m: nn.Module, cls: type) -> None:
    m._sd_core_requires_grad = m.weight.requires_grad
    m.__class__ = cls
    if issubclass(cls, PackedLinear):
        m.blas = blas_linears_pay(m.weight.dtype)
    if isinstance(m, nn.Conv2d):
        m.padding, m.stride, m.dilation = list(m.padding), list(m.stride), list(m.dilation)


def pack_for_cpu(module: nn.Module) -> int:
    """Make every plain Conv2d and Linear in `module` (CPU, float32, and bfloat16 where oneDNN runs it) a packed layer,
    in place.

    The weights are packed by each layer's first call. A module that declares `_sd_core_geglu = True` has its `proj`
    split into two packed halves for the fused GEGLU. Returns the number of layers converted (0 where oneDNN is not
    available or cannot run the module's dtype). Inference only: under autograd a packed layer falls back to plain
    (slower) maths; `unpack` restores the plain modules.
    """
    dtypes = tuple(d for d in (torch.float32, torch.bfloat16) if packing_available(d))
    if not dtypes:
        return 0
    count = 0
    for m in list(module.modules()):
        if getattr(type(m), "_sd_core_geglu", False) and _eligible(getattr(m, "proj", None), nn.Linear, dtypes):
            if m.proj.out_features % 2 == 0:
                _swap(m.proj, PackedGEGLUProj)
                count += 1
    for m in list(module.modules()):
        if _eligible(m, nn.Conv2d, dtypes):
            _swap(m, PackedConv2d)
            count += 1
        elif _eligible(m, nn.Linear, dtypes):
            _swap(m, PackedLinear)
            count += 1
    if count:
        module._sd_core_packed = True
    return count


def use_winograd(module: nn.Module, enabled: bool = True) -> int:
    """Let the packed 3x3 convs in `module` run as Winograd F(4x4,3x3) where it pays (`winograd.applies`; the default)
    or always through oneDNN (`enabled=False`). Returns the number of convs set."""
    convs = [m for m in module.modules() if isinstance(m, PackedConv2d) and tuple(m.kernel_size) == (3, 3)]
    for m in convs:
        m.winograd = enabled
    return len(convs)


def use_blas_linears(module: nn.Module, enabled: bool = True) -> int:
    """Run the packed linears in `module` as BLAS GEMMs on dense weights (`enabled`; packed ones are unpacked first) or
    through oneDNN's packed kernels (packed at their next call). Returns the number of linears set."""
    linears = [m for m in module.modules() if isinstance(m, PackedLinear)]
    for m in linears:
        if enabled and (m.weight.is_mkldnn or "gate_weight" in m._parameters):
            kind = type(m)
            unpack_module(m)
            _swap(m, kind)
        m.blas = enabled
    return len(linears)


def unpack_module(m: nn.Module) -> bool:
    """One packed layer back to a plain `nn.Conv2d`/`nn.Linear` with dense weights (no-op on other modules)."""
    plain = _PLAIN.get(type(m))
    if plain is None:
        return False
    state = m.dense_state()
    requires_grad = m.__dict__.pop("_sd_core_requires_grad", False)
    for attribute in ("_packed_for", "blas", "winograd"):
        m.__dict__.pop(attribute, None)
    for name in ("weight", "bias", "gate_weight", "gate_bias"):
        m._parameters.pop(name, None)
    m.__class__ = plain
    m.weight = nn.Parameter(state["weight"].detach(), requires_grad=requires_grad)
    m.bias = nn.Parameter(state["bias"].detach(), requires_grad=requires_grad) if "bias" in state else None
    if plain is nn.Conv2d:
        m.weight.data = m.weight.data.contiguous()
        m.padding, m.stride, m.dilation = tuple(m.padding), tuple(m.stride), tuple(m.dilation)
    return True


def unpack(module: nn.Module) -> int:
    """Undo `pack_for_cpu`: plain modules and dense weights again (requires_grad as before packing)."""
    count = sum(unpack_module(m) for m in list(module.modules()))
    module.__dict__.pop("_sd_core_packed", None)
    return count


def is_packed(module: nn.Module) -> bool:
    return any(type(m) in _PLAIN for m in module.modules())


# --- helpers the networks call: fused when the layer is packed, the plain expression otherwise ------------------------


def conv_add(conv: nn.Module, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """`other + conv(x)` (the residual add of ResBlocks and attention blocks)."""
    if isinstance(conv, PackedConv2d):
        return conv.forward_add(x, other)
    return other + conv(x)


def conv_emb(conv: nn.Module, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """`conv(x) + emb[:, :, None, None]`; with a packed conv and one embedding row for the batch, emb joins the bias."""
    if isinstance(conv, PackedConv2d) and (emb.shape[0] == 1 or x.shape[0] == 1):
        return conv.forward_bias(x, emb[0])
    return conv(x) + emb[:, :, None, None]


def linear_add(linear: nn.Module, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """`other + linear(x)`."""
    if isinstance(linear, PackedLinear):
        return linear.forward_add(x, other)
    return other + linear(x)


def upsample_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`conv(nearest_2x(x))`, the upsampling step of the VAE decoder; sub-pixel when the conv is packed (CPU)."""
    if isinstance(conv, PackedConv2d):
        return conv.forward_upsampled(x)
    return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def silu_(x: torch.Tensor) -> torch.Tensor:
    """SiLU in place when no autograd graph is recorded (after a GroupNorm whose output nobody else holds)."""
    return F.silu(x, inplace=not (torch.is_grad_enabled() and x.requires_grad))


# --- whole pipelines -------------------------------------------------------------------------------------------------


def optimize(pipe: Any, *, pack: bool | None = None, channels_last: bool | None = None) -> dict[str, int]:
    """The default levers for the pipeline's device: on the CPU, prepacked weights (`pack_for_cpu`) for the UNet, VAE
    and text encoder; on a GPU, channels_last UNet and VAE; everywhere, the attention compute dtype
    `devices.pick_attention_dtype` picks (float32 in half-precision models on CPUs where that is slow); half-precision
    layers computed in float32 on CPUs without half-precision kernels (`half_storage`); on CUDA, UNet steps replayed as
    CUDA graphs (`pipe.cuda_graphs`). Returns what was done, per model."""
    on_cpu = pipe.device.type == "cpu"
    pack = on_cpu if pack is None else pack
    channels_last = (not on_cpu) if channels_last is None else channels_last
    done: dict[str, int] = {}
    for name in ("unet", "vae", "text_encoder"):
        model = getattr(pipe, name)
        upcast = set_attention_dtype(model, devices.pick_attention_dtype(pipe.device, next(model.parameters()).dtype))
        if upcast:
            done[f"{name}_float32_attention"] = upcast
        if pack and next(model.parameters()).device.type == "cpu":
            done[name] = pack_for_cpu(model)
        elif channels_last and name != "text_encoder":
            model.to(memory_format=torch.channels_last)
            done[name] = 1
        # what oneDNN cannot run on this CPU (bf16 on AVX2); not for GPU pipelines, whose idle models wait on the CPU
        float32_layers = half_storage.upcast_half_layers(model) if on_cpu else 0
        if float32_layers:
            done[f"{name}_float32_layers"] = float32_layers
    if on_cpu:
        done["heap_trims"] = trim_heap_before(pipe.vae.decoder.up)
    if pipe.device.type == "cuda":
        pipe.cuda_graphs = True  # UNet steps replayed as CUDA graphs (`sd_core.cuda_graphs`)
        done["cuda_graphs"] = 1
    return done


def set_attention_dtype(module: nn.Module, dtype: torch.dtype | None) -> int:
    """Make every attention layer in `module` compute in `dtype` (None: in its inputs' dtype). Returns how many layers
    were given a dtype. Measured (`benchmarks/bench.py --levers`): float32 attention in a bf16 SD1.5 UNet at 512x512
    on an Intel CPU without AMX, 0.92x the step time."""
    count = 0
    for m in module.modules():
        if hasattr(m, "attention_dtype"):
            m.attention_dtype = dtype
            count += dtype is not None
    return count


def _trim_heap(_module: nn.Module, _args: Any) -> None:
    heap.release_free_heap()


def trim_heap_before(modules: Iterable[nn.Module]) -> int:
    """Give freed heap memory back to the OS before each of `modules` runs (the VAE decoder's levels on the CPU).

    Why: glibc keeps freed blocks below its (self-raising) mmap threshold, so each decoder level's activations stay
    in RSS under the next level's, which are 4x larger. Trimming at the four level boundaries lowered the peak RSS of a
    float32 SD1.5 256x256 generation by about 220 MiB (a fresh process; `benchmarks/bench.py`), for a few
    milliseconds per decode. Returns the number of hooks added (once per module)."""
    count = 0
    for module in modules:
        if not getattr(module, "_sd_core_trims_heap", False):
            module.register_forward_pre_hook(_trim_heap)
            module._sd_core_trims_heap = True
            count += 1
    return count


def set_cpu_threads(threads: int | None = None) -> int:
    """Intra-op threads = the cores this process may use (the default torch picks too; measured: more threads than
    cores only adds contention). Returns the count set."""
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:
            threads = os.cpu_count() or 1
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def compile_models(pipe: Any, *, mode: str | None = None, vae: bool = True, dynamic: bool = False) -> None:
    """Opt-in torch.compile of the UNet (and the VAE decoder). The first call at each new shape compiles (minutes on
    a small CPU; inductor caches on disk under the system temp dir); later calls are faster. On CUDA,
    `mode="reduce-overhead"` adds CUDA graphs. Packed CPU weights are unpacked first: inductor packs them itself
    (with `freezing`), which it only does for plain modules."""
    import torch._inductor.config as inductor_config

    if pipe.device.type == "cpu":
        unpack(pipe.unet)
        if vae:
            unpack(pipe.vae)
        inductor_config.freezing = True
        pipe.unet.to(memory_format=torch.channels_last)
    pipe.unet.forward = torch.compile(pipe.unet.forward, mode=mode, dynamic=dynamic)
    pipe.unet._sd_core_compiled = True  # UNetModel.reusing_text_projections stays off
    if vae:
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode, dynamic=dynamic)


def attention_slicing(tokens: int | None) -> None:
    """Split attention into query chunks of `tokens` rows (None: whole). Caps the attention's working memory where
    SDPA falls back to the plain (math) kernel; flash/memory-efficient kernels need no slicing."""
    from .models import attention

    attention.set_slice_size(tokens)


@contextlib.contextmanager
def attention_sliced(tokens: int | None) -> Iterator[None]:
    from .models import attention

    before = attention.get_slice_size()
    attention.set_slice_size(tokens)
    try:
        yield
    finally:
        attention.set_slice_size(before)


# --- low-VRAM mode ---------------------------------------------------------------------------------------------------


class LowVRAM:
    """Keep weights in CPU memory and on the GPU only while they compute.

    Default: one model on `device` at a time (as A1111's --medvram and diffusers' model CPU offload): the text encoder,
    the UNet and the VAE each move to `device` for their calls and back to `offload` when another one is needed (the
    pipeline releases the VAE after each decode). The UNet, the largest (SD1.5 fp16: 1.6 GiB), is not on the device
    while the VAE decodes: SD1.5 fp16 512x512 on an H200, peak VRAM 1.8 GiB allocated (2.5 GiB with the UNet kept
    there), for ~0.5 s per image moving it in and out. `sequential=True`: the UNet too, one top-level block at a time
    (`time_embed`, each input block, the middle block, each output block, `out`): the least memory, the most
    transfer. `attach(pipe)` installs the hooks; `detach()` removes them and puts every model on `device`.

    The logic is device-agnostic: `moves` records every (unit, device) move, and `resident` holds the units on the
    device now (tested on the CPU).
    """

    def __init__(self, device: str | torch.device, offload: str | torch.device = "cpu", *, sequential: bool = False):
        self.device, self.offload = torch.device(device), torch.device(offload)
        self.sequential = sequential
        self.handles: list[Any] = []
        self.moves: list[tuple[str, str]] = []
        self.resident: dict[str, nn.Module] = {}
        self.pipe: Any = None

    def _move(self, name: str, module: nn.Module, device: torch.device) -> None:
        module.to(device)
        self.moves.append((name, str(device)))

    def units(self, pipe: Any) -> list[tuple[str, nn.Module]]:
        """(name, module) of everything that is moved on demand."""
        units: list[tuple[str, nn.Module]] = [("text_encoder", pipe.text_encoder), ("vae", pipe.vae)]
        if not self.sequential:
            return units + [("unet", pipe.unet)]
        for name, child in pipe.unet.named_children():
            if isinstance(child, nn.ModuleList):
                units += [(f"unet.{name}.{i}", block) for i, block in enumerate(child)]
            elif child is not None:
                units.append((f"unet.{name}", child))
        return units

    def attach(self, pipe: Any) -> LowVRAM:
        if self.pipe is not None:
            raise RuntimeError("LowVRAM is already attached")
        self.pipe = pipe
        for model in (pipe.unet, pipe.vae, pipe.text_encoder):
            unpack(model)  # packed oneDNN weights are CPU-only
        self._move("unet", pipe.unet, self.offload)
        for name, module in self.units(pipe):
            if name in ("text_encoder", "vae"):
                self._move(name, module, self.offload)
            self.handles.append(module.register_forward_pre_hook(self._pre(name, module)))
        # the pipeline calls the VAE through encode/decode, not forward: wrap those (instance attributes)
        for method in ("encode", "decode"):
            pipe.vae.__dict__[method] = self._wrapped("vae", pipe.vae, getattr(pipe.vae, method))
        pipe.low_vram = self
        return self

    def _load(self, name: str, module: nn.Module) -> None:
        """Make `module` the one offloaded unit on the device. Before a whole model comes in, what the allocator
        caches (the sampler's activations, before the VAE) goes back to the driver (not per UNet block)."""
        for other_name, other in list(self.resident.items()):
            if other_name != name:
                self._move(other_name, other, self.offload)
                del self.resident[other_name]
        if name not in self.resident:
            if self.device.type == "cuda" and name in ("text_encoder", "vae", "unet"):
                torch.cuda.empty_cache()
            self._move(name, module, self.device)
            self.resident[name] = module

    def _pre(self, name: str, module: nn.Module):
        def hook(_module, _args):
            self._load(name, module)

        return hook

    def _wrapped(self, name: str, module: nn.Module, fn):
        def call(*args, **kwargs):
            self._load(name, module)
            return fn(*args, **kwargs)

        return call

    def release(self) -> None:
        """Send the offloaded units still on the device back (after each decode, before the UNet runs)."""
        for name, module in list(self.resident.items()):
            self._move(name, module, self.offload)
        self.resident.clear()

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.resident.clear()
        if self.pipe is not None:
            for method in ("encode", "decode"):
                self.pipe.vae.__dict__.pop(method, None)
            for model in (self.pipe.unet, self.pipe.vae, self.pipe.text_encoder):
                model.to(self.device)
            self.pipe.low_vram = None
            self.pipe = None


# --- FLOPs -----------------------------------------------------------------------------------------------------------


def unet_flops(
    config: dict,
    batch: int,
    height: int,
    width: int,
    context_tokens: int = 77,
    contexts_per_row: int = 1,
    text_once: bool = False,
) -> int:
    """FLOPs of one UNet call on [batch, C, height/8, width/8] latents (convs, matmuls, attention), counted by
    torch's FLOP counter on the meta device (nothing is computed). A CFG step is one call with batch = 2 x images;
    `contexts_per_row=2` counts it as sd_core runs it (batch/2 latent rows under `batch` contexts, the layers before
    the first cross-attention once per row); `text_once` counts a step after the first of a sampling run, whose text
    K/V projections were computed at the first (`UNetModel.reusing_text_projections`)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .models.unet import UNetModel

    with torch.device("meta"), torch.no_grad():
        unet = UNetModel(config)
        x = torch.zeros(batch // contexts_per_row, unet.config["in_channels"], height // 8, width // 8)
        t = torch.zeros(batch // contexts_per_row)
        context = torch.zeros(batch, context_tokens, unet.config["context_dim"])
        with unet.reusing_text_projections():  # the first call inside projects the text, as any call outside
            if text_once:
                unet(x, t, context)  # the run's first step
            with FlopCounterMode(display=False) as counter:
                unet(x, t, context)
    return int(counter.get_total_flops())


def vae_decode_flops(config: dict, batch: int, height: int, width: int) -> int:
    """FLOPs of one VAE decode to [batch, 3, height, width], counted like `unet_flops`."""
    from torch.utils.flop_counter import FlopCounterMode

    from .models.vae import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(config)
        z = torch.zeros(batch, vae.config["z_channels"], height // 8, width // 8)
        with FlopCounterMode(display=False) as counter:
            vae.decode(z)
    return int(counter.get_total_flops())
