"""A1111's sampling fields of a generation request -> the engine's settings, as A1111 v1.10 reads them: the sampler
options (eta, s_churn, s_tmin, s_tmax, s_noise) for the samplers A1111 hands each to, the variation seed, seed resize
and noise multiplier, and the denoising strength the engine takes for A1111's "at least one step" rule."""

from __future__ import annotations

import math
import random
from typing import Any

from sd_core import limits, samplers

from . import refusals
from .schemas import GenerationRequest

# A1111's default of each s_* option, the value that leaves a sampler as it is (s_tmax 0 also means infinity)
S_DEFAULTS = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}


def sampler_options(req: GenerationRequest, sampler: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The engine's sampler options for `sampler` (canonical name) as A1111 v1.10 sets them, for the samplers A1111
    hands each to (`refusals.TAKES`; any other ignores it): eta from the request, else the `eta_ancestral` setting
    (`eta_ddim` for the samplers whose own eta is 0, DDIM's); each s_* option from the setting where that is not
    the sampler's default, else from the request. Values equal to the sampler's own are left out."""
    out: dict[str, Any] = {}
    if sampler in refusals.TAKES_ETA:
        own = samplers.resolve(sampler).options["eta"]
        eta = req.eta if req.eta is not None else settings["eta_ddim" if own == 0 else "eta_ancestral"]
        if eta != own:
            out["eta"] = eta
    for name, default in S_DEFAULTS.items():
        if sampler not in refusals.TAKES[name]:
            continue
        stored, asked = settings[name], getattr(req, name)
        if name == "s_tmax":
            stored, asked = stored or math.inf, None if asked is None else asked or math.inf
        value = stored if stored != default or asked is None else asked
        if value != default:
            out[name] = value
    return out


def seed_extras(req: GenerationRequest, settings: dict[str, Any], img2img: bool) -> dict[str, Any]:
    """Variation seed, seed resize (A1111's sizes floored to multiples of 8) and img2img's noise multiplier."""
    subseed = req.subseed if req.subseed not in (None, limits.RANDOM_SEED) else None
    extras: dict[str, Any] = {
        "subseed": random.randrange(limits.RANDOM_SEED_RANGE) if subseed is None else subseed,
        "subseed_strength": req.subseed_strength or 0.0,
    }
    if (req.seed_resize_from_w or 0) > 0 and (req.seed_resize_from_h or 0) > 0:
        extras["seed_resize_from"] = (req.seed_resize_from_w // 8 * 8, req.seed_resize_from_h // 8 * 8)
    if img2img:
        multiplier = getattr(req, "initial_noise_multiplier", None)
        extras["initial_noise_multiplier"] = settings["initial_noise_multiplier"] if multiplier is None else multiplier
    return extras


def engine_strength(strength: float, steps: int) -> float:
    """The strength to give the engine: A1111 runs at least one step (at the lowest noise) however low the strength,
    where the engine refuses a strength that leaves no step; so a strength below 1/steps becomes the lowest that
    runs one step, which is that same step."""
    if strength <= 0 or int(steps * strength) >= 1:
        return strength
    lifted = 1.0 / steps
    while int(steps * lifted) < 1:
        lifted = math.nextafter(lifted, 2.0)
    return min(lifted, 1.0)
