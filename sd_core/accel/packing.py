"""Prepacked oneDNN layers for the CPU: every Conv2d and Linear keeps its weight in oneDNN's blocked layout.

Eager PyTorch reorders a plain weight into oneDNN's layout at every call; a packed layer does it once (per input
shape) and keeps only the packed copy. In float32 the kernels are the ones eager PyTorch calls, so results agree to
float rounding (tests: `tests/accel/test_optimizations.py`). The packed layers also offer the fused forms that
`sd_core.models.layers` asks for (residual add and per-channel bias in the conv/linear epilogue, GEGLU as two GEMMs
with the multiply fused, the VAE's 2x upsample as sub-pixel convolutions), and run eligible 3x3 convolutions as
Winograd F(4x4,3x3) (`winograd`).

Packing changes the pipeline's own modules in place: each eligible layer's class becomes its packed subclass (so
every reference to it stays valid); packed modules stay `nn.Conv2d`/`nn.Linear` instances, `state_dict()` gives
plain tensors, `.to()` unpacks first, seamless tiling falls back to a plain convolution, and `unpack(module)`
restores the plain classes and dense weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import devices
from ..models.unet import GEGLU, UNetModel
from . import half_storage, winograd

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
        from ..checkpoint import release_pages

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
    plain_requires_grad: bool = False  # the plain layer's weight.requires_grad, given back by `unpack_module`

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

    def forward_bias(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """conv(x) + bias[:, :, None, None] for a per-image bias [B or 1, C_out]; one row for the whole batch (or a
        batch of one) is folded into the convolution's own bias."""
        if bias.shape[0] == 1 or x.shape[0] == 1:
            extra = bias[0]
            if self.fast(x) and "_conv_forward" not in self.__dict__:
                bias = extra if self.bias is None else self.bias + extra
                return self._run(x, bias.to(x.dtype))
            return self.forward(x) + extra[None, :, None, None]
        return self.forward(x) + bias[:, :, None, None]

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
    m.plain_requires_grad = m.weight.requires_grad
    m.__class__ = cls
    if issubclass(cls, PackedLinear):
        m.blas = blas_linears_pay(m.weight.dtype)
    if isinstance(m, nn.Conv2d):
        m.padding, m.stride, m.dilation = list(m.padding), list(m.stride), list(m.dilation)


def pack_for_cpu(module: nn.Module) -> int:
    """Make every plain Conv2d and Linear in `module` (CPU, float32, and bfloat16 where oneDNN runs it) a packed layer,
    in place.

    The weights are packed by each layer's first call. GEGLU projections are split into two packed halves for the
    fused GEGLU; a packed UNet shares one timestep embedding row across the batch
    (`UNetModel.share_timestep_embedding`), which the packed ResBlock convs fold into their bias. Returns the number of
    layers converted (0 where oneDNN is not available or cannot run the module's dtype). Inference only: under
    autograd a packed layer falls back to plain (slower) maths; `unpack` restores the plain modules.
    """
    dtypes = tuple(d for d in (torch.float32, torch.bfloat16) if packing_available(d))
    if not dtypes:
        return 0
    count = 0
    for m in list(module.modules()):
        if isinstance(m, GEGLU) and _eligible(m.proj, nn.Linear, dtypes):
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
    if count and isinstance(module, UNetModel):
        module.share_timestep_embedding = True
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
    requires_grad = m.plain_requires_grad
    for attribute in ("_packed_for", "blas", "winograd", "plain_requires_grad"):
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
    module.__dict__.pop("share_timestep_embedding", None)  # back to the class default (off)
    return count


def is_packed(module: nn.Module) -> bool:
    return any(type(m) in _PLAIN for m in module.modules())
