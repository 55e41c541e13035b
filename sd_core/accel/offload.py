"""Low-VRAM mode: weights in CPU memory, on the GPU only while they compute."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .packing import unpack


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
        self.companions: dict[str, nn.Module] = {}  # ControlNets of the running sampling run (`with_unet`)

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
            if name == "vae":
                # the pipeline calls the VAE through encode/decode, not forward: hook the first layer of each
                # (encode runs the encoder first, decode the post-quant conv), each bringing in the whole VAE
                entries = [pipe.vae.encoder, pipe.vae.post_quant_conv]
            else:
                entries = [module]
            if name in ("text_encoder", "vae"):
                self._move(name, module, self.offload)
            for entry in entries:
                self.handles.append(entry.register_forward_pre_hook(self._pre(name, module)))
        pipe.accel.low_vram = self
        return self

    @contextlib.contextmanager
    def with_unet(self, modules: list[nn.Module]) -> Iterator[None]:
        """For one sampling run, `modules` (its ControlNets) move with the UNet: on the device together with it
        (brought in by the UNet's call or theirs, so not swapped at every step), offloaded with it; with
        `sequential`, each whole while it runs. Afterwards they stay offloaded, as the models do between runs."""
        handles = []
        for i, module in enumerate(modules):
            name = f"controlnet.{i}"
            self.companions[name] = module
            self._move(name, module, self.offload)
            for entry in (module, getattr(module, "input_hint_block", module)):  # the hint block runs on its own
                handles.append(entry.register_forward_pre_hook(self._pre(name, module)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for name, module in self.companions.items():
                if self.resident.pop(name, None) is not None:
                    self._move(name, module, self.offload)
            self.companions.clear()

    def _group(self, name: str) -> dict[str, nn.Module]:
        """The units that share the device with `name`: the UNet and its ControlNets together (one model at a time
        otherwise; sequential: one block or net at a time)."""
        if self.sequential or not (name == "unet" or name in self.companions):
            return {}
        assert self.pipe is not None
        return {"unet": self.pipe.unet, **self.companions}

    def _load(self, name: str, module: nn.Module) -> None:
        """Make `module` the one offloaded unit on the device (with its group: `_group`). Before a whole model comes
        in, what the allocator caches (the sampler's activations, before the VAE) goes back to the driver (not per
        UNet block)."""
        group = self._group(name)
        if group and all(n in self.resident for n in group):
            return
        for other_name, other in list(self.resident.items()):
            if other_name != name and other_name not in group:
                self._move(other_name, other, self.offload)
                del self.resident[other_name]
        if name not in self.resident:
            if self.device.type == "cuda" and name in ("text_encoder", "vae", "unet"):
                torch.cuda.empty_cache()
            self._move(name, module, self.device)
            self.resident[name] = module
        for other_name, other in group.items():
            if other_name not in self.resident:
                self._move(other_name, other, self.device)
                self.resident[other_name] = other

    def _pre(self, name: str, module: nn.Module):
        def hook(_module, _args):
            self._load(name, module)

        return hook

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
            for model in (self.pipe.unet, self.pipe.vae, self.pipe.text_encoder):
                model.to(self.device)
            self.pipe.accel.low_vram = None
            self.pipe = None
