"""The one progress payload, from the sampler to the plugin: every callback in sd_core gets a `StepInfo`.

A callback stops a run by raising `sd_core.Cancelled`; nothing catches it on the way, so it reaches the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepInfo:
    """One sampling step done.

    `step` counts from 1 to `total` (the steps that run: for img2img `int(steps * strength)`). `latents` is the
    sample entering this step and `denoised` the model's clean estimate at it, both [B, 4, h, w] float32 in the
    sampler's space (`x = x0 + sigma * noise`; `sd_core.preview` turns either into a small RGB picture). `sigma` is
    this step's noise level, `sigma_next` the level the step goes to."""

    step: int
    total: int
    latents: torch.Tensor
    denoised: torch.Tensor
    sigma: float
    sigma_next: float


Callback = Callable[[StepInfo], None]
