"""The ControlNet units of one sampling run: each unit's control image prepared for the latents' size, which units
guide the current step, the nets run beside the UNet on the same input, their residuals scaled and summed.

As diffusers: the image stretched to the generation size with Lanczos, no crop, scaled to [0, 1]; the net sees the
UNet's input (`x * c_in`, the latents only: never the inpainting model's extra channels) and both CFG halves with the
same image; each residual times the unit's strength; several units summed. The step counts come from the sampler's
progress callback (`observe`): during step i (0-based) of N every model call, however many a sampler makes, belongs
to step i, which is what the start/end rules speak of.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .. import images, limits
from ..models.unet import unet_config as complete
from .unit import Control

SOFT_BASE = 0.825
"""The A1111 extension's soft-injection base: residual i of 13 scaled by 0.825^(12-i)."""


def check_family(controls: tuple[Control, ...], unet_config: dict, family: str, model: str) -> None:
    """Each unit's net must be for this model's family and encoder shape; else a `SettingError` naming `controlnet`."""
    model_family = family.split("-")[0]
    for n, unit in enumerate(controls):
        net = unit.net
        if net.family != model_family:
            raise limits.SettingError(
                "controlnet",
                f"ControlNet {n} ({unit.label}) is for {net.family.upper()} models; {model} is {model_family.upper()}",
            )
        keys = ("model_channels", "channel_mult", "num_res_blocks", "context_dim", "adm_in_channels")
        theirs, ours = ({k: cfg.get(k) for k in keys} for cfg in (net.config, complete(unet_config)))
        if theirs != ours:
            diff = ", ".join(f"{k} {theirs[k]} vs {ours[k]}" for k in keys if theirs[k] != ours[k])
            raise limits.SettingError(
                "controlnet", f"ControlNet {n} ({unit.label}) does not fit {model}'s UNet: {diff}"
            )


def hint_tensor(image: np.ndarray, width: int, height: int) -> torch.Tensor:
    """The control image as diffusers prepares it: stretched to width x height (Lanczos), [1, 3, H, W] in [0, 1]."""
    arr = images.resize_rgb(image, width, height)
    return torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0


class ControlRun:
    """The units of one sampling run of `total` steps on `device` (nets in their own dtype)."""

    def __init__(self, controls: tuple[Control, ...], total: int, device: torch.device) -> None:
        self.controls, self.total, self.device = controls, total, device
        self.step = 0
        self.nets = list(dict.fromkeys(unit.net for unit in controls))
        self._hints: dict[tuple[int, int, int], torch.Tensor] = {}

    def observe(self, callback: Any) -> Any:
        """The sampler's callback, counting the steps first (step i's calls happen before its callback)."""

        def on_step(info: Any) -> None:
            self.step = info.step
            if callback is not None:
                callback(info)

        return on_step

    def _hint(self, n: int, unit: Control, h: int, w: int) -> torch.Tensor:
        """Unit n's hint-block features for latents h x w: computed once per run (they do not change by step)."""
        key = (n, h, w)
        if key not in self._hints:
            hint = hint_tensor(unit.image, w * 8, h * 8).to(self.device)
            with torch.inference_mode():
                self._hints[key] = unit.net.embed_hint(hint)
        return self._hints[key]

    def residuals(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None, pair: bool
    ) -> list[torch.Tensor] | None:
        """The summed residuals for the UNet at the current step (None when no unit guides it). `x` [B] the UNet's
        latent input; `context` and `y` [2B] `[uncond, cond]` when `pair`, else [B]."""
        total: list[torch.Tensor] | None = None
        step = min(self.step, self.total - 1)
        for n, unit in enumerate(self.controls):
            if not unit.active(step, self.total):
                continue
            out = self._unit(n, unit, x, t, context, y, pair)
            total = out if total is None else [a + b for a, b in zip(total, out, strict=True)]
        return total

    def _unit(
        self,
        n: int,
        unit: Control,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None,
        pair: bool,
    ) -> list[torch.Tensor]:
        net = unit.net
        dtype = next(net.parameters()).dtype
        hint = self._hint(n, unit, x.shape[-2], x.shape[-1])
        cond_only = pair and (unit.guess_mode or unit.control_mode == "controlnet")
        if cond_only:  # the conditional half: [uncond, cond] -> cond
            context = context.chunk(2)[1]
            y = None if y is None else y.chunk(2)[1]
        out = net(x.to(dtype), t, context, hint, y, embedded=True)
        count = len(out)
        if unit.guess_mode:
            scales = torch.logspace(-1, 0, count).tolist()
        elif unit.control_mode != "balanced":
            scales = [SOFT_BASE ** (12 - i) for i in range(count)]
        else:
            scales = [1.0] * count
        out = [r * (s * unit.strength) for r, s in zip(out, scales, strict=True)]
        if cond_only:
            out = [torch.cat([torch.zeros_like(r), r]) for r in out]
        return out


def crop_to_region(controls: tuple[Control, ...], shape: tuple[int, ...], box: tuple[int, int, int, int]) -> tuple:
    """Only-masked inpainting works on a box of the input: each unit's image stretched to the input's size and
    cropped to the same box, so the map stays over the pixels it describes."""
    x0, y0, x1, y1 = box
    out = []
    for unit in controls:
        whole = images.resize_rgb(unit.image, shape[1], shape[0])
        out.append(replace(unit, image=np.ascontiguousarray(whole[y0:y1, x0:x1])))
    return tuple(out)


CONTROL_MODE_LABELS = {
    "balanced": "Balanced",
    "prompt": "My prompt is more important",
    "controlnet": "ControlNet is more important",
}


def infotext_fields(controls: tuple[Control, ...]) -> dict[str, str]:
    """The units in the infotext as the A1111 extension writes them: `ControlNet N: "Module: ..., Model: ..., ..."`."""
    fields = {}
    for n, unit in enumerate(controls):
        entries: dict[str, Any] = {"Module": unit.module, "Model": unit.label, "Weight": unit.strength}
        entries.update(unit.info)
        entries.update({"Guidance Start": unit.start, "Guidance End": unit.end})
        entries["Control Mode"] = "Guess mode" if unit.guess_mode else CONTROL_MODE_LABELS[unit.control_mode]
        fields[f"ControlNet {n}"] = ", ".join(f"{k}: {v}" for k, v in entries.items())
    return fields


def for_run(controls: tuple[Control, ...], total: int, device: torch.device) -> ControlRun | None:
    """The run's units, or None without any."""
    return ControlRun(controls, total, device) if controls else None
