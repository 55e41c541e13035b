"""Speed and memory levers, kept apart from the networks (plain maths) and the pipeline (what to compute).

Each pipeline owns one `Accelerator` (`pipe.accel`): the levers in force on it, and the two per-phase contexts the
pipeline enters, `sampling` (what the denoiser calls, and the memory habits of the sampling loop) and `decoding`.
Nothing here is process-wide unless listed under "Global state" in docs/design.md. Each lever is measured in
`benchmarks/bench.py` (figures in docs/performance.md).

CPU, on by default (`sd_core.load(..., optimize=True)` calls `optimize`):
- Prepacked oneDNN weights with fused epilogues and Winograd 3x3 convolutions (`packing`, `winograd`); BLAS
  linears on AVX2-only CPUs; sub-pixel upsampling in the VAE decoder.
- Heap trims before each VAE decoder level (`trim_heap_before`) and before the decode: lower peak RSS.
- Float32 attention in half-precision models on CPUs where half precision is slow (`set_attention_dtype`, choice in
  `devices.pick_attention_dtype`); half-precision weights with float32 arithmetic where the CPU has no half-precision
  kernels (`half_storage`).
- Text K/V projections computed once per sampling run (`UNetModel.reusing_text_projections`).

GPU, on by default: channels_last UNet and VAE; on CUDA each sampling run's UNet steps replayed as CUDA graphs
(`cuda_graphs`; `pipe.accel.cuda_graphs = False` to opt out).

Opt-in: freed memory kept mapped while sampling (`keep_freed_memory`, glibc's malloc settings: process-wide),
`compile_models` (torch.compile), `set_attention_slicing`, `LowVRAM` (`offload`), `set_cpu_threads`.
`flops` counts the FLOPs of the networks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import devices
from ..progress import Callback, StepInfo
from . import cuda_graphs, half_storage, heap
from .offload import LowVRAM
from .packing import pack_for_cpu, unpack

__all__ = [
    "Accelerator",
    "LowVRAM",
    "SamplingRun",
    "compile_models",
    "optimize",
    "set_attention_dtype",
    "set_attention_slicing",
    "prepare_controlnet",
    "set_cpu_threads",
    "trim_heap_before",
]


@dataclass
class SamplingRun:
    """One sampling run's view of the levers: `unet` is what the denoiser calls (the UNet itself, or its CUDA-graphed
    or compiled form); `callback` wraps the caller's progress callback with the run's own step hook."""

    unet: Callable[..., torch.Tensor]
    stack: contextlib.ExitStack
    keep_freed_memory: bool = False

    def callback(self, user: Callback | None) -> Callback:
        def on_step(info: StepInfo) -> None:
            if info.step == 1 and self.keep_freed_memory:
                # from the second step on, each step's buffers stay mapped for the next instead of being faulted in
                # again (`heap`); not in the first, which packs the weights for this shape: its temporaries go back
                self.stack.enter_context(heap.freed_memory_kept())
            if user is not None:
                user(info)

        return on_step


@dataclass
class Accelerator:
    """The speed levers in force on one pipeline. `applied` records what `optimize` did, per model."""

    device: torch.device
    applied: dict[str, int] = field(default_factory=dict)
    cuda_graphs: bool = False
    reuse_text_projections: bool = True
    keep_freed_memory: bool = False
    low_vram: LowVRAM | None = None
    compiled_unet: Callable[..., torch.Tensor] | None = None
    compiled_decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    heap_hooks: list[Any] = field(default_factory=list)  # `trim_heap_before`'s forward pre-hooks, removable

    @contextlib.contextmanager
    def sampling(self, unet: nn.Module) -> Iterator[SamplingRun]:
        """The context of one sampling run. Inside: the UNet to call and the step hook; on leaving, everything the
        run set up (text K/V memo, CUDA graphs, kept heap) is undone."""
        graphed = self.cuda_graphs and cuda_graphs.graphs_usable(self.device, self.low_vram)
        if graphed:
            model: Callable[..., torch.Tensor] = cuda_graphs.GraphedUNet(unet)
        else:
            model = self.compiled_unet or unet
        # text K/V memo: not under CUDA graphs, whose replays would keep K/V tensors the memo may drop (and replays
        # launch those projections for free), nor under torch.compile, whose graphs would only guard on it
        reuse = self.reuse_text_projections and model is unet and hasattr(unet, "reusing_text_projections")
        keep = self.keep_freed_memory and self.device.type == "cpu"
        with contextlib.ExitStack() as stack:
            if reuse:
                stack.enter_context(unet.reusing_text_projections())
            yield SamplingRun(model, stack, keep)

    @contextlib.contextmanager
    def decoding(self, vae: nn.Module) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """The context of a VAE decode: yields the decode function. On the CPU the sampler's freed buffers leave RSS
        before the decoder's come in; under `LowVRAM` the VAE leaves the GPU afterwards."""
        if self.device.type == "cpu":
            heap.release_free_heap()
        try:
            yield self.compiled_decode or vae.decode
        finally:
            if self.low_vram is not None:
                self.low_vram.release()


def optimize(pipe: Any, *, pack: bool | None = None, channels_last: bool | None = None) -> dict[str, int]:
    """The default levers for the pipeline's device: on the CPU, prepacked weights (`pack_for_cpu`) for the UNet, VAE
    and text encoder; on a GPU, channels_last UNet and VAE; everywhere, the attention compute dtype
    `devices.pick_attention_dtype` picks (float32 in half-precision models on CPUs where that is slow); half-precision
    layers computed in float32 on CPUs without half-precision kernels (`half_storage`); on CUDA, UNet steps replayed as
    CUDA graphs. Returns what was done, per model (also kept in `pipe.accel.applied`)."""
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
    if on_cpu and not pipe.accel.heap_hooks:
        pipe.accel.heap_hooks = trim_heap_before(pipe.vae.decoder.up)
        done["heap_trims"] = len(pipe.accel.heap_hooks)
    if pipe.device.type == "cuda":
        pipe.accel.cuda_graphs = True
        done["cuda_graphs"] = 1
    pipe.accel.applied.update(done)
    return done


def prepare_controlnet(pipe: Any, net: nn.Module) -> dict[str, int]:
    """The levers `optimize` gave the pipeline's UNet, for a ControlNet (a copy of its encoder) used with it: the same
    attention dtype, prepacked weights where the UNet is packed and the net is in CPU memory (and then one shared
    timestep embedding row, as the packed UNet), channels_last where the UNet has it. Idempotent: a net used again,
    or with another pipeline of the same device, is left as it is."""
    done: dict[str, int] = {}
    param = next(net.parameters())
    upcast = set_attention_dtype(net, devices.pick_attention_dtype(pipe.device, param.dtype))
    if upcast:
        done["float32_attention"] = upcast
    if pipe.accel.applied.get("unet") and pipe.device.type == "cpu" and param.device.type == "cpu":
        packed = pack_for_cpu(net)
        if packed:
            net.share_timestep_embedding = True
            done["packed"] = packed
    elif pipe.device.type != "cpu" and pipe.accel.applied.get("unet"):
        net.to(memory_format=torch.channels_last)
        done["channels_last"] = 1
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


def set_attention_slicing(module: nn.Module, tokens: int | None) -> int:
    """Split the attention of every attention layer in `module` into query chunks of `tokens` rows (None: whole).
    Caps the attention's working memory where SDPA falls back to its plain (math) kernel; flash and memory-efficient
    kernels need no slicing. Returns the number of layers set."""
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise ValueError(f"attention slice size must be a positive integer or None, got {tokens!r}")
    layers = [m for m in module.modules() if hasattr(m, "attention_chunk")]
    for m in layers:
        m.attention_chunk = tokens
    return len(layers)


def _trim_heap(_module: nn.Module, _args: Any) -> None:
    heap.release_free_heap()


def trim_heap_before(modules: Iterable[nn.Module]) -> list[Any]:
    """Give freed heap memory back to the OS before each of `modules` runs (the VAE decoder's levels on the CPU).

    Why: glibc keeps freed blocks below its (self-raising) mmap threshold, so each decoder level's activations stay
    in RSS under the next level's, which are 4x larger. Trimming at the four level boundaries lowered the peak RSS of a
    float32 SD1.5 256x256 generation by about 220 MiB (a fresh process; `benchmarks/bench.py`), for a few
    milliseconds per decode. Returns the hooks' handles (`handle.remove()` undoes one)."""
    return [module.register_forward_pre_hook(_trim_heap) for module in modules]


def set_cpu_threads(threads: int | None = None) -> int:
    """Intra-op threads = the cores this process may use (the default torch picks too; measured: more threads than
    cores only adds contention). Process-wide (torch's thread pool). Returns the count set."""
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:
            threads = os.cpu_count() or 1
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def compile_models(pipe: Any, *, mode: str | None = None, vae: bool = True, dynamic: bool = False) -> None:
    """Opt-in torch.compile of the UNet (and the VAE decoder), used by the pipeline's sampling and decoding from now
    on. The first call at each new shape compiles (minutes on a small CPU; inductor caches on disk under the system
    temp dir); later calls are faster. On CUDA, `mode="reduce-overhead"` adds CUDA graphs. On the CPU, packed weights
    are unpacked first: inductor packs them itself (its `freezing` option, given to these compilations only), which
    it only does for plain modules."""
    options: dict[str, Any] = dict(torch._inductor.list_mode_options(mode, dynamic)) if mode else {}
    if pipe.device.type == "cpu":
        unpack(pipe.unet)
        if vae:
            unpack(pipe.vae)
        options["freezing"] = True
        pipe.unet.to(memory_format=torch.channels_last)
    pipe.accel.compiled_unet = torch.compile(pipe.unet, dynamic=dynamic, options=options or None)
    if vae:
        pipe.accel.compiled_decode = torch.compile(pipe.vae.decode, dynamic=dynamic, options=options or None)
