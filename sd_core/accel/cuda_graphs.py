"""UNet calls replayed as CUDA graphs during one sampling run.

On a fast GPU an SD1.5 UNet step is mostly the CPU launching ~1000 small kernels one by one (eager PyTorch, as
diffusers runs it); a CUDA graph records those launches once and replays them with one call. A sampling run calls
the UNet with the same shapes at every step, so the first call runs eagerly (the warm-up that capture needs) and is
then captured, and every later step replays. Each replay copies the new inputs into the captured ones and
returns a copy of the output. The graphs live only as long as the run's `GraphedUNet`, so no weights or
memory are held between runs, and a model changed between runs (LoRA, seamless padding) is captured anew.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class GraphedUNet(nn.Module):
    """`unet(x, t, context[, y])` with each input signature (shapes, dtypes) captured once and replayed after.

    `max_graphs` bounds the memory: a further signature runs eagerly. Only for CUDA tensors, and no state in the UNet
    that changes between steps. Weights moved between calls (a callback decoding with the VAE under `LowVRAM` sends
    the UNet to the CPU and back) are noticed: the graphs are dropped and captured again. Weights changed in place
    are simply used. Not with `LowVRAM(sequential=True)`, which moves blocks during the call."""

    def __init__(self, unet: nn.Module, max_graphs: int = 2):
        super().__init__()
        self.unet = unet
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}
        self.pool: Any = None  # one memory pool shared by this run's graphs
        self.eager_calls = 0
        self._split = 3  # inputs before the ControlNet residuals: x, t, context and y when given
        self.replays = 0
        self._weights: list[torch.Tensor] = []
        self._pointers: list[int] = []

    def remember_weights(self) -> None:
        """Note where every weight lives now (the graphs read them from there)."""
        self._weights = [*self.unet.parameters(), *self.unet.buffers()]
        self._pointers = [w.data_ptr() for w in self._weights]

    def weights_moved(self) -> bool:
        """Whether a weight was moved or replaced since `remember_weights` (e.g. offloaded and brought back)."""
        return [w.data_ptr() for w in self._weights] != self._pointers

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        control: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """ControlNet residuals (`control`) are inputs of the graph like the others: copied in at each replay (the
        nets themselves run eagerly, before the UNet)."""
        inputs = [x, torch.as_tensor(t, device=x.device), context] + ([] if y is None else [y])
        inputs += list(control or [])
        self._split = 4 if y is not None else 3
        if self.graphs and self.weights_moved():
            self.graphs.clear()  # their pool goes with them
            self.pool = None
        key = (self._split, *((tuple(v.shape), v.dtype, v.device) for v in inputs))
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                self.eager_calls += 1
                return self._call(inputs)
            return self._capture(key, inputs)
        graph, static_inputs, static_output = entry
        for static, value in zip(static_inputs, inputs, strict=True):
            static.copy_(value)
        graph.replay()
        self.replays += 1
        return static_output.clone()

    def _call(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """The UNet on (x, t, context[, y]) and, past those, the ControlNet residuals."""
        args, control = inputs[: self._split], inputs[self._split :]
        return self.unet(*args, control=control) if control else self.unet(*args)

    def _capture(self, key: tuple, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Run eagerly on a side stream (the warm-up capture needs: cuBLAS/cuDNN workspaces, lazy init), then record
        the same call into a graph. The eager result is this call's answer."""
        static_inputs = [v.clone() for v in inputs]
        side = torch.cuda.Stream(device=inputs[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            output = self._call(static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.eager_calls += 1
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            static_output = self._call(static_inputs)
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[key] = (graph, static_inputs, static_output)
        self.remember_weights()
        return output


def graphs_usable(device: torch.device, low_vram: Any = None) -> bool:
    """CUDA graphs pay on CUDA devices; not when `LowVRAM` moves UNet blocks during the call (sequential)."""
    return device.type == "cuda" and not getattr(low_vram, "sequential", False)
