"""The panel's settings (saved with the scene) and the history of recent generations that can be recalled."""

from __future__ import annotations

import random
import time
from typing import Any

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from .engine import Request

SAMPLERS = [
    "Euler a",
    "Euler",
    "DPM++ 2M",
    "DPM++ 2M Karras",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "Heun",
    "LMS",
    "DDIM",
    "UniPC",
]
SEAMLESS = [
    ("NONE", "Off", "Ordinary image"),
    ("X", "X", "Tiles left to right"),
    ("Y", "Y", "Tiles top to bottom"),
    ("XY", "Both", "Tiles in both directions"),
]
# Production texture sizes: the longer side of the texture Generate Texture makes, through the hires fix (the first
# pass at the panel's size, enlarged and sampled again in tiles; seamless when the panel's Seamless is on).
PRODUCTION_SIDES = {"2K": 2048, "4K": 4096}
TEXTURE_SIZES = [
    ("PANEL", "Panel size", "Width x height as set above, one pass"),
    ("2K", "2K", "2048 px on the longer side: the panel's size enlarged and refined in tiles (hires fix)"),
    ("4K", "4K", "4096 px on the longer side: the panel's size enlarged and refined in tiles (hires fix); minutes"),
]
PRODUCTION_STRENGTH = 0.4  # the second pass's denoising strength: adds detail, keeps the first pass's layout
MAX_TILE = 512  # the second pass's tile: SD1's native size (the recorded 4096 px run: 512, overlap 128)


def production_plan(side: int, width: int, height: int) -> tuple[float, tuple[int, int, int]]:
    """(hires scale, tile (width, height, overlap)) for a texture of `side` px on its longer side from a first pass of
    width x height: the tile a quarter of the side (at most `MAX_TILE`, a multiple of 8), overlapping by a quarter."""
    scale = side / max(width, height)
    tile = max(64, min(MAX_TILE, side // 4) // 8 * 8)
    return scale, (tile, tile, tile // 4 // 8 * 8)


# The settings a request takes as they are (the same names in the panel, the `Request` and the engine).
AS_IS = ("prompt", "negative_prompt", "width", "height", "steps", "sampler", "batch_size", "strength", "loras", "model")
HISTORY_SIZE = 20
# The settings a history entry keeps and a recall restores (names shared by both property groups).
RECALLED = (
    "model",
    "prompt",
    "negative_prompt",
    "loras",
    "width",
    "height",
    "steps",
    "sampler",
    "cfg_scale",
    "model_cfg",
    "seed",
    "random_seed",
    "seamless",
    "texture_size",
    "batch_size",
    "strength",
)


def _side(name: str) -> IntProperty:
    return IntProperty(
        name=name,
        default=512,
        min=64,
        max=2048,
        step=64,
        subtype="PIXEL",
        description=f"Image {name.lower()} (a multiple of 8)",
    )


def _common() -> dict[str, Any]:
    """Property definitions shared by the settings and the history entries."""
    return {
        "prompt": StringProperty(name="Prompt", description="What to generate", default=""),
        "negative_prompt": StringProperty(name="Negative", description="What to avoid", default=""),
        "model": StringProperty(
            name="Model",
            description="One of the server's models (its list), for these generations only; empty: the model the "
            "server has loaded",
            default="",
        ),
        "loras": StringProperty(
            name="LoRAs",
            description="name:weight, ...: the engine's LoRAs, sent as <lora:name:weight> after the prompt",
            default="",
        ),
        "width": _side("Width"),
        "height": _side("Height"),
        "steps": IntProperty(name="Steps", default=20, min=1, max=150, description="Sampling steps"),
        "sampler": EnumProperty(name="Sampler", items=[(s, s, "") for s in SAMPLERS], default="Euler a"),
        "cfg_scale": FloatProperty(
            name="CFG", default=7.0, min=0.0, max=30.0, description="How closely to follow the prompt"
        ),
        "model_cfg": BoolProperty(
            name="Model's CFG",
            default=True,
            description="Use the model's own CFG scale (sd-core's built-in model: 3, most SD models: 7.5); "
            "off: the CFG value beside it",
        ),
        "seed": IntProperty(name="Seed", default=0, min=0, description="Seed used when 'Random' is off"),
        "random_seed": BoolProperty(name="Random", default=True, description="A new random seed each time"),
        "seamless": EnumProperty(
            name="Seamless", items=SEAMLESS, default="NONE", description="Make the image tile on these axes"
        ),
        "texture_size": EnumProperty(
            name="Texture size", items=TEXTURE_SIZES, default="PANEL", description="How large Generate Texture makes it"
        ),
        "batch_size": IntProperty(name="Batch", default=1, min=1, max=8, description="Images per generation"),
        "strength": FloatProperty(
            name="Strength",
            default=0.6,
            min=0.0,
            max=1.0,
            subtype="FACTOR",
            description="How much img2img and restyling may change the image",
        ),
    }


class SDCORE_PG_history_entry(bpy.types.PropertyGroup):
    __annotations__ = {**_common(), "kind": StringProperty(), "used_seed": IntProperty(), "when": FloatProperty()}


class SDCORE_PG_settings(bpy.types.PropertyGroup):
    __annotations__ = {
        **_common(),
        "apply_material": BoolProperty(
            name="Apply to active object",
            default=True,
            description="Use the texture as the active object's base colour (material and UVs made if missing)",
        ),
        "pack": BoolProperty(
            name="Pack into .blend",
            default=True,
            description="Keep generated images inside the .blend; off: save them as PNGs in //sd_textures/ "
            "next to the saved .blend file",
        ),
        "pbr": BoolProperty(
            name="PBR maps",
            default=False,
            description="Also derive normal, height and roughness maps from a generated texture and wire them into "
            "the material (Normal Map node, Roughness, Displacement); seamless like the texture",
        ),
        "controlnet": StringProperty(
            name="ControlNet",
            default="",
            description="Project Texture's depth ControlNet: a name of the server's ControlNet folder "
            "(its /controlnet/model_list, e.g. control_v11f1p_sd15_depth)",
        ),
        "history": CollectionProperty(type=SDCORE_PG_history_entry),
        "history_index": IntProperty(default=0),
    }


def settings(context: Any) -> Any:
    return context.scene.sd_core


def make_request(s: Any, kind: str, **extra: Any) -> Request:
    """The engine request for the panel's settings; a random seed is drawn here so the history knows it (within
    the range of Blender's integer properties, so a recall reproduces it)."""
    seed = random.randrange(2**31 - 1) if s.random_seed else int(s.seed)
    if kind == "txt2img" and s.texture_size in PRODUCTION_SIDES:
        scale, tile = production_plan(PRODUCTION_SIDES[s.texture_size], s.width, s.height)
        # the second pass refines: steps x strength of them (A1111's rule for hr_second_pass_steps 0 would run all
        # `steps` at the large size, 2.5x the time at 0.4)
        steps = max(1, round(s.steps * PRODUCTION_STRENGTH))
        extra = {
            "hires_scale": scale,
            "hires_strength": PRODUCTION_STRENGTH,
            "hires_steps": steps,
            "tile": tile,
            **extra,
        }
    return Request(
        kind=kind,
        **{name: getattr(s, name) for name in AS_IS},
        cfg_scale=None if s.model_cfg else s.cfg_scale,  # None: the model's own
        seed=seed,
        tiling="" if s.seamless == "NONE" else s.seamless.lower(),
        **extra,
    )


def remember(s: Any, request: Request) -> None:
    """Put the request's settings at the top of the history (an identical earlier entry moves up)."""
    for index, entry in enumerate(s.history):
        if all(getattr(entry, name) == getattr(s, name) for name in RECALLED if name not in ("seed", "random_seed")):
            s.history.remove(index)
            break
    entry = s.history.add()
    for name in RECALLED:
        setattr(entry, name, getattr(s, name))
    entry.kind, entry.used_seed, entry.when = request.kind, request.seed, time.time()
    s.history.move(len(s.history) - 1, 0)
    while len(s.history) > HISTORY_SIZE:
        s.history.remove(len(s.history) - 1)


def recall(s: Any, index: int) -> None:
    """Copy a history entry back into the settings, with the seed it used fixed (to reproduce the image)."""
    entry = s.history[index]
    for name in RECALLED:
        setattr(s, name, getattr(entry, name))
    s.seed, s.random_seed = entry.used_seed, False


CLASSES = (SDCORE_PG_history_entry, SDCORE_PG_settings)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register() -> None:
    _register_classes()
    bpy.types.Scene.sd_core = PointerProperty(type=SDCORE_PG_settings)


def unregister() -> None:
    del bpy.types.Scene.sd_core
    _unregister_classes()
