"""Putting a generated texture on an object: Image Texture -> Principled BSDF Base Color, and UVs when missing.

UVs are a box projection computed with numpy rather than `bpy.ops.uv.*`: no edit mode, no context override, same
result in the UI and in background mode, and every face of a box gets the whole (tileable) texture.
"""

from __future__ import annotations

from typing import Any

import bpy
import numpy as np

from .engine import UserError


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
