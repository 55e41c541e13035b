"""The Project Texture operator inside real Blender against a real server (tiny SD1 model, tiny random depth
ControlNet), driven by tests/plugins/test_blender_projection.py. The add-on is installed from its built zip.

Environment: SDCORE_TEST_URL (the server), SDCORE_TEST_ZIP (the extension), SDCORE_TEST_CONTROLNET (the
ControlNet's name in the server's `--controlnet-dir`), BLENDER_USER_RESOURCES. Not collected by the main test run.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
import types
from pathlib import Path

if "BLENDER_USER_RESOURCES" not in os.environ:
    os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="sd_core_bpy_user_")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bpy  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from bpy_projection_checks import CAM1, CAM2, TARGET, add_camera, cube_and_sphere, empty_scene, eroded  # noqa: E402

URL = os.environ["SDCORE_TEST_URL"]
ZIP = os.environ["SDCORE_TEST_ZIP"]
CONTROLNET = os.environ["SDCORE_TEST_CONTROLNET"]
ADDON = "bl_ext.user_default.sd_core_blender"
W, H = 128, 96
SIZE = 1024
MARK = np.array([0.2, 0.4, 0.6])


@pytest.fixture(scope="module")
def addon():
    result = bpy.ops.extensions.package_install_files(filepath=ZIP, repo="user_default", enable_on_install=True)
    assert result == {"FINISHED"}
    module = importlib.import_module(ADDON)
    yield module
    module.runs.SESSION.release()


def decode(addon, png: bytes) -> np.ndarray:
    return addon.pixels.png_to_array(png)


def projection_scene(addon):
    """Cube and sphere selected, two cameras (Cam1 active), the textures premarked, the add-on at the server."""
    prefs = bpy.context.preferences.addons[ADDON].preferences
    scene = empty_scene(W, H)
    prefs.connection, prefs.url = "SERVER", URL
    s = scene.sd_core
    s.prompt, s.steps, s.sampler, s.seed, s.random_seed, s.pack = "mossy stone", 4, "Euler", 7, False, True
    s.controlnet = CONTROLNET
    cube, sphere = cube_and_sphere(scene)
    objects = [cube, sphere]
    cam1 = add_camera(scene, "Cam1", CAM1, TARGET)
    cam2 = add_camera(scene, "Cam2", CAM2, TARGET)
    scene.camera = cam1
    proj = addon.projection
    for obj in objects:  # earlier colours, to see that hidden texels keep them
        image = proj.texture_for(obj, SIZE)
        rgba = np.zeros((SIZE, SIZE, 4))
        rgba[:, :, :3] = MARK
        proj.write_texture(image, rgba)
    bpy.ops.object.select_all(action="DESELECT")
    for obj in objects:
        obj.select_set(True)
    bpy.context.view_layer.objects.active = cube
    return scene, objects, cam1, cam2


def test_project_texture_from_two_cameras(addon):
    scene, objects, cam1, cam2 = projection_scene(addon)
    cube, _ = objects
    proj = addon.projection

    assert bpy.ops.sdcore.project_texture(cameras="Cam1") == {"FINISHED"}, addon.runs.SESSION.last_error
    run = addon.runs.SESSION.run
    request = run.task.request
    assert request.kind == "txt2img" and request.control_model == CONTROLNET
    depth1 = proj.render_depth(scene, cam1)
    np.testing.assert_array_equal(request.control_image, proj.depth_control_image(depth1))
    generated = decode(addon, run.task.result.images[0])[:, :, :3].astype(float)
    assert generated.shape == (H, W, 3)
    infotext = cube.active_material and proj.texture_for(cube).get("sd_parameters", "")
    assert "ControlNet" in infotext, infotext  # the server applied the unit and says so
    for obj in objects:  # wired into the material's base colour
        assert any(
            n.type == "TEX_IMAGE" and n.image == proj.texture_for(obj) for n in obj.active_material.node_tree.nodes
        )

    back = proj.render_textures(scene, cam1, objects)
    marks = proj.render_textures(scene, cam1, objects, mask=True)
    inner = eroded(marks[:, :, 1] > 0.5, 2)
    assert inner.sum() > 2000
    diff = np.abs(back[:, :, :3] * 255 - generated)[inner].mean()
    print(f"camera 1: mean abs diff {diff:.2f}/255 over {inner.sum()} pixels")
    assert diff < 8, diff
    before = {}
    for obj in objects:
        rgba = proj.read_texture(proj.texture_for(obj))
        uncovered = rgba[:, :, 3] < 0.5
        assert uncovered.any()
        np.testing.assert_allclose(rgba[uncovered][:, :3], np.broadcast_to(MARK, (uncovered.sum(), 3)), atol=0.6 / 255)
        before[obj.name] = rgba

    init, mask, holes = proj.inpaint_inputs(scene, cam2, objects)
    assert bpy.ops.sdcore.project_texture(cameras="Cam2") == {"FINISHED"}, addon.runs.SESSION.last_error
    run = addon.runs.SESSION.run
    request = run.task.request
    assert request.kind == "inpaint" and holes > 1000
    np.testing.assert_array_equal(request.mask, mask)  # the coverage mask is the inpaint mask
    second = decode(addon, run.task.result.images[0])[:, :, :3].astype(float)
    for obj in objects:
        after = proj.read_texture(proj.texture_for(obj))
        was = before[obj.name][:, :, 3] > 0.5
        np.testing.assert_array_equal(after[was], before[obj.name][was])  # the first view's texels stay
        assert ((after[:, :, 3] > 0.5) & ~was).sum() > 1000  # the second fills more
    back2 = proj.render_textures(scene, cam2, objects)
    filled = eroded(mask > 0, 2)
    diff2 = np.abs(back2[:, :, :3] * 255 - second)[filled].mean()
    print(f"camera 2: mean abs diff {diff2:.2f}/255 over {filled.sum()} newly filled pixels")
    assert diff2 < 8, diff2


class Recorder:
    """Stands in for a panel's layout (panels do not draw in background mode): records props and operators."""

    def __init__(self, log: list) -> None:
        self.log, self.enabled, self.alert = log, True, False

    def row(self, **_kwargs):
        return Recorder(self.log)

    column = box = row

    def prop(self, _data, name, **_kwargs) -> None:
        self.log.append(name)

    def operator(self, idname, **_kwargs):
        self.log.append(idname)
        return types.SimpleNamespace()

    def label(self, *_args, **_kwargs) -> None:
        pass

    operator_menu_enum = progress = template_icon = label


def test_the_shader_editor_panel_offers_project_texture(addon):
    drawn = {}
    for space in ("NODE_EDITOR", "IMAGE_EDITOR"):
        log: list = []
        context = types.SimpleNamespace(scene=bpy.context.scene, space_data=types.SimpleNamespace(type=space))
        addon.ui.SDCORE_PT_shader_editor.draw(types.SimpleNamespace(layout=Recorder(log)), context)
        drawn[space] = log
    assert "sdcore.project_texture" in drawn["NODE_EDITOR"] and "controlnet" in drawn["NODE_EDITOR"]
    assert "sdcore.choose_controlnet" in drawn["NODE_EDITOR"]
    assert "sdcore.project_texture" not in drawn["IMAGE_EDITOR"]


def test_without_a_controlnet_or_a_selection_the_report_says_what_to_do(addon):
    scene = empty_scene(W, H)
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.connection, prefs.url = "SERVER", URL
    scene.sd_core.controlnet = ""
    cube, _ = cube_and_sphere(scene)
    scene.camera = add_camera(scene, "Cam1", CAM1, TARGET)
    bpy.ops.object.select_all(action="DESELECT")
    with pytest.raises(RuntimeError, match="Select the mesh objects"):
        bpy.ops.sdcore.project_texture()
    cube.select_set(True)
    with pytest.raises(RuntimeError, match="depth ControlNet"):
        bpy.ops.sdcore.project_texture()
    with pytest.raises(RuntimeError, match="no camera named 'Nope'"):
        bpy.ops.sdcore.project_texture(cameras="Nope")


def test_the_servers_controlnets_are_a_list_to_choose_from(addon):
    scene = empty_scene(W, H)
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.connection, prefs.url = "SERVER", URL
    assert addon.runs.SESSION.engine_for(bpy.context).controlnets() == [CONTROLNET]
    assert bpy.ops.sdcore.choose_controlnet(name=CONTROLNET) == {"FINISHED"}
    assert scene.sd_core.controlnet == CONTROLNET


def test_a_projection_run_ticks_without_blocking_and_cancel_bakes_nothing(addon):
    """The operator's plan driven as the modal timer drives it: each tick returns at once; Cancel mid-run leaves
    every texture as it was."""
    scene, objects, cam1, _ = projection_scene(addon)
    proj, session = addon.projection, addon.runs.SESSION
    before = {o.name: proj.read_texture(proj.texture_for(o)) for o in objects}
    plan = addon.operators.Projection(bpy.context, "Cam1", CONTROLNET)
    assert plan.advance()
    request, label, finish = plan.prepare(bpy.context)
    assert request.kind == "txt2img" and request.control_image is not None
    request.steps, request.width, request.height = 150, 512, 512  # long enough to be cancelled while it runs
    run = session.start(bpy.context, request, label, finish)
    slowest, deadline = 0.0, time.monotonic() + 120
    while run.task.state is not addon.task.State.RUNNING:
        assert time.monotonic() < deadline and not run.finished, run.report()
        t = time.monotonic()
        run.step()
        slowest = max(slowest, time.monotonic() - t)
        time.sleep(0.02)
    assert slowest < 0.5, slowest
    run.cancel()
    assert run.wait(timeout=60) is addon.task.State.CANCELLED
    assert not plan.finished(run, pack=True) and plan.index == 0
    for obj in objects:
        np.testing.assert_array_equal(proj.read_texture(proj.texture_for(obj)), before[obj.name])
