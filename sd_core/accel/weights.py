"""Changing a layer's weights under whatever speed lever holds it, and putting the very same tensors back.

Weight patches (LoRAs, `sd_core.lora`) must reach the weights a layer actually computes with: a packed oneDNN layer
keeps its weight in a blocked layout (GEGLU projections as two packed halves, Winograd convs dense), a half-storage
layer its half-precision weight, a low-VRAM model whichever device it is on. `dense_weights` gives the plain
[out, in, ...] weight and bias of any of them; `replace_weights` installs new plain tensors (a packed layer keeps its
class and repacks at its next call, as after loading) and returns the original parameter objects, which `restore`
puts back untouched: bit-identical weights without subtracting anything. CUDA graphs need nothing: each sampling run
captures anew (`cuda_graphs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_MISSING = object()
_PACKING_STATE = ("_packed_for",)


def dense_weights(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's weight and bias as plain tensors in its own dtype and device (views where they are plain)."""
    state = layer.dense_state() if hasattr(layer, "dense_state") else None
    if state is not None:
        return state["weight"], state.get("bias")
    return layer.weight, layer.bias


@dataclass
class SavedWeights:
    """A layer's parameters (the objects themselves) and packing state from before `replace_weights`."""

    layer: nn.Module
    parameters: dict[str, Any]
    state: dict[str, Any]
    cls: type = nn.Module

    def restore(self) -> None:
        """Put the saved parameters back (moved to the device the layer is on now, if it moved meanwhile), with the
        layer's class of then (a lever may have unpacked the layer meanwhile: its packed weights need their class)."""
        current = self.layer._parameters.get("weight")
        device = None if current is None else current.device
        self.layer.__class__ = self.cls
        self.layer._parameters.clear()
        for name, param in self.parameters.items():
            if param is not None and device is not None and param.device != device:
                param.data = param.data.to(device)
            self.layer._parameters[name] = param
        for name, value in self.state.items():
            if value is _MISSING:
                self.layer.__dict__.pop(name, None)
            else:
                self.layer.__dict__[name] = value


def replace_weights(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> SavedWeights:
    """Give `layer` new plain `weight` and `bias` tensors; returns what `SavedWeights.restore` puts back."""
    saved = SavedWeights(
        layer,
        dict(layer._parameters),
        {name: layer.__dict__.get(name, _MISSING) for name in _PACKING_STATE},
        type(layer),
    )
    old = layer.weight
    if (
        weight.dim() == 4
        and not old.is_mkldnn
        and old.is_contiguous(memory_format=torch.channels_last)
        and not old.is_contiguous()
    ):
        weight = weight.contiguous(memory_format=torch.channels_last)  # as the GPU levers keep conv weights
    requires_grad = layer.weight.requires_grad
    layer._parameters.clear()
    layer._parameters["weight"] = nn.Parameter(weight, requires_grad=requires_grad)
    layer._parameters["bias"] = None if bias is None else nn.Parameter(bias, requires_grad=requires_grad)
    if "_packed_for" in saved.state and saved.state["_packed_for"] is not _MISSING:
        layer.__dict__["_packed_for"] = None  # repack at the next call
    return saved
