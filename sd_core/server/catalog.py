"""Sampler and scheduler lists in A1111's shapes, made from the engine's own registry (`sd_core.samplers`), which
is the single authority on which names exist; requests are resolved by `GenerationSettings`, not here."""

from __future__ import annotations

from typing import Any

from sd_core import samplers, schedules


def sampler_items() -> list[dict[str, Any]]:
    """A1111's /samplers list: display name, other accepted names, options."""
    return [{"name": samplers.resolve(name).label, "aliases": [name], "options": {}} for name in samplers.SAMPLERS]


def scheduler_items() -> list[dict[str, Any]]:
    """A1111's /schedulers list; "automatic" lets each sampler use its usual schedule."""
    items: list[dict[str, Any]] = [
        {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1, "need_inner_model": False}
    ]
    for name in schedules.SCHEDULES:
        label = schedules.SCHEDULE_LABELS.get(name, name)
        aliases = ["uniform"] if name == "normal" else None
        rho = {"karras": 7.0, "polyexponential": 1.0}.get(name, -1)  # A1111's default_rho
        items.append({"name": name, "label": label, "aliases": aliases, "default_rho": rho, "need_inner_model": False})
    return items
