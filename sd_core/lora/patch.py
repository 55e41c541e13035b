"""The LoRAs in force on one pipeline: merged into the weights, and the original tensors kept to put back.

`LoraPatcher.set(wanted)` brings the networks to exactly the LoRAs `wanted` (each file with its text-encoder and
UNet multipliers): nothing happens when that is what is applied already (so repeated runs with the same LoRAs pay
nothing), else every patched layer gets its original parameters back and the new set is merged in. Merging is
W' = W + Σ m · scale · ΔW, computed in float32 and rounded once to the layer's dtype, so the per-step cost of a LoRA
is nil; restoring puts back the very tensors that were there (`accel.weights`), so a run after a LoRA is removed is
bit-identical to one on a freshly loaded model. A failure while merging restores everything before it is raised:
the model is left as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..accel.weights import SavedWeights, dense_weights, replace_weights
from .files import LoraError, LoraFile
from .networks import LayerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Applied:
    """A LoRA file with its multipliers: `te` scales its text-encoder layers, `unet` its UNet layers."""

    lora: LoraFile
    te: float = 1.0
    unet: float = 1.0

    @property
    def key(self) -> tuple:
        return (self.lora.identity, self.te, self.unet)


class LoraPatcher:
    """LoRAs merged into `networks` ({pipeline attribute: network}), with the original weights of the changed layers
    kept. `applied` is what is in force."""

    def __init__(self, networks: dict[str, nn.Module]) -> None:
        self.networks = networks
        self.applied: tuple[Applied, ...] = ()
        self._saved: dict[tuple[str, str], SavedWeights] = {}

    @property
    def patched_layers(self) -> int:
        return len(self._saved)

    def set(self, wanted: Sequence[Applied]) -> None:
        """Make `wanted` the LoRAs in force (an empty sequence: the model's own weights)."""
        wanted = tuple(wanted)
        if [a.key for a in wanted] == [a.key for a in self.applied]:
            return
        self.restore()
        try:
            self._merge(wanted)
        except BaseException:
            self.restore()
            raise
        self.applied = wanted

    def restore(self) -> None:
        """Every patched layer back to its original tensors."""
        for saved in self._saved.values():
            saved.restore()
        self._saved.clear()
        self.applied = ()

    @torch.no_grad()
    def _merge(self, wanted: tuple[Applied, ...]) -> None:
        per_layer: dict[tuple[str, str], list[tuple[Applied, object, float]]] = {}
        for item in wanted:
            for layer in item.lora.layers:
                multiplier = item.te if layer.component.multiplier == "te" else item.unet
                if multiplier:
                    place = (layer.component.attribute, layer.path)
                    per_layer.setdefault(place, []).append((item, layer, multiplier))
        for (attribute, path), changes in per_layer.items():
            module = self.networks[attribute].get_submodule(path)
            weight, bias = dense_weights(module)
            new_weight = new_bias = None
            for item, layer, multiplier in changes:
                factor = multiplier * layer.change.scale
                try:
                    new_weight = layer.change.add_to(new_weight, weight, factor)
                except LayerError as exc:
                    raise LoraError(
                        f"{item.lora.path}: layer {layer.key}: {exc} (a LoRA for another model family?)"
                    ) from None
                bias_delta = layer.change.parts.get("diff_b")
                if bias_delta is not None:
                    if bias is None or bias_delta.shape != bias.shape:
                        raise LoraError(f"{item.lora.path}: layer {layer.key}: a bias change the layer cannot take")
                    new_bias = _accumulate(new_bias, bias, bias_delta.to(bias.device, torch.float32), factor)
            new_bias = bias if new_bias is None else new_bias.to(bias.dtype)
            self._saved[(attribute, path)] = replace_weights(module, new_weight.to(weight.dtype), new_bias)


def _accumulate(total: torch.Tensor | None, original: torch.Tensor, delta: torch.Tensor, factor: float) -> torch.Tensor:
    """total + factor · delta in float32, starting from a float32 copy of `original` (never written to)."""
    if total is None:
        return torch.add(original.float(), delta, alpha=factor)
    return total.add_(delta, alpha=factor)
