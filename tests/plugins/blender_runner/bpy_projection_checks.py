"""Project Texture's geometry inside real Blender (the `bpy` wheel), no server or model needed; driven by
tests/plugins/test_blender_projection.py. By hand, from the repository root:

    .venv-bpy50/bin/python -m pytest --noconftest -p no:cacheprovider \
        tests/plugins/blender_runner/bpy_projection_checks.py

The add-on's `projection` module is imported from the source tree (with `sd_core.projection` as its maths); the
picture projected is a smooth synthetic one, so what is checked is the geometry: depth, visibility, baking, the
coverage mask and the second camera's inpaint mask. SDCORE_TEST_OUT (optional): a folder for the planes' depth
pass and control map, compared by the outer test with `sd_core.controlnet.preprocess.depth_map`. Not collected by
the main test run (no `test_` prefix).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

if "BLENDER_USER_RESOURCES" not in os.environ:  # keep the user's own Blender folders out of it
    os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="sd_core_bpy_user_")

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

import bpy  # noqa: E402
import mathutils  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

from blender_addon import projection  # noqa: E402

W, H = 128, 96
OUT = Path(os.environ["SDCORE_TEST_OUT"]) if os.environ.get("SDCORE_TEST_OUT") else None


def empty_scene(width: int = W, height: int = H):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = width, height, 100
    return scene


def add_camera(scene, name: str, location, target=(0.0, 0.0, 0.0)):
    cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    scene.collection.objects.link(cam)
    cam.location = location
    direction = mathutils.Vector(target) - mathutils.Vector(location)
    cam.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    bpy.context.view_layer.update()
    return cam


def smooth_picture(width: int = W, height: int = H, phase: float = 0.0) -> np.ndarray:
    """A picture with detail everywhere but no pixel noise: sinusoids with periods of 31 to 57 px."""
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    rgb = [np.sin(xx / 7.0 + phase), np.cos(yy / 5.0 + phase), np.sin((xx + yy) / 9.0 + phase)]
    return np.round(128 + 100 * np.stack(rgb, axis=2)).astype(np.uint8)


def eroded(mask: np.ndarray, radius: int) -> np.ndarray:
    """`mask` shrunk by `radius` pixels (away from its edges)."""
    pad = np.pad(mask, radius)
    return sliding_window_view(pad, (2 * radius + 1, 2 * radius + 1)).all(axis=(2, 3))


def cube_and_sphere(scene):
    """A cube at the origin and a UV sphere partly in front of it as seen from CAM1."""
    bpy.ops.mesh.primitive_cube_add(size=2, location=(0.0, 0.0, 0.0))
    cube = bpy.context.active_object
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.8, location=(2.2, -1.2, 1.4))
    sphere = bpy.context.active_object
    return cube, sphere


CAM1 = (4.5, -4.5, 3.2)
CAM2 = (1.0, 7.0, -5.0)  # the other side, from below: sees most of what CAM1 cannot
TARGET = (0.8, -0.4, 0.5)  # between the cube and the sphere


# --- depth for the ControlNet ---------------------------------------------------------------------------------------


def test_planes_at_known_distances_give_the_expected_depth_and_grey_levels():
    """Three planes facing the camera at 2, 1/0.35 and 4 units, side by side, and sky: the depth pass holds exactly
    those distances; the control map is white at 2, 102 at 1/0.35 (1/z is 0.4 of the way from 1/4 to 1/2: 0.4 * 255),
    black at 4 and in the sky."""
    scene = empty_scene(96, 48)
    cam = add_camera(scene, "Cam", (0.0, 0.0, 0.0), target=(0.0, 0.0, -1.0))
    cam.data.type = "ORTHO"  # strips of equal width whatever the distance
    cam.data.ortho_scale = 4.0  # 4 units across 96 px: 24 px per unit
    for x, z in ((-1.5, 2.0), (-0.5, 1 / 0.35), (0.5, 4.0)):
        bpy.ops.mesh.primitive_plane_add(size=1.0, location=(x, 0.0, -z))
    depth = projection.render_depth(scene, cam)
    assert depth.shape == (48, 96)
    rows = slice(14, 34)  # the planes span rows 12..35 (1 unit tall, centred)
    for col0, expected in ((0, 2.0), (24, 1 / 0.35), (48, 4.0)):
        strip = depth[rows, col0 + 2 : col0 + 22]
        np.testing.assert_allclose(strip, expected, rtol=1e-5)
    assert np.isinf(depth[rows, 74:]).all() and np.isinf(depth[:10]).all()  # sky: no surface
    control = projection.depth_control_image(depth)
    assert control.shape == (48, 96, 3) and (control[..., 0] == control[..., 2]).all()
    assert (control[rows, 2:22, 0] == 255).all()
    assert (control[rows, 26:46, 0] == 102).all()
    assert (control[rows, 50:70, 0] == 0).all()
    assert (control[rows, 74:, 0] == 0).all()
    if OUT is not None:  # the outer test checks that the engine's `preprocess.depth_map` (torch) makes this map
        np.save(OUT / "planes_depth.npy", depth)
        np.save(OUT / "planes_control.npy", control)


def test_perspective_depth_is_view_z_not_distance():
    """A plane facing a perspective camera at 5 units: the same depth at every pixel (view Z, as Blender's Z pass;
    the distance along each ray would grow toward the corners)."""
    scene = empty_scene(64, 64)
    cam = add_camera(scene, "Cam", (0.0, 0.0, 0.0), target=(0.0, 0.0, -1.0))
    bpy.ops.mesh.primitive_plane_add(size=40.0, location=(0.0, 0.0, -5.0))
    depth = projection.render_depth(scene, cam)
    np.testing.assert_allclose(depth, 5.0, rtol=1e-5)


def test_normals_of_a_tilted_plane_give_the_expected_colours():
    """A plane tilted about two axes, seen by a camera turned away from the world axes: the normal map is the plane's
    analytic normal in camera space, (n + 1) / 2 (within one level), and 128 grey where there is no surface."""
    scene = empty_scene(64, 48)
    cam = add_camera(scene, "Cam", (1.0, -2.0, 0.5), target=(0.0, 3.0, 0.0))
    bpy.ops.mesh.primitive_plane_add(size=3.0, location=(0.0, 3.0, 0.0), rotation=(np.radians(70), np.radians(25), 0))
    plane = bpy.context.active_object
    normal = plane.matrix_world.to_3x3() @ mathutils.Vector((0, 0, 1))
    if normal.dot(cam.location - plane.location) < 0:
        normal = -normal
    normals = projection.render_normals(scene, cam)
    seen = np.linalg.norm(normals, axis=2) > 0.5
    assert 0.2 < seen.mean() < 0.95
    inner = eroded(seen, 1)
    np.testing.assert_allclose(normals[inner], np.broadcast_to(np.array(normal), (inner.sum(), 3)), atol=1e-3)
    control = projection.normal_control_image(scene, cam)
    in_camera = cam.matrix_world.inverted().to_3x3() @ normal
    expected = np.round((np.array(in_camera) + 1) * 127.5)
    assert np.abs(control[inner].astype(float) - expected).max() <= 1, (control[inner][0], expected)
    assert (control[~seen] == 128).all()
    assert expected[2] > 128 and np.abs(expected[:2] - 128).max() > 20, expected  # facing the camera, tilted


# --- projecting and baking ------------------------------------------------------------------------------------------


@pytest.fixture
def scene_two_cameras():
    scene = empty_scene()
    cube, sphere = cube_and_sphere(scene)
    cam1 = add_camera(scene, "Cam1", CAM1, TARGET)
    cam2 = add_camera(scene, "Cam2", CAM2, TARGET)
    scene.camera = cam1
    return scene, [cube, sphere], cam1, cam2


MARK = np.array([0.2, 0.4, 0.6])  # the textures' colour before any projection (alpha 0: not covered)


def premark(objects) -> None:
    for obj in objects:
        image = projection.texture_for(obj, size=512)
        rgba = np.zeros((512, 512, 4))
        rgba[:, :, :3] = MARK
        projection.write_texture(image, rgba)


def test_projection_renders_back_as_the_picture_and_leaves_hidden_texels(scene_two_cameras):
    scene, objects, cam1, cam2 = scene_two_cameras
    premark(objects)
    picture = smooth_picture()
    depth = projection.render_depth(scene, cam1)
    written = projection.project_picture(scene, cam1, objects, picture, depth)
    assert all(n > 1000 for n in written.values()), written

    # rendered back through the camera: the picture, where the objects are seen, away from silhouette edges
    back = projection.render_textures(scene, cam1, objects)
    marks = projection.render_textures(scene, cam1, objects, mask=True)
    on_objects = marks[:, :, 1] > 0.5
    inner = eroded(on_objects, 2)
    assert inner.sum() > 0.15 * W * H
    diff = np.abs(back[:, :, :3] * 255 - picture)[inner].mean()
    assert diff < 8, diff
    assert (marks[:, :, 0] > 0.5)[inner].mean() > 0.99  # every seen texel is marked covered
    # a control: a picture that was not projected differs by far more, so the check can fail
    assert np.abs(back[:, :, :3] * 255 - smooth_picture(phase=1.0))[inner].mean() > 30

    # hidden texels untouched: texels left uncovered keep the marker colour exactly (8-bit storage)
    for obj in objects:
        rgba = projection.read_texture(projection.texture_for(obj))
        uncovered = rgba[:, :, 3] < 0.5
        assert uncovered.any()
        np.testing.assert_allclose(rgba[uncovered][:, :3], np.broadcast_to(MARK, (uncovered.sum(), 3)), atol=0.6 / 255)

    # the far side, seen from the second camera: no texel there was covered by the first
    far = projection.render_textures(scene, cam2, objects, mask=True)
    far_inner = eroded(far[:, :, 1] > 0.5, 2)
    assert far_inner.sum() > 0.1 * W * H
    assert (far[:, :, 0] > 0.5)[far_inner].mean() < 0.05


def test_an_occluded_part_of_the_cube_is_not_covered(scene_two_cameras):
    """The sphere hides part of the cube's faces that face the first camera: those texels stay uncovered (seen with
    the sphere hidden from render, the cube's pixels behind the sphere show no coverage)."""
    scene, objects, cam1, _ = scene_two_cameras
    cube, sphere = objects
    premark(objects)
    depth = projection.render_depth(scene, cam1)
    projection.project_picture(scene, cam1, objects, smooth_picture(), depth)
    with_sphere = projection.render_textures(scene, cam1, [sphere], mask=True)[:, :, 1] > 0.5
    sphere.hide_render = True
    try:
        cube_alone = projection.render_textures(scene, cam1, [cube], mask=True)
    finally:
        sphere.hide_render = False
    cube_pixels = cube_alone[:, :, 1] > 0.5
    behind = eroded(cube_pixels & with_sphere, 2)
    assert behind.sum() > 100, behind.sum()  # the layout really has the sphere in front of the cube
    open_cube = eroded(cube_pixels & ~with_sphere, 2)
    assert (cube_alone[:, :, 0] > 0.5)[open_cube].mean() > 0.99
    assert (cube_alone[:, :, 0] > 0.5)[behind].mean() < 0.01


def test_a_second_camera_fills_only_what_the_first_did_not_cover(scene_two_cameras):
    scene, objects, cam1, cam2 = scene_two_cameras
    premark(objects)
    depth1 = projection.render_depth(scene, cam1)
    projection.project_picture(scene, cam1, objects, smooth_picture(), depth1)
    before = {o.name: projection.read_texture(projection.texture_for(o)) for o in objects}

    # the second view's inpaint mask: the objects' pixels not yet covered (most of them, from the far side)
    init, mask, holes = projection.inpaint_inputs(scene, cam2, objects)
    assert init.shape == (H, W, 3) and mask.shape == (H, W)
    on_objects = projection.render_textures(scene, cam2, objects, mask=True)[:, :, 1] > 0.5
    assert holes > 0.5 * on_objects.sum()
    assert not mask[~on_objects].any()  # the background is never repainted

    second = smooth_picture(phase=2.0)
    depth2 = projection.render_depth(scene, cam2)
    written = projection.project_picture(scene, cam2, objects, second, depth2)
    assert all(n > 1000 for n in written.values()), written
    for obj in objects:
        after = projection.read_texture(projection.texture_for(obj))
        was = before[obj.name][:, :, 3] > 0.5
        np.testing.assert_array_equal(after[was], before[obj.name][was])  # covered texels: not one value changed
        now = (after[:, :, 3] > 0.5) & ~was
        assert now.sum() == written[obj.name]
    # what the second camera sees now renders back as its picture where the first had left holes
    back = projection.render_textures(scene, cam2, objects)
    filled = eroded(mask > 0, 2)
    assert np.abs(back[:, :, :3] * 255 - second)[filled].mean() < 8


def test_the_scene_is_left_as_it_was(scene_two_cameras):
    """The passes' temporary set-up (engine, samples, filter, view transform, film, camera, material override, the
    objects' materials) is undone afterwards, and no temporary material is left behind."""
    scene, objects, cam1, cam2 = scene_two_cameras
    scene.render.engine = "BLENDER_EEVEE_NEXT" if bpy.app.version < (5, 0, 0) else "BLENDER_EEVEE"
    scene.cycles.samples, scene.render.film_transparent = 37, False
    scene.view_settings.view_transform = "AgX"
    cube = objects[0]
    material = bpy.data.materials.new("Mine")
    cube.data.materials.append(material)
    before = (scene.render.engine, scene.cycles.samples, scene.cycles.pixel_filter_type, scene.cycles.filter_width)
    materials_before = set(bpy.data.materials.keys())
    projection.render_depth(scene, cam2)
    projection.render_normals(scene, cam2)
    projection.inpaint_inputs(scene, cam2, objects)
    after = (scene.render.engine, scene.cycles.samples, scene.cycles.pixel_filter_type, scene.cycles.filter_width)
    assert after == before and scene.camera == cam1 and not scene.render.film_transparent
    assert scene.view_settings.view_transform == "AgX" and bpy.context.view_layer.material_override is None
    assert [s.material for s in cube.material_slots] == [material] and cube.material_slots[0].link == "DATA"
    assert len(objects[1].material_slots) == 0
    assert set(bpy.data.materials.keys()) == materials_before
