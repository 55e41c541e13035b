"""The docker's size choice, free of Krita and Qt: "fit" (the default: the region scaled to about *Model size*
squared pixels in its own shape) or one of the sizes the server offers for its model, generated at exactly that size.

sd-core names its model's sizes in its options (`sd_core_model_defaults["sizes"]`): SDXL's training sizes for SDXL
models (1024x1024, 1152x896, 1216x832, 1344x768, 1536x640 and their transposes), 512x512, 768x512 and 512x768 for
SD1. Other servers name none, and only "fit" is offered. With a size chosen the region's context box is widened to
that size's shape inside the canvas (`widen_to_shape`), so the model sees more surroundings, not a squashed
region; a shape the canvas cannot give (Generate on a canvas of another shape) is reached by the scaling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .regions import Plan, Rect, grow_axis

FIT = ""  # the setting's value for "fit the region"
FIT_LABEL = "Fit region (Model size)"


def offered(defaults: Mapping[str, Any]) -> list[tuple[int, int]]:
    """The (width, height) pairs in sd-core's model defaults; [] when there are none or they are malformed."""
    value = defaults.get("sizes") if isinstance(defaults, Mapping) else None
    if not isinstance(value, list):
        return []
    pairs = [p for p in value if isinstance(p, (list, tuple)) and len(p) == 2]
    if len(pairs) != len(value) or not all(type(v) is int and v > 0 for p in pairs for v in p):
        return []
    return [(p[0], p[1]) for p in pairs]


def parse(text: str) -> tuple[int, int] | None:
    """ "1216x832" -> (1216, 832); FIT or anything that is not WIDTHxHEIGHT in positive integers -> None (fit)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def key(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def label(size: tuple[int, int]) -> str:
    return f"{size[0]} x {size[1]}"


def at_size(plan: Plan, size: tuple[int, int] | None) -> Plan:
    """`plan` generated at exactly `size` (width, height), its box widened to that shape; `plan` itself for None
    (fit: the plan's own working size)."""
    if size is None:
        return plan
    return replace(plan, box=widen_to_shape(plan.box, plan.canvas, *size), work_w=size[0], work_h=size[1])


def widen_to_shape(box: Rect, canvas: Rect, width: int, height: int) -> Rect:
    """`box` grown on one axis to the shape `width`:`height` inside the canvas (as A1111's "only masked" widens its
    crop to the processing size): more context around the region instead of a squashed one. An axis the canvas
    cannot grow that far takes the whole canvas; the scaling to the working size absorbs what is left."""
    if box.w * height < box.h * width:  # narrower than the shape: wider
        x, w = grow_axis(box.x, box.w, -(-box.h * width // height), canvas.x, canvas.w)
        return Rect(x, box.y, w, box.h)
    y, h = grow_axis(box.y, box.h, -(-box.w * height // width), canvas.y, canvas.h)
    return Rect(box.x, y, box.w, h)
