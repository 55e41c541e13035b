"""Project Texture, the Blender side: the camera's exact depth, the selected meshes' texels in world space, and a
picture from the camera baked into each object's UV texture, with a coverage mask in the texture's alpha.

The maths (projection, visibility, sampling, baking) is `sd_core.projection`, numpy only, shipped in the zip as
`sd_projection.py`; this module only gathers Blender's numbers and renders:

- **Depth**: the active camera's view Z depth, rendered by Cycles on the CPU (headless-safe; OpenGL renders are
  not available in background mode) with a temporary material override whose emission is the Camera Data node's
  View Z Depth: the quantity Blender's Z pass holds, read back exactly from a 32-bit float EXR. One sample per
  pixel through a 0.01 px box filter, so each pixel is the depth at its centre (no anti-aliasing across edges), and
  a transparent film marks the pixels with no surface (depth inf).
- **Views rendered back**: the baked textures seen through a camera (same single-sample set-up), for the next
  camera's inpainting: its colour, and a mask render (red = the texel's coverage, green = a projected object).

Texture arrays here are rows bottom-up (Blender's `Image.pixels` layout, as `sd_projection` expects); the
pictures exchanged with the engine are rows top-down (PNG order).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import bpy
import numpy as np

from . import pixels
from .engine import UserError
from .renders import image_output

try:  # the copy the extension builder puts into the zip (numpy only)
    from . import sd_projection as pj
except ImportError:  # running from the source tree, next to sd_core
    from sd_core import projection as pj  # type: ignore[no-redef]

TEXTURE_SIZE = 1024
TEXTURE_SUFFIX = " Projected"


@dataclass
class View:
    """A camera as `sd_projection` needs it, at the scene's render size."""

    world_to_camera: np.ndarray
    projection: np.ndarray
    width: int
    height: int
    orthographic: bool


def render_size(scene: Any) -> tuple[int, int]:
    pct = scene.render.resolution_percentage
    return scene.render.resolution_x * pct // 100, scene.render.resolution_y * pct // 100


def camera_view(scene: Any, camera: Any) -> View:
    if camera is None or camera.type != "CAMERA":
        raise UserError("The scene has no active camera to project from: add one (Add > Camera) and make it active")
    width, height = render_size(scene)
    if width < 1 or height < 1:
        raise UserError(f"The render size is {width}x{height}: set a resolution in the Output properties")
    depsgraph = bpy.context.evaluated_depsgraph_get()
    proj = camera.calc_matrix_camera(
        depsgraph,
        x=width,
        y=height,
        scale_x=scene.render.pixel_aspect_x,
        scale_y=scene.render.pixel_aspect_y,
    )
    return View(
        world_to_camera=np.array(camera.matrix_world.inverted(), dtype=np.float64),
        projection=np.array(proj, dtype=np.float64),
        width=width,
        height=height,
        orthographic=camera.data.type == "ORTHO",
    )


# --- rendering with a temporary set-up -----------------------------------------------------------------------------


@contextmanager
def _saved(obj: Any, **values: Any) -> Iterator[None]:
    """Set attributes for the duration, restoring them afterwards (those that exist in this Blender)."""
    old = {}
    for name, value in values.items():
        if hasattr(obj, name):
            old[name] = getattr(obj, name)
            setattr(obj, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            try:
                setattr(obj, name, value)
            except (AttributeError, TypeError, ValueError):
                pass


@contextmanager
def _exact_cycles(scene: Any, camera: Any) -> Iterator[None]:
    """Cycles on the CPU, one sample at each pixel's centre, no light bounces, Standard view, transparent film."""
    render, cycles, view = scene.render, scene.cycles, scene.view_settings
    with (
        _saved(scene, camera=camera),
        _saved(render, engine="CYCLES", film_transparent=True, use_compositing=False, use_sequencer=False),
        _saved(
            cycles,
            device="CPU",
            samples=1,
            use_adaptive_sampling=False,
            use_denoising=False,
            pixel_filter_type="BOX",
            filter_width=0.01,
            max_bounces=0,
            use_animated_seed=False,
        ),
        _saved(view, view_transform="Standard", look="None", exposure=0.0, gamma=1.0),
    ):
        yield


def _render_float(scene: Any) -> np.ndarray:
    """Render the scene, returning the Render Result as float32 HxWx4, rows bottom-up (linear, unclamped)."""
    try:
        bpy.ops.render.render(write_still=False, scene=scene.name)
    except RuntimeError as exc:
        raise UserError(f"Rendering the projection's passes with Cycles failed ({exc})") from exc
    result = next((img for img in bpy.data.images if img.type == "RENDER_RESULT"), None)
    if result is None:
        raise UserError("Cycles gave no render result")
    with pixels.temp_path(".exr") as path, image_output(scene, "OPEN_EXR", "32", exr_codec="ZIP"):
        result.save_render(path, scene=scene)
        image = bpy.data.images.load(path, check_existing=False)
        try:
            width, height = image.size
            flat = np.empty(width * height * 4, dtype=np.float32)
            image.pixels.foreach_get(flat)
        finally:
            bpy.data.images.remove(image)
    return flat.reshape(height, width, 4)


def _emission_material(name: str) -> tuple[Any, Any, Any]:
    """A temporary material: (material, its node tree's nodes, the Emission node), emission strength 1."""
    material = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):
        material.use_nodes = True
    nodes = material.node_tree.nodes
    nodes.clear()
    out = nodes.new("ShaderNodeOutputMaterial")
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Strength"].default_value = 1.0
    material.node_tree.links.new(emission.outputs["Emission"], out.inputs["Surface"])
    return material, nodes, emission


@contextmanager
def _override(view_layer: Any, material: Any) -> Iterator[None]:
    old = view_layer.material_override
    view_layer.material_override = material
    try:
        yield
    finally:
        view_layer.material_override = old
        bpy.data.materials.remove(material)


def render_depth(scene: Any, camera: Any) -> np.ndarray:
    """The camera's view Z depth per pixel (float64 HxW, rows top-down), inf where no surface is seen."""
    camera_view(scene, camera)  # the clear errors for a missing camera or size
    material, nodes, emission = _emission_material("SD Projection Depth")
    data = nodes.new("ShaderNodeCameraData")
    links = material.node_tree.links
    combine = nodes.new("ShaderNodeCombineXYZ")  # the depth into every channel, as a colour
    for axis in ("X", "Y", "Z"):
        links.new(data.outputs["View Z Depth"], combine.inputs[axis])
    links.new(combine.outputs["Vector"], emission.inputs["Color"])
    with _exact_cycles(scene, camera), _override(bpy.context.view_layer, material):
        rgba = _render_float(scene)
    depth = rgba[::-1, :, 0].astype(np.float64)
    return np.where(rgba[::-1, :, 3] > 0.5, depth, np.inf)


def render_normals(scene: Any, camera: Any) -> np.ndarray:
    """The camera's view of the surfaces' shading normals, world space (float64 HxWx3, rows top-down), zero where
    no surface is seen: Blender's Normal pass, rendered as `render_depth` is (emission of (n + 1) / 2)."""
    camera_view(scene, camera)
    material, nodes, emission = _emission_material("SD Projection Normals")
    links = material.node_tree.links
    geometry = nodes.new("ShaderNodeNewGeometry")
    encode = nodes.new("ShaderNodeVectorMath")
    encode.operation = "MULTIPLY_ADD"
    encode.inputs[1].default_value = (0.5, 0.5, 0.5)
    encode.inputs[2].default_value = (0.5, 0.5, 0.5)
    links.new(geometry.outputs["Normal"], encode.inputs[0])
    links.new(encode.outputs["Vector"], emission.inputs["Color"])
    with _exact_cycles(scene, camera), _override(bpy.context.view_layer, material):
        rgba = _render_float(scene)[::-1].astype(np.float64)
    return np.where(rgba[:, :, 3:] > 0.5, rgba[:, :, :3] * 2 - 1, 0.0)


def normal_control_image(scene: Any, camera: Any) -> np.ndarray:
    """A normal ControlNet's map (camera space, uint8 HxWx3 top-down) of what `camera` sees."""
    view = camera_view(scene, camera)
    return pj.normal_colours(render_normals(scene, camera), view.world_to_camera[:3, :3])


def depth_control_image(depth: np.ndarray) -> np.ndarray:
    """A depth ControlNet's map (near = white, uint8 HxWx3 top-down) from `render_depth`'s pass."""
    try:
        grey = pj.depth_levels(depth)
    except ValueError as exc:
        raise UserError(f"The camera sees none of the scene to project onto ({exc})") from None
    return np.repeat(grey[:, :, None], 3, axis=2)


# --- the meshes' texels --------------------------------------------------------------------------------------------


def mesh_triangles(obj: Any, uv_name: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The evaluated mesh's triangles: UVs (T, 3, 2), world positions (T, 3, 3), and each corner's world normal
    (T, 3, 3; the triangle's face normal, so that facing is decided per face)."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        layer = mesh.uv_layers.get(uv_name) if uv_name else mesh.uv_layers.active
        if layer is None:
            raise UserError(f"'{obj.name}' has no UV map to project onto: unwrap it first")
        count = len(mesh.loop_triangles)
        loops = np.empty(count * 3, dtype=np.int32)
        mesh.loop_triangles.foreach_get("loops", loops)
        face_normals = np.empty(count * 3, dtype=np.float32)
        mesh.loop_triangles.foreach_get("normal", face_normals)
        loop_vertex = np.empty(len(mesh.loops), dtype=np.int32)
        mesh.loops.foreach_get("vertex_index", loop_vertex)
        co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", co)
        uv = np.empty(len(mesh.loops) * 2, dtype=np.float32)
        layer.data.foreach_get("uv", uv)
    finally:
        evaluated.to_mesh_clear()
    world = np.array(obj.matrix_world, dtype=np.float64)
    positions = pj.transform(world, co.reshape(-1, 3)[loop_vertex[loops]]).reshape(-1, 3, 3)
    normal_matrix = np.linalg.inv(world[:3, :3]).T
    normals = face_normals.reshape(-1, 3).astype(np.float64) @ normal_matrix.T
    normals = np.repeat(normals[:, None, :], 3, axis=1)
    uvs = uv.reshape(-1, 2)[loops].reshape(-1, 3, 2).astype(np.float64)
    return uvs, positions, normals


# --- the baked textures --------------------------------------------------------------------------------------------


def texture_for(obj: Any, size: int = TEXTURE_SIZE) -> Any:
    """The object's projected texture (8-bit sRGB RGBA, alpha = coverage), made transparent black if missing."""
    name = obj.name + TEXTURE_SUFFIX
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.new(name, size, size, alpha=True, float_buffer=False)
        image.pixels.foreach_set(np.zeros(size * size * 4, dtype=np.float32))
        image.update()
    return image


def read_texture(image: Any) -> np.ndarray:
    """The stored values, float64 HxWx4, rows bottom-up (as `sd_projection` wants them)."""
    width, height = image.size
    flat = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(flat)
    return flat.reshape(height, width, 4).astype(np.float64)


def write_texture(image: Any, rgba: np.ndarray) -> None:
    image.pixels.foreach_set(np.ascontiguousarray(rgba, dtype=np.float32).ravel())
    image.update()


def project_picture(scene: Any, camera: Any, objects: list[Any], picture: np.ndarray, depth: np.ndarray) -> dict:
    """Bake `picture` (uint8 HxWx3/4 top-down, the camera's view at the render size) into each object's projected
    texture, where the camera sees the texel and no earlier view covered it. `depth`: `render_depth` of the same
    camera. Returns {object name: number of texels written}."""
    view = camera_view(scene, camera)
    if picture.shape[:2] != (view.height, view.width):
        raise UserError(
            f"The picture is {picture.shape[1]}x{picture.shape[0]}, the camera's render size "
            f"{view.width}x{view.height}: they must match to project"
        )
    colour = picture[:, :, :3].astype(np.float64) / 255.0  # byte images store sRGB values as they are
    written = {}
    for obj in objects:
        image = texture_for(obj)
        width, height = image.size
        uvs, positions, normals = mesh_triangles(obj)
        pos, nrm, covered = pj.rasterize_uv(uvs, positions, normals, width, height)
        xy, seen = pj.project_texels(
            pos, nrm, covered, view.world_to_camera, view.projection, depth, orthographic=view.orthographic
        )
        rgba = read_texture(image)
        coverage = rgba[:, :, 3] > 0.5
        rgb, coverage, wrote = pj.bake(rgba[:, :, :3], coverage, colour, xy, seen)
        write_texture(image, np.concatenate([rgb, coverage[:, :, None].astype(np.float64)], axis=2))
        written[obj.name] = int(wrote.sum())
    return written


@contextmanager
def _materials(assign: dict[Any, Any]) -> Iterator[None]:
    """Every slot of each object showing the given material for the duration (one appended when it has none)."""
    saved = []
    for obj, material in assign.items():
        slots = [s.material for s in obj.material_slots]
        links = [s.link for s in obj.material_slots]
        if not slots:  # a mesh slot of its own, removed afterwards (clear(): after pop() the object keeps a slot)
            obj.data.materials.append(material)
        else:
            for slot in obj.material_slots:
                slot.link = "OBJECT"
                slot.material = material
        saved.append((obj, slots, links))
    try:
        yield
    finally:
        for obj, slots, links in saved:
            if not slots:
                obj.data.materials.clear()
                continue
            for slot, material, link in zip(obj.material_slots, slots, links, strict=True):
                slot.material = None
                slot.link = link
                slot.material = material


def _texture_material(image: Any, mask: bool) -> Any:
    """Emission of the projected texture (`mask`: red = its coverage, green = 1), through the object's UVs."""
    material, nodes, emission = _emission_material("SD Projection View")
    links = material.node_tree.links
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.interpolation = "Linear"
    if mask:
        combine = nodes.new("ShaderNodeCombineXYZ")
        links.new(tex.outputs["Alpha"], combine.inputs["X"])
        combine.inputs["Y"].default_value = 1.0
        links.new(combine.outputs["Vector"], emission.inputs["Color"])
    else:
        links.new(tex.outputs["Color"], emission.inputs["Color"])
    return material


def render_textures(scene: Any, camera: Any, objects: list[Any], mask: bool = False) -> np.ndarray:
    """The projected textures of `objects` seen through `camera`, other meshes black: float HxWx4 top-down.
    Colour: the sRGB values of the textures (Standard view transform undoes the texture's decoding); `mask`: red =
    coverage, green = 1 on the objects, both 0 elsewhere."""
    black, _, emission = _emission_material("SD Projection Black")
    emission.inputs["Color"].default_value = (0.0, 0.0, 0.0, 1.0)
    assign = {o: black for o in scene.objects if o.type == "MESH" and o.visible_get()}
    made = [black]
    for obj in objects:
        material = _texture_material(texture_for(obj), mask)
        assign[obj] = material
        made.append(material)
    try:
        with _exact_cycles(scene, camera), _materials(assign):
            rgba = _render_float(scene)
    finally:
        for material in made:
            bpy.data.materials.remove(material)
    rgba = rgba[::-1].astype(np.float64)
    if not mask:
        rgba[:, :, :3] = pixels.linear_to_srgb(rgba[:, :, :3])
    return rgba


def inpaint_inputs(scene: Any, camera: Any, objects: list[Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """For a further camera: the view of what earlier cameras baked (uint8 HxWx3, top-down), the inpaint mask
    (uint8 HxW, 255 = pixels on the objects whose texels no view has covered yet) and the number of such pixels."""
    colour = render_textures(scene, camera, objects)
    marks = render_textures(scene, camera, objects, mask=True)
    hole = (marks[:, :, 1] > 0.5) & (marks[:, :, 0] < 0.5)
    image = np.round(np.clip(colour[:, :, :3], 0, 1) * 255).astype(np.uint8)
    return image, np.where(hole, 255, 0).astype(np.uint8), int(hole.sum())
