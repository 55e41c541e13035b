"""Putting a generated texture on an object: Image Texture -> Principled BSDF Base Color, and UVs when missing.

UVs are a box projection computed with numpy rather than `bpy.ops.uv.*`: no edit mode, no context override, same
result in the UI and in background mode, and every face of a box gets the whole (tileable) texture.
"""

from __future__ import annotations

import re
from typing import Any

import bpy
import numpy as np

from . import pixels
from .engine import UserError

try:  # the copy the extension builder puts into the zip (numpy only)
    from . import sd_pbr as pbr
except ImportError:  # running from the source tree, next to sd_core
    from sd_core import pbr  # type: ignore[no-redef]

PBR_STRENGTH = 4.0  # the normal map's height scale: the height map's full range spans 4 texels of rise
DISPLACEMENT_SCALE = 0.05  # the Displacement node's scale: bump-like, not geometry-changing, by default


def ensure_uvs(mesh: Any) -> bool:
    """Give `mesh` a box-projected UV map if it has none; returns whether one was made."""
    if len(mesh.uv_layers) > 0:
        return False
    if len(mesh.polygons) == 0:
        raise UserError(f"The mesh '{mesh.name}' has no faces to put a texture on")
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    normals = np.empty(len(mesh.polygons) * 3, dtype=np.float32)
    mesh.polygons.foreach_get("normal", normals)
    normals = normals.reshape(-1, 3)
    loop_totals = np.empty(len(mesh.polygons), dtype=np.int32)
    mesh.polygons.foreach_get("loop_total", loop_totals)
    loop_vertex = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.loops.foreach_get("vertex_index", loop_vertex)

    loop_normal = np.repeat(normals, loop_totals, axis=0)  # loops are stored polygon after polygon
    axis = np.abs(loop_normal).argmax(axis=1)
    sign = np.sign(loop_normal[np.arange(len(axis)), axis])
    sign[sign == 0] = 1.0
    low, size = co.min(axis=0), np.maximum(co.max(axis=0) - co.min(axis=0), 1e-8)
    unit = (co[loop_vertex] - low) / size  # each axis of the bounding box spans 0..1
    # Project each loop on the plane facing its dominant normal axis, mirrored so that no side reads backwards.
    u_axis, v_axis = np.array([1, 0, 0])[axis], np.array([2, 2, 1])[axis]
    u = unit[np.arange(len(axis)), u_axis]
    v = unit[np.arange(len(axis)), v_axis]
    flip = np.where(axis == 1, -sign, sign)
    u = np.where(flip < 0, 1.0 - u, u)
    uv_layer = mesh.uv_layers.new(name="UVMap")
    uv_layer.data.foreach_set("uv", np.stack([u, v], axis=1).astype(np.float32).ravel())
    mesh.update()
    return True


def _principled(tree: Any) -> Any:
    """The material's Principled BSDF, created and wired to the output when missing."""
    nodes, links = tree.nodes, tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is not None:
        return bsdf
    bsdf = nodes.new("ShaderNodeBsdfPrincipled")
    output = next((n for n in nodes if n.type == "OUTPUT_MATERIAL" and n.is_active_output), None)
    output = output or next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None)
    if output is None:
        output = nodes.new("ShaderNodeOutputMaterial")
        output.location = (300, 0)
    bsdf.location = (output.location[0] - 300, output.location[1])
    links.new(bsdf.outputs["BSDF"], output.inputs["Surface"])
    return bsdf


def _node_material(name: str) -> Any:
    material = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):  # 5.0 materials always use nodes (the flag is deprecated)
        material.use_nodes = True
    return material


def apply_texture(obj: Any, image: Any) -> Any:
    """Show `image` as the base colour of `obj`'s active material (made if missing); UVs made if missing."""
    if obj is None or obj.type != "MESH":
        raise UserError("Select a mesh object to apply the texture to (or turn off 'Apply to active object')")
    ensure_uvs(obj.data)
    material = obj.active_material
    if material is None:
        material = _node_material(f"SD {image.name}")
        if len(obj.material_slots) == 0:
            obj.data.materials.append(material)
        else:
            obj.active_material = material
    elif material.node_tree is None:
        material.use_nodes = True
    tree = material.node_tree
    bsdf = _principled(tree)
    base = bsdf.inputs["Base Color"]
    texture = next((link.from_node for link in base.links if link.from_node.type == "TEX_IMAGE"), None)
    if texture is None:
        texture = tree.nodes.new("ShaderNodeTexImage")
        texture.location = (bsdf.location[0] - 320, bsdf.location[1])
        tree.links.new(texture.outputs["Color"], base)
    texture.image = image
    tree.nodes.active = texture
    return material


def seamless_axes(image: Any, fallback: str = "") -> str:
    """The axes `image` wraps on ("", "x", "y", "xy"), as its generation's infotext records them (`Tiling: ...`)."""
    found = re.search(r"(?:^|, )Tiling: ([^,\n]+)", str(image.get("sd_parameters", "")))
    if found is None:
        return fallback
    value = found.group(1).strip().lower()  # sd-core writes the axes, A1111 "True"
    return "xy" if value in ("true", "xy") else value if value in ("x", "y") else ""


def make_pbr_images(image: Any, seamless: str) -> dict[str, Any]:
    """Height, normal and roughness images (Non-Color data) derived from `image` by `sd_core.pbr`, seamless on the
    axes the source wraps on; named after it."""
    maps = pbr.pbr_maps(pixels.to_srgb8(image), seamless=seamless, strength=PBR_STRENGTH)
    height, width = maps["height"].shape
    made: dict[str, Any] = {}
    try:
        for name, values in maps.items():
            rgba = np.ones((height, width, 4), dtype=np.float32)
            rgba[:, :, :3] = values[:, :, None] if values.ndim == 2 else values
            made[name] = bpy.data.images.new(f"{image.name} {name}"[:60], width, height, alpha=False)
            made[name].colorspace_settings.name = "Non-Color"
            pixels.write_rgba(made[name], rgba)
    except Exception:
        for done in made.values():
            bpy.data.images.remove(done)
        raise
    return made


def _image_node(tree: Any, label: str, image: Any, location: tuple[float, float]) -> Any:
    """The material's image node labelled `label` (made if missing), showing `image` as Non-Color data."""
    node = next((n for n in tree.nodes if n.type == "TEX_IMAGE" and n.label == label), None)
    if node is None:
        node = tree.nodes.new("ShaderNodeTexImage")
        node.label, node.location = label, location
    node.image = image
    return node


def wire_pbr(material: Any, maps: dict[str, Any]) -> None:
    """Into the material's Principled BSDF: normal map -> Normal Map node (tangent space, the mesh's UVs) -> Normal,
    roughness -> Roughness, height -> Displacement node -> the output's Displacement (the material's displacement
    method decides bump or true displacement). Nodes made on an earlier call are reused."""
    tree = material.node_tree
    bsdf = _principled(tree)
    x, y = bsdf.location[0], bsdf.location[1]
    links = tree.links
    normal_image = _image_node(tree, "SD normal", maps["normal"], (x - 620, y - 300))
    normal_map = next((n for n in tree.nodes if n.type == "NORMAL_MAP" and n.label == "SD normal map"), None)
    if normal_map is None:
        normal_map = tree.nodes.new("ShaderNodeNormalMap")
        normal_map.label, normal_map.location = "SD normal map", (x - 300, y - 300)
    normal_map.space = "TANGENT"
    links.new(normal_image.outputs["Color"], normal_map.inputs["Color"])
    links.new(normal_map.outputs["Normal"], bsdf.inputs["Normal"])
    rough = _image_node(tree, "SD roughness", maps["roughness"], (x - 620, y - 40))
    links.new(rough.outputs["Color"], bsdf.inputs["Roughness"])
    output = next((link.to_node for link in bsdf.outputs["BSDF"].links if link.to_node.type == "OUTPUT_MATERIAL"), None)
    if output is not None:
        height = _image_node(tree, "SD height", maps["height"], (x - 620, y - 560))
        displacement = next((n for n in tree.nodes if n.type == "DISPLACEMENT" and n.label == "SD displacement"), None)
        if displacement is None:
            displacement = tree.nodes.new("ShaderNodeDisplacement")
            displacement.label, displacement.location = "SD displacement", (output.location[0], y - 560)
        displacement.inputs["Midlevel"].default_value = 0.5
        displacement.inputs["Scale"].default_value = DISPLACEMENT_SCALE
        links.new(height.outputs["Color"], displacement.inputs["Height"])
        links.new(displacement.outputs["Displacement"], output.inputs["Displacement"])
