"""Sampler names as people type them: A1111 display names ("DPM++ 2M Karras"), snake names ("dpmpp_2m"), with an
optional schedule, resolved to a function plus the sigmas it should walk."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from ..limits import SettingError
from ..schedules import SCHEDULE_LABELS, SCHEDULES, NoiseSchedule, get_sigmas, schedule_name
from . import dpmpp, multistep, singlestep, unipc

# Samplers whose schedule A1111 computes for steps + 1 and then drops the next-to-last sigma (its
# `discard_next_to_last_sigma`; A1111 also sets it for DPM2 and DPM2 a, which keep sd_core's plain schedules here).
DISCARD_PENULTIMATE = frozenset({"dpmpp_3m_sde"})

AUTOMATIC = ("", "automatic", "auto", "default")
"""Schedule names that mean "the sampler's own default"."""

SAMPLER_OPTIONS = ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise")
"""The k-diffusion options a sampler function may take as keyword arguments (`SamplerChoice.options`)."""


@dataclass(frozen=True)
class SamplerChoice:
    """A resolved sampler: `name` (snake), `label` (A1111 sampler name), `fn`, `schedule` (schedule name).

    `vp_start` marks the timestep-form samplers (DDIM, PLMS, DDPM, UniPC, LCM) whose reference implementations start
    from unit-variance VP noise; `spacing`/`final` configure the `discrete` schedule; `discard_penultimate` is
    A1111's "discard next to last sigma" (`DISCARD_PENULTIMATE`).
    """

    name: str
    label: str
    fn: Callable[..., torch.Tensor]
    schedule: str
    vp_start: bool = False
    spacing: str = "leading"
    final: str = "zero"
    discard_penultimate: bool = False

    @property
    def schedule_label(self) -> str:
        """A1111 "Schedule type" text: "Automatic" for the sampler's own default, else the schedule's label."""
        return "Automatic" if self.schedule == _SPECS[self.name][2] else SCHEDULE_LABELS[self.schedule]

    def sigmas(self, steps: int, noise_schedule: NoiseSchedule, family: str = "sd15") -> torch.Tensor:
        """The sigmas for `steps` steps (1..1000) of this sampler on this model's noise schedule; `family` picks the
        Align Your Steps table ("sd15", "sdxl": `schedules.AYS_TABLES`)."""
        return get_sigmas(
            self.schedule, steps, noise_schedule, spacing=self.spacing, final=self.final, family=family,
            discard_penultimate=self.discard_penultimate,
        )  # fmt: skip

    @property
    def options(self) -> dict[str, Any]:
        """The `SAMPLER_OPTIONS` this sampler's function takes, with its own defaults (eta: 1 for the ancestral and
        SDE samplers, 0 for DDIM; s_churn 0, s_tmin 0, s_tmax infinity, s_noise 1)."""
        return _options(self.fn)

    def initial_noise_scale(self, sigmas: torch.Tensor) -> float:
        """txt2img starts from `noise * scale`: sigma_max for k-diffusion samplers, sqrt(1 + sigma_max**2) (unit
        variance in VP space, diffusers' start) for the timestep-form ones."""
        s = float(sigmas[0])
        return math.sqrt(1.0 + s * s) if self.vp_start else s


# name: (A1111 label, function, default schedule, vp_start, final sigma of the discrete schedule)
_SPECS: dict[str, tuple[str, Callable[..., torch.Tensor], str, bool, str]] = {
    "euler": ("Euler", singlestep.sample_euler, "normal", False, "zero"),
    "euler_ancestral": ("Euler a", singlestep.sample_euler_ancestral, "normal", False, "zero"),
    "heun": ("Heun", singlestep.sample_heun, "normal", False, "zero"),
    "lms": ("LMS", multistep.sample_lms, "normal", False, "zero"),
    "dpm_2": ("DPM2", singlestep.sample_dpm_2, "normal", False, "zero"),
    "dpm_2_ancestral": ("DPM2 a", singlestep.sample_dpm_2_ancestral, "normal", False, "zero"),
    "dpmpp_2s_ancestral": ("DPM++ 2S a", singlestep.sample_dpmpp_2s_ancestral, "normal", False, "zero"),
    "dpmpp_2m": ("DPM++ 2M", dpmpp.sample_dpmpp_2m, "normal", False, "zero"),
    "dpmpp_sde": ("DPM++ SDE", dpmpp.sample_dpmpp_sde, "normal", False, "zero"),
    "dpmpp_2m_sde": ("DPM++ 2M SDE", dpmpp.sample_dpmpp_2m_sde, "normal", False, "zero"),
    "dpmpp_2m_sde_heun": ("DPM++ 2M SDE Heun", dpmpp.sample_dpmpp_2m_sde_heun, "normal", False, "zero"),
    "ddim": ("DDIM", singlestep.sample_ddim, "discrete", True, "sigma_min"),
    "plms": ("PLMS", multistep.sample_plms, "discrete", True, "sigma_min"),
    "uni_pc": ("UniPC", unipc.sample_uni_pc, "normal", True, "zero"),
    "lcm": ("LCM", singlestep.sample_lcm, "lcm", True, "zero"),
    "ddpm": ("DDPM", singlestep.sample_ddpm, "discrete", True, "zero"),
    # A1111's further samplers, with A1111 v1.10's default schedules ("Automatic" = normal for k-diffusion ones)
    "dpm_fast": ("DPM fast", dpmpp.sample_dpm_fast, "normal", False, "zero"),
    "dpm_adaptive": ("DPM adaptive", dpmpp.sample_dpm_adaptive, "normal", False, "zero"),
    "dpmpp_3m_sde": ("DPM++ 3M SDE", dpmpp.sample_dpmpp_3m_sde, "exponential", False, "zero"),
    "restart": ("Restart", singlestep.sample_restart, "karras", False, "zero"),
    "ddim_cfg_pp": ("DDIM CFG++", singlestep.sample_ddim_cfg_pp, "discrete", True, "sigma_min"),
}

SAMPLERS: list[str] = list(_SPECS)

_ALIASES: dict[str, str] = {
    **{name: name for name in _SPECS},
    **{spec[0].lower(): name for name, spec in _SPECS.items()},
    "euler_a": "euler_ancestral",
    "k_euler": "euler",
    "k_euler_a": "euler_ancestral",
    "k_heun": "heun",
    "k_lms": "lms",
    "k_dpm_2": "dpm_2",
    "k_dpm_2_a": "dpm_2_ancestral",
    "k_dpmpp_2s_a": "dpmpp_2s_ancestral",
    "k_dpmpp_2m": "dpmpp_2m",
    "k_dpmpp_sde": "dpmpp_sde",
    "k_dpmpp_2m_sde": "dpmpp_2m_sde",
    "k_dpmpp_3m_sde": "dpmpp_3m_sde",
    "k_dpm_fast": "dpm_fast",
    "k_dpm_ad": "dpm_adaptive",
    "ddim_cfgpp": "ddim_cfg_pp",
    "unipc": "uni_pc",
}


@cache
def _options(fn: Callable[..., torch.Tensor]) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    return {name: params[name].default for name in SAMPLER_OPTIONS if name in params}


def samplers_taking(option: str) -> list[str]:
    """The A1111 labels of the samplers whose function takes `option` (one of `SAMPLER_OPTIONS`)."""
    return [label for label, fn, *_ in _SPECS.values() if option in _options(fn)]


def _normalize(text: str) -> str:
    return " ".join(text.strip().lower().split())


def _split(key: str) -> tuple[str | None, str]:
    """The longest sampler alias that starts `key` at a word boundary, and what follows it."""
    for alias in sorted(_ALIASES, key=len, reverse=True):
        rest = key[len(alias) :]
        if key.startswith(alias) and (not rest or rest[0] in " _"):
            return _ALIASES[alias], rest[1:].strip()
    return None, ""


def _unknown(name: str) -> SettingError:
    labels = ", ".join(spec[0] for spec in _SPECS.values())
    return SettingError(
        "sampler",
        f"unknown sampler {name!r}; valid samplers: {labels} (or {', '.join(SAMPLERS)}), optionally followed by a "
        f"schedule: {', '.join(SCHEDULES)}",
    )


def resolve(name: str, schedule: str | None = None) -> SamplerChoice:
    """Resolve a sampler name, case-insensitively: "Euler a", "euler_a", "DPM++ 2M Karras", "dpmpp_2m_karras"...

    A schedule in the name ("... Karras") applies unless `schedule` is given; "Automatic" (or None, "auto",
    "default") means the sampler's default: `normal` for the k-diffusion samplers, DDIM's discrete timesteps for
    DDIM/PLMS/DDPM/DDIM CFG++, `lcm` for LCM; for the samplers added from A1111's list, A1111's defaults (DPM++ 3M
    SDE `exponential`, Restart `karras`). Unknown names raise `limits.SettingError` (a ValueError) naming "sampler" or
    "schedule" and listing the valid ones.
    """
    sampler, rest = _split(_normalize(name))
    if sampler is None:
        raise _unknown(name)
    label, fn, default, vp_start, final = _SPECS[sampler]
    chosen = default
    if rest and rest not in AUTOMATIC:
        try:
            chosen = schedule_name(rest)
        except ValueError:
            raise _unknown(name) from None
    if schedule is not None and _normalize(schedule) not in AUTOMATIC:
        try:
            chosen = schedule_name(schedule)
        except ValueError as exc:
            raise SettingError("schedule", str(exc)) from None
    return SamplerChoice(
        name=sampler, label=label, fn=fn, schedule=chosen, vp_start=vp_start, final=final,
        discard_penultimate=sampler in DISCARD_PENULTIMATE,
    )  # fmt: skip
