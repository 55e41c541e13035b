"""Control layers, Krita-free and Qt-free: a layer of the document as a ControlNet input.

The illustrator picks a layer (line art, a scribble, a photo for Canny), a preprocessing module, one of the server's
ControlNets (`/controlnet/model_list`, the A1111 ControlNet extension's API) and a weight. Each request then carries
one unit in `alwayson_scripts.controlnet.args`: the layer's pixels over the same region the request repaints
(`plan.box`), flattened over white (a transparent sketch layer is black lines on white) and scaled to the working
size exactly as the image is, so the map lines up with the init image pixel for pixel. The unit asks for no further
resizing ("Just Resize" of an image already at the size, pixel-perfect processor resolution) and no detected map in
the answer (the plugin's candidates are the answer's first images).
"""

from __future__ import annotations

from typing import Any

from . import regions
from .regions import Plan, RegionError
from .sd_client import bytes_to_b64, encode_png_rgba
from .settings import Settings

MODULES = ("none", "invert", "scribble", "threshold", "canny")  # the server's model-free preprocessors
MODULE_LABELS = {
    "none": "None (the layer is a control map already)",
    "invert": "Invert (black lines on white)",
    "scribble": "Scribble (dark strokes)",
    "threshold": "Threshold",
    "canny": "Canny edges",
}
MODEL_LIST_PATH = "/controlnet/model_list"
SCRIPT = "controlnet"


def model_names(response: Any) -> list[str]:
    """The names of `/controlnet/model_list` (`{"model_list": ["name [hash]", ...]}`), "None" left out."""
    items = response.get("model_list") if isinstance(response, dict) else None
    if not isinstance(items, list):
        return []
    return [str(i) for i in items if isinstance(i, str) and i and i.lower() != "none"]


def active(settings: Settings) -> bool:
    """Whether requests carry a control unit: a layer is chosen."""
    return bool(settings.control_layer)


def check(settings: Settings) -> None:
    """A chosen layer needs a model and a known module; the message says what to choose."""
    if not active(settings):
        return
    if not settings.control_model:
        raise RegionError(
            "Choose a ControlNet model for the control layer (Control section; the server lists those of its "
            "--controlnet-dir), or set the control layer to None."
        )
    if settings.control_module not in MODULES:
        raise RegionError(f"Unknown control module {settings.control_module!r}: choose one of {', '.join(MODULES)}.")


def control_image(bgra: bytes, plan: Plan) -> bytes:
    """The control layer's B, G, R, A pixels over `plan.box` -> R, G, B at the working size: transparency over
    white, scaled as the init image is (`regions.resize` from the box to work_w x work_h)."""
    box = plan.box
    if len(bgra) != box.w * box.h * 4:
        raise RegionError("Krita returned incomplete pixels for the control layer; try again.")
    rgb = regions.bgra_to_rgb(bgra)
    return regions.resize(rgb, box.w, box.h, 3, plan.work_w, plan.work_h)


def unit(rgb: bytes, plan: Plan, settings: Settings) -> dict[str, Any]:
    """One ControlNet unit of the A1111 extension's API for a working-size R, G, B control image."""
    opaque = regions.merge([*regions.split(rgb, 3), b"\xff" * (plan.work_w * plan.work_h)])
    return {
        "enabled": True,
        "image": bytes_to_b64(encode_png_rgba(plan.work_w, plan.work_h, opaque)),
        "module": settings.control_module,
        "model": settings.control_model,
        "weight": settings.control_weight,
        "resize_mode": "Just Resize",  # already at the working size: nothing is cropped away
        "pixel_perfect": True,  # the processor works at the image's own resolution
        "control_mode": "Balanced",
        "guidance_start": 0.0,
        "guidance_end": 1.0,
        "save_detected_map": False,  # the answer's images are the candidates only
    }


def attach(payload: dict[str, Any], control: dict[str, Any] | None) -> dict[str, Any]:
    """`payload` with the unit in `alwayson_scripts.controlnet.args` (unchanged without one)."""
    if control is not None:
        scripts = dict(payload.get("alwayson_scripts") or {})
        scripts[SCRIPT] = {"args": [control]}
        payload["alwayson_scripts"] = scripts
    return payload
