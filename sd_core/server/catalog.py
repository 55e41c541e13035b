"""Sampler and scheduler names as A1111 clients see them, checked against the engine's own registry.

The engine (`sd_core.samplers.resolve`) is the single authority on which names exist; this module only turns its
registry into A1111's list shapes and its ValueErrors into 422s that name the request field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import invalid

AUTOMATIC = ("", "automatic", "auto", "default")


@dataclass(frozen=True)
class SamplerPick:
    """What the engine gets (`sampler`, `schedule`) and what responses show (`label`, `schedule_label`)."""

    sampler: str
    schedule: str | None
    label: str
    schedule_label: str


def _samplers() -> Any:
    from sd_core import samplers

    return samplers


def schedule_for_engine(scheduler: str | None) -> str | None:
    """A1111 `scheduler` -> the engine's schedule argument; "automatic" (and nothing) means the sampler's default."""
    if scheduler is None or scheduler.strip().lower() in AUTOMATIC:
        return None
    from sd_core.schedules import schedule_name

    try:
        return schedule_name(scheduler)
    except ValueError as exc:
        raise invalid("scheduler", f"scheduler: {exc}") from None


def pick_sampler(sampler_name: str | None, scheduler: str | None, field: str = "sampler_name") -> SamplerPick:
    """Validate a sampler/scheduler pair before it is queued, so a typo costs nothing."""
    name = (sampler_name or "Euler").strip()
    samplers = _samplers()
    try:
        samplers.resolve(name)
    except ValueError as exc:
        raise invalid(field, f"{field}: {exc}") from None
    schedule = schedule_for_engine(scheduler)
    try:
        choice = samplers.resolve(name, schedule)
    except ValueError as exc:
        raise invalid("scheduler", f"scheduler: {exc}") from None
    return SamplerPick(name, schedule, choice.label, choice.schedule_label)


def sampler_items() -> list[dict[str, Any]]:
    """A1111's /samplers list: display name, other accepted names, options."""
    samplers = _samplers()
    return [{"name": samplers.resolve(name).label, "aliases": [name], "options": {}} for name in samplers.SAMPLERS]


def scheduler_items() -> list[dict[str, Any]]:
    """A1111's /schedulers list; "automatic" lets each sampler use its usual schedule."""
    from sd_core.schedules import SCHEDULE_LABELS, SCHEDULES

    items: list[dict[str, Any]] = [
        {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1, "need_inner_model": False}
    ]
    for name in SCHEDULES:
        label = SCHEDULE_LABELS.get(name, name)
        aliases = ["uniform"] if name == "normal" else None
        rho = 7.0 if name == "karras" else -1
        items.append({"name": name, "label": label, "aliases": aliases, "default_rho": rho, "need_inner_model": False})
    return items
