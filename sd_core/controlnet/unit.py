"""`Control`: one ControlNet unit of a generation (the net, its control image, how strongly and when it guides), as
`GenerationSettings.control` holds it. Checked when made; a bad value is a `limits.SettingError` naming the setting
(`control_strength`, `control_start`, `control_end`, `control_image`, `controlnet`, `control_mode`, `control_steps`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .. import images, limits
from .model import ControlNetModel

MAX_STRENGTH = 2.0
"""The largest strength (the A1111 extension's weight slider goes to 2)."""
CONTROL_MODES = ("balanced", "prompt", "controlnet")
"""The A1111 extension's control modes: "Balanced", "My prompt is more important", "ControlNet is more important"."""
STEP_RULES = ("diffusers", "a1111")
"""Which steps a unit guides: diffusers' rule (step i of N when i/N >= start and (i+1)/N <= end) or the A1111
extension's (start <= i/N <= end: one step more at the end)."""


@dataclass(frozen=True, eq=False)
class Control:
    """One ControlNet unit. `image`: the control map (PIL or numpy, any size: stretched to the generation size with
    Lanczos, as diffusers); `strength` scales every residual; `start`/`end`: the fractions of the steps it guides
    (`steps`: "diffusers" or "a1111", `STEP_RULES`). `guess_mode`: diffusers' guess mode (the net sees the prompt
    only, the unconditional half gets no control, residuals scaled from 0.1 at the first to 1 at the middle block).
    `control_mode`: the A1111 extension's "balanced", "prompt" (My prompt is more important: residual i scaled by
    0.825^(12-i)) or "controlnet" (ControlNet is more important: the same scales, conditional half only).
    `module`, `info`: what made the control image and other A1111 unit fields, recorded in the infotext only."""

    net: ControlNetModel
    image: Any
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    guess_mode: bool = False
    control_mode: str = "balanced"
    steps: str = "diffusers"
    module: str = "none"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.net, ControlNetModel):
            got = type(self.net).__name__
            raise limits.SettingError(
                "controlnet", f"controlnet must be a loaded ControlNet (load_controlnet), got {got}"
            )
        limits.check_number("control_strength", self.strength, 0.0, MAX_STRENGTH)
        limits.check_number("control_start", self.start, 0.0, 1.0)
        limits.check_number("control_end", self.end, 0.0, 1.0)
        if self.start >= self.end:
            raise limits.SettingError(
                "control_start", f"control_start ({self.start:g}) must be less than control_end ({self.end:g})"
            )
        for name in ("guess_mode",):
            if not isinstance(getattr(self, name), bool):
                raise limits.SettingError(name, f"{name} must be true or false, got {getattr(self, name)!r}")
        limits.check_choice("control_mode", self.control_mode, CONTROL_MODES)
        limits.check_choice("control_steps", self.steps, STEP_RULES)
        if self.guess_mode and self.control_mode != "balanced":
            raise limits.SettingError("control_mode", "guess_mode is diffusers' form of a control mode: use one")
        object.__setattr__(self, "image", control_image(self.image))

    @property
    def label(self) -> str:
        return getattr(self.net, "name", "controlnet")

    def active(self, step: int, total: int) -> bool:
        """Whether this unit guides step `step` (0-based) of `total`."""
        if self.steps == "a1111":
            return self.start <= step / total <= self.end
        return not (step / total < self.start or (step + 1) / total > self.end)


def control_image(image: Any) -> np.ndarray:
    """A control image (PIL, numpy or a file path) as uint8 HxWx3 (RGB; alpha dropped); anything that is no picture,
    or an empty one, is a `SettingError` naming `control_image`."""
    if image is None:
        raise limits.SettingError("control_image", "control_image is missing: a ControlNet unit needs an image")
    try:
        if isinstance(image, (str, os.PathLike)):
            with Image.open(image) as opened:
                opened.load()
                image = opened.copy()
        arr = images.to_rgb_array(image, "control_image")
    except (TypeError, ValueError, OSError) as e:
        raise limits.SettingError("control_image", f"control_image is not a usable picture: {e}") from None
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise limits.SettingError("control_image", f"control_image is empty ({arr.shape[1]}x{arr.shape[0]})")
    return arr


def check_controls(value: Any) -> tuple[Control, ...]:
    """`GenerationSettings.control`: a list or tuple of `Control` (a single one is taken as a list of one)."""
    if value is None:
        return ()
    if isinstance(value, Control):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, Control) for c in value):
        raise limits.SettingError("control", f"control must be a list of sd_core.Control units, got {value!r:.80}")
    return tuple(value)
