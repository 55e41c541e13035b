"""The one table of generation limits, read by every boundary: the Python API (`sd_core.settings`), the CLI, the
server's request schema and the plugins' fields. Standard library only, so any of them can import it.

Each `check_*` raises `SettingError` (a ValueError) naming the setting, with the allowed range in words; boundaries
map `setting` to their own field names (the server's request fields, the CLI's options).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

MIN_SIDE = 8  # one latent: A1111 generates any multiple of 8 (its UNet matches odd skip sizes, as ours)
MAX_SIDE = 8192
SIDE_MULTIPLE = 8  # the VAE maps each 8x8 pixel block to one latent
MAX_STEPS = 1000  # the model's training timesteps
MAX_BATCH = 64
RANDOM_SEED = -1  # seed -1 (or None) picks a random one
MAX_SEED = 2**53 - 1  # exact in every JSON client (JavaScript numbers included), so a seed survives the server
RANDOM_SEED_RANGE = 2**32  # random seeds are drawn below this (A1111's range)
MIN_CLIP_SKIP, MAX_CLIP_SKIP = 1, 12
MAX_PROMPT_CHARS = 20_000
MAX_CFG_SCALE = 100.0  # in magnitude
MAX_MASK_BLUR = 256
FILLS = ("fill", "original", "latent_noise", "latent_nothing")  # A1111 `inpainting_fill` 0..3, in that order
PREFILLS = ("edge_noise", "mirror", "edge")  # how the new area of an outpaint canvas starts (`images.extend_canvas`)
TILING_AXES = ("x", "y", "xy")
# Sampler options (k-diffusion's names) and A1111's seed and img2img extras
MAX_ETA = 100.0
MAX_S_CHURN = 1000.0
MAX_S_SIGMA = 1e6  # s_tmin, s_tmax
MAX_S_NOISE = 100.0
MAX_NOISE_MULTIPLIER = 100.0
# how img2img fits its input to the size: A1111 `resize_mode` 0..3, in that order ("latent": A1111's latent upscale)
RESIZE_MODES = ("resize", "crop", "fill", "latent")
MAX_HIRES_SCALE = 16.0  # hires fix's upscale factor (`settings.HiresOptions.scale`)
MAX_TILE_BATCH = 1024  # tiles per UNet call in tiled denoising (`settings.TileOptions.batch`)
MAX_LORA_WEIGHT = 100.0  # a LoRA multiplier's magnitude (`<lora:name:w>`, `GenerationSettings.loras`)
MAX_AESTHETIC_SCORE = 100.0  # SDXL refiner's aesthetic score conditioning (trained on LAION's 1-10 scale)
EMPTY_NEGATIVE = ("zeros", "encode")  # what an empty negative prompt means (`settings.GenerationSettings`)


class SettingError(ValueError):
    """A setting that cannot be used: `setting` is its name (as in `GenerationSettings`), the message says why."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


def is_int(value: Any) -> bool:
    """An integer (numpy's too) that is not a bool: True is an int to Python, never a step count to a user."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value: Any, low: int, high: int) -> int:
    if not is_int(value) or not low <= value <= high:
        raise SettingError(name, f"{name} must be an integer from {low} to {high}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    if not is_number(value) or (value <= low if low_open else value < low) or value > high:
        bracket = "(" if low_open else "["
        raise SettingError(name, f"{name} must be a number in {bracket}{low:g}, {high:g}], got {value!r}")
    return float(value)


def check_side(name: str, value: Any) -> int:
    """A width or height: an integer multiple of 8 from `MIN_SIDE` to `MAX_SIDE` (8 to 8192)."""
    check_int(name, value, MIN_SIDE, MAX_SIDE)
    if value % SIDE_MULTIPLE:
        nearest = max(MIN_SIDE, int(value / SIDE_MULTIPLE + 0.5) * SIDE_MULTIPLE)
        raise SettingError(name, f"{name} must be a multiple of {SIDE_MULTIPLE}, got {value} (nearest: {nearest})")
    return int(value)


def check_seed(value: Any, name: str = "seed") -> int | None:
    """None for a random seed (None or -1), else the seed, an integer from 0 to `MAX_SEED`."""
    if value is None or (is_int(value) and value == RANDOM_SEED):
        return None
    if not is_int(value) or not 0 <= value <= MAX_SEED:
        raise SettingError(name, f"{name} must be -1 (random) or an integer from 0 to {MAX_SEED}, got {value!r}")
    return int(value)


def check_seed_size(name: str, value: Any) -> tuple[int, int] | None:
    """A size to draw a seed's noise at (A1111's "seed resize from"): None, or (width, height), each an integer
    multiple of 8 from 8 to `MAX_SIDE` (one latent cell is 8 pixels)."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise SettingError(name, f"{name} must be (width, height) or None, got {value!r}")
    for side in value:
        if not is_int(side) or not SIDE_MULTIPLE <= side <= MAX_SIDE or side % SIDE_MULTIPLE:
            raise SettingError(
                name, f"{name}: each side must be a multiple of {SIDE_MULTIPLE} from {SIDE_MULTIPLE} to {MAX_SIDE}, "
                f"got {value!r}"
            )  # fmt: skip
    return int(value[0]), int(value[1])


def check_pair(name: str, value: Any, low: int, high: int) -> tuple[int, int] | None:
    """None, or a pair of integers from `low` to `high` (SDXL's sizes (height, width) and crop (top, left))."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(is_int(v) for v in value):
        raise SettingError(name, f"{name} must be a pair of integers or None, got {value!r}")
    for v in value:
        check_int(name, v, low, high)
    return int(value[0]), int(value[1])


def check_prompt(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise SettingError(name, f"{name} must be a string, got {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise SettingError(name, f"{name} is {len(value)} characters long; the limit is {MAX_PROMPT_CHARS}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SettingError(name, f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def tiling_axes(value: Any) -> str | None:
    """A tiling setting -> "x", "y", "xy" or None: True means both axes (A1111's checkbox), False/None/"" none."""
    if value is None or value is False or value == "":
        return None
    if value is True:
        return "xy"
    if isinstance(value, str) and value.lower() in ("x", "y", "xy", "yx"):
        return "xy" if value.lower() == "yx" else value.lower()
    raise SettingError("tiling", f"tiling must be true/false or one of 'x', 'y', 'xy', got {value!r}")
