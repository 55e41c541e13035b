"""The one progress payload, from the sampler to the plugin: every callback in sd_core gets a `StepInfo`.

A callback stops a run by raising `sd_core.Cancelled`; nothing catches it on the way, so it reaches the caller. It
stops sampling but keeps the image by raising `sd_core.Interrupted`: the pipeline finishes from the last step's
`denoised` (`LastStep` keeps it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .errors import Interrupted


@dataclass(frozen=True)
class StepInfo:
    """One sampling step done.

    `step` counts from 1 to `total` (the steps that run: for img2img `int(steps * strength)`). `latents` is the
    sample entering this step and `denoised` the model's clean estimate at it, both [B, 4, h, w] float32 in the
    sampler's space (`x = x0 + sigma * noise`; `sd_core.preview` turns either into a small RGB picture). `sigma` is
    this step's noise level, `sigma_next` the level the step goes to.

    `phase` of `phases`: which sampling run of the generation this step belongs to. One run (1 of 1) except with
    hires fix: its first pass is phase 1 of 2 and its second (img2img) pass phase 2 of 2, each counting its own steps
    from 1 to its own `total` (A1111 counts the two passes as two jobs too)."""

    step: int
    total: int
    latents: torch.Tensor
    denoised: torch.Tensor
    sigma: float
    sigma_next: float
    phase: int = 1
    phases: int = 1


Callback = Callable[[StepInfo], None]


def in_phase(callback: Callback, phase: int, phases: int) -> Callback:
    """A callback that passes each `StepInfo` on to `callback` marked as belonging to `phase` of `phases`."""

    def report(info: StepInfo) -> None:
        callback(replace(info, phase=phase, phases=phases))

    return report


class LastStep:
    """A callback that passes each `StepInfo` on to `callback` (if any), keeping the last one (`info`) and whether
    `callback` raised `Interrupted` (`interrupted`). The pipeline finishes an interrupted run from `info.denoised`."""

    def __init__(self, callback: Callback | None) -> None:
        self.callback = callback
        self.info: StepInfo | None = None
        self.interrupted = False

    def __call__(self, info: StepInfo) -> None:
        self.info = info
        if self.callback is None:
            return
        try:
            self.callback(info)
        except Interrupted:
            self.interrupted = True
            raise
