"""Pictures of the scene for restyling: the viewport as the user sees it, or the final render of the camera.

The Render Result has no readable pixels of its own (in background mode least of all), so it goes through
`save_render` to a temporary PNG, which applies the scene's view transform: the colours the user sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import bpy
import numpy as np

from .engine import UserError
from .pixels import png_to_array, temp_path


@contextmanager
def image_output(scene: Any, file_format: str, color_depth: str, **extra: str) -> Iterator[None]:
    """Make `save_render` write RGBA `file_format` at `color_depth` (and any `extra` image settings, e.g. an EXR
    codec) whatever the scene's output format; restore the scene's settings afterwards."""
    settings = scene.render.image_settings
    wanted = {"file_format": file_format, "color_mode": "RGBA", "color_depth": color_depth, **extra}
    names = [n for n in ("media_type", *wanted) if hasattr(settings, n)]
    saved = {n: getattr(settings, n) for n in names}
    try:
        if "media_type" in saved:  # Blender 5.0+: PNG and EXR are only offered for still images
            settings.media_type = "IMAGE"
        for name, value in wanted.items():
            setattr(settings, name, value)
        yield
    finally:
        for name in names:
            try:
                setattr(settings, name, saved[name])
            except (TypeError, ValueError):
                pass


def render_result_pixels(scene: Any) -> np.ndarray:
    """The Render Result as the user sees it (the scene's view transform applied), uint8 HxWx4 top-down."""
    result = next((img for img in bpy.data.images if img.type == "RENDER_RESULT"), None)
    if result is None:
        raise UserError("There is no render result yet: render the scene first (F12)")
    with temp_path(".png") as path, image_output(scene, "PNG", "8"):
        try:
            result.save_render(path, scene=scene)
        except RuntimeError as exc:
            raise UserError(f"The render result could not be read ({exc}): render the scene first (F12)") from exc
        with open(path, "rb") as fh:
            data = fh.read()
    return png_to_array(data)


@contextmanager
def _rendering(scene: Any) -> Iterator[None]:
    """Clear error text for the usual ways a render fails."""
    if scene.camera is None:
        raise UserError("The scene has no active camera to render: add one (Add > Camera) and make it active")
    width = scene.render.resolution_x * scene.render.resolution_percentage // 100
    height = scene.render.resolution_y * scene.render.resolution_percentage // 100
    if width < 1 or height < 1:
        raise UserError(f"The render size is {width}x{height}: set a resolution in the Output properties")
    try:
        yield
    except RuntimeError as exc:
        raise UserError(f"Rendering with {scene.render.engine} failed ({exc}); try Cycles") from exc


def render_scene(scene: Any) -> np.ndarray:
    """The final render of the active camera with the scene's engine, as the user would see it."""
    with _rendering(scene):
        bpy.ops.render.render(write_still=False, scene=scene.name)
    return render_result_pixels(scene)


def _viewport_area(context: Any) -> tuple[Any, Any, Any] | None:
    """A 3D View (window, area, region) on screen, or None (background mode, no 3D View open)."""
    for window in getattr(context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                region = next((r for r in area.regions if r.type == "WINDOW"), None)
                if region is not None:
                    return window, area, region
    return None


def render_viewport(context: Any) -> tuple[np.ndarray, str]:
    """What the user sees in the 3D viewport (its shading mode), or in background mode, where there is no
    viewport, the active camera rendered with the scene's engine. Returns the pixels and how they were made."""
    scene = context.scene
    found = None if bpy.app.background else _viewport_area(context)
    if found is None:
        return render_scene(scene), f"no 3D viewport: rendered the camera with {scene.render.engine}"
    window, area, region = found
    with _rendering(scene), context.temp_override(window=window, area=area, region=region):
        bpy.ops.render.opengl(view_context=True)
    return render_result_pixels(scene), "viewport render"
