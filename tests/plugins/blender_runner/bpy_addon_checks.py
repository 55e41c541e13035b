"""Checks that run inside real Blender (the `bpy` wheel), driven by tests/plugins/test_blender.py:

    .venv-bpy50/bin/python -m pytest --noconftest -p no:cacheprovider tests/plugins/blender_runner/bpy_addon_checks.py

The add-on is installed from its built extension zip with Blender's own installer, into a throw-away user folder.
Environment: SDCORE_TEST_URL (a running sd-core server with a tiny model), SDCORE_TEST_ZIP (the extension),
SDCORE_TEST_MODEL (that model's file), SDCORE_TEST_SDXL ("1" when that model is SDXL), SDCORE_TEST_PYTHON (a Python
that can run `sd_core.server`), SDCORE_TEST_BUILTIN_URL (a server with the built-in texture model) and
SDCORE_TEST_OUT (a folder for the textures made with it, checked afterwards by the outer test with sd_core's
detectors), BLENDER_USER_RESOURCES (Blender's user folder, where the extension is installed; a new temporary one if
unset).
Not collected by the main test run (no `test_` prefix): it needs bpy, which only the bpy venvs have.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import socket
import tempfile
import time
import types
from pathlib import Path

if "BLENDER_USER_RESOURCES" not in os.environ:  # keep the user's own Blender folders out of it
    os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="sd_core_bpy_user_")

import bpy  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

URL = os.environ["SDCORE_TEST_URL"]
ZIP = os.environ["SDCORE_TEST_ZIP"]
MODEL = os.environ["SDCORE_TEST_MODEL"]
PYTHON = os.environ["SDCORE_TEST_PYTHON"]
BUILTIN_URL = os.environ["SDCORE_TEST_BUILTIN_URL"]
OUT = Path(os.environ["SDCORE_TEST_OUT"])
SDXL = os.environ.get("SDCORE_TEST_SDXL") == "1"
SDXL_SIZES = [(1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344),
              (1536, 640), (640, 1536)]  # fmt: skip
BUILTIN_PROMPTS = ("red and white vertical stripes", "blue and yellow horizontal stripes",
                   "black and white checkerboard", "green and white dots")  # fmt: skip
ADDON = "bl_ext.user_default.sd_core_blender"
BUILTIN_FILE = Path(__file__).resolve().parents[3] / "sd_core" / "data" / "default_model.safetensors"
PROMPT = "mossy stone wall"


# --- fixtures ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def addon():
    """The add-on, installed from the zip by Blender's extension installer and enabled."""
    result = bpy.ops.extensions.package_install_files(filepath=ZIP, repo="user_default", enable_on_install=True)
    assert result == {"FINISHED"}
    assert ADDON in bpy.context.preferences.addons, "the extension did not install/enable from the zip"
    module = importlib.import_module(ADDON)
    yield module
    module.runs.SESSION.release()


@pytest.fixture
def addon_env(addon):
    """A fresh startup scene, the add-on pointed at the test server, small fast settings."""
    bpy.ops.wm.read_homefile(use_empty=False)
    assert ADDON in bpy.context.preferences.addons
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.connection, prefs.url = "SERVER", URL
    s = bpy.context.scene.sd_core
    s.prompt, s.negative_prompt, s.width, s.height, s.steps = PROMPT, "", 64, 64, 4
    s.sampler, s.cfg_scale, s.seed, s.random_seed, s.batch_size, s.strength = "Euler", 7.0, 123, False, 1, 0.6
    s.apply_material, s.pack = True, True
    yield addon
    addon.runs.SESSION.cancel()


def client(addon):
    return addon.sd_client.SDClient(URL, timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def blender_pixels(image) -> np.ndarray:
    """The image's stored values as uint8 HxWx4, rows top-down; read directly, not through the add-on."""
    width, height = image.size
    flat = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(flat)
    return np.round(flat.reshape(height, width, 4)[::-1] * 255).astype(np.uint8)


def decode_png(data: bytes) -> np.ndarray:
    """A PNG decoded by Blender's loader, uint8 HxWx4 top-down, independent of the add-on's helpers."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "reference.png"
        path.write_bytes(data)
        image = bpy.data.images.load(str(path), check_existing=False)
        try:
            return blender_pixels(image)
        finally:
            bpy.data.images.remove(image)


def image_names() -> set[str]:
    return {img.name for img in bpy.data.images}


def server_image(addon, endpoint: str, payload: dict) -> np.ndarray:
    response = getattr(client(addon), endpoint)(payload)
    return decode_png(addon.sd_client.b64_to_bytes(response["images"][0]))


def base_payload(s) -> dict:
    """What a client would ask the server for with the panel's settings: no CFG scale while 'Model's CFG' is on."""
    payload = {
        "prompt": s.prompt,
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": s.steps,
        "sampler_name": s.sampler,
        "seed": s.seed,
        "batch_size": 1,
    }
    return payload if s.model_cfg else dict(payload, cfg_scale=s.cfg_scale)


# --- pixels and colour ------------------------------------------------------------------------------------------------


def test_pixels_keep_row_order_and_colour(addon_env):
    pixels = addon_env.pixels
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (6, 10, 4), dtype=np.uint8)
    image = pixels.new_image("orientation", rgba)
    stored = np.empty(6 * 10 * 4, dtype=np.float32)
    image.pixels.foreach_get(stored)
    # Blender's first stored row is the bottom row of the picture.
    assert np.array_equal(np.round(stored[: 10 * 4] * 255).astype(np.uint8), rgba[-1].ravel())
    assert np.array_equal(pixels.to_srgb8(image), rgba)
    png = addon_env.sd_client.encode_png_rgba(10, 6, rgba.tobytes())
    assert np.array_equal(pixels.png_to_array(png), rgba)

    # Float images hold linear values: linear 0.21586 is sRGB 128/255.
    linear = bpy.data.images.new("linear", 2, 1, alpha=True, float_buffer=True)
    linear.pixels.foreach_set(np.array([0.21586, 0.21586, 0.21586, 1.0, 1.0, 0.0, 0.0, 0.5], dtype=np.float32))
    assert pixels.to_srgb8(linear).tolist() == [[[128, 128, 128, 255], [255, 0, 0, 128]]]


# --- acceptance 1: generate texture -----------------------------------------------------------------------------------


def test_generate_texture_matches_server_and_textures_a_cube(addon_env):
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    bpy.ops.mesh.primitive_cube_add(calc_uvs=False)
    cube = bpy.context.active_object
    assert len(cube.data.uv_layers) == 0
    before = image_names()

    assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}

    made = image_names() - before
    assert made == {PROMPT}, made  # named after the prompt; the live preview is gone
    image = bpy.data.images[PROMPT]
    assert tuple(image.size) == (64, 64)
    assert image.packed_file is not None
    got = blender_pixels(image)
    assert got[:, :, :3].std() > 1.0, "constant image"
    s = bpy.context.scene.sd_core
    expected = server_image(addon_env, "txt2img", base_payload(s))
    assert np.array_equal(got, expected), "differs from the server's image for the same seed"
    assert image["sd_seed"] == 123
    assert s.model_cfg and addon_env.runs.SESSION.run.task.request.cfg_scale is None  # the default: none sent
    assert "CFG scale: 7.5" in image["sd_parameters"]  # so the model's own (tiny test models: 7.5)

    material = cube.active_material
    assert material is not None
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    links = bsdf.inputs["Base Color"].links
    assert len(links) == 1 and links[0].from_node.type == "TEX_IMAGE" and links[0].from_node.image == image
    assert bsdf.outputs["BSDF"].links[0].to_node.type == "OUTPUT_MATERIAL"

    mesh = cube.data
    assert len(mesh.uv_layers) == 1
    uv = np.empty(len(mesh.loops) * 2, dtype=np.float32)
    mesh.uv_layers[0].data.foreach_get("uv", uv)
    uv = uv.reshape(-1, 2)
    for poly in mesh.polygons:  # box projection: each face of the cube shows the whole texture
        face = uv[poly.loop_start : poly.loop_start + poly.loop_total]
        assert np.allclose(face.min(axis=0), 0.0, atol=1e-5) and np.allclose(face.max(axis=0), 1.0, atol=1e-5)

    entry = s.history[0]
    assert (entry.prompt, entry.used_seed, entry.kind) == (PROMPT, 123, "txt2img")


def test_history_recall_restores_settings_and_seed(addon_env):
    s = bpy.context.scene.sd_core
    s.random_seed = True
    assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}
    used = s.history[0].used_seed
    made = bpy.data.images[PROMPT]
    assert made["sd_seed"] == used
    s.prompt, s.steps = "something else", 9
    assert bpy.ops.sdcore.history_recall(index=0) == {"FINISHED"}
    assert (s.prompt, s.steps, s.seed, s.random_seed) == (PROMPT, 4, used, False)
    assert s.model_cfg

    s.model_cfg, s.cfg_scale = False, 5.0  # a chosen CFG is recalled as chosen
    assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}
    s.model_cfg, s.cfg_scale = True, 7.0
    assert bpy.ops.sdcore.history_recall(index=0) == {"FINISHED"}
    assert (s.model_cfg, s.cfg_scale) == (False, 5.0)


def test_a_chosen_cfg_reaches_the_engine(addon_env):
    s = bpy.context.scene.sd_core
    s.model_cfg, s.cfg_scale, s.apply_material = False, 5.0, False
    assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}
    image = bpy.data.images[PROMPT]
    assert "CFG scale: 5.0" in image["sd_parameters"]
    assert np.array_equal(blender_pixels(image), server_image(addon_env, "txt2img", base_payload(s)))


def test_the_servers_loras_become_prompt_tags(addon_env):
    """The engine lists the server's LoRAs for the picker; a picked one is sent as a tag and applied by the server
    (the image is the server's for that tagged prompt); one the server cannot apply is its report, naming it (with
    the SDXL model, "bricks" itself: an SD1 LoRA)."""
    s = bpy.context.scene.sd_core
    s.apply_material = False
    assert addon_env.runs.SESSION.engine_for(bpy.context).loras() == ["bricks"]
    assert bpy.ops.sdcore.add_lora(name="bricks", weight=0.8) == {"FINISHED"}
    assert s.loras == "bricks:0.8"
    if SDXL:
        before = image_names()
        with pytest.raises(RuntimeError, match=r"The server refused the request: prompt: .*bricks"):
            bpy.ops.sdcore.generate_texture()
        assert image_names() == before
        s.loras = ""
        return
    assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}
    image = bpy.data.images[PROMPT]
    assert 'Lora hashes: "bricks: ' in image["sd_parameters"]
    tagged = dict(base_payload(s), prompt=f"{PROMPT} <lora:bricks:0.8>")
    assert np.array_equal(blender_pixels(image), server_image(addon_env, "txt2img", tagged))
    s.loras = "nosuch:1"
    with pytest.raises(RuntimeError, match=r"The server refused the request: prompt: .*'nosuch'"):
        bpy.ops.sdcore.generate_texture()
    s.loras = ""


def test_the_servers_models_are_a_list_and_a_chosen_one_makes_the_texture(addon_env, tmp_path):
    """A server with a models folder (the built-in model as "alpha", CFG 3; the tiny test model as "beta", 7.5): the
    panel lists its models; a chosen one makes the panel's generations with its own CFG (the infotext names both,
    the panel's label shows it) while the server keeps its own loaded model for its other clients; an unknown one
    is the server's report naming it."""
    import shutil

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copyfile(BUILTIN_FILE, folder / "alpha.safetensors")
    shutil.copyfile(MODEL, folder / "beta.safetensors")
    server = addon_env.sd_client.LocalServer(PYTHON, None, models_dir=str(folder))
    server.start()
    try:
        server.wait_ready(120)
        bpy.context.preferences.addons[ADDON].preferences.url = server.url
        s = bpy.context.scene.sd_core
        s.apply_material = False
        engine = addon_env.runs.SESSION.engine_for(bpy.context)
        assert engine.models() == ["alpha", "beta"] and engine.listed_cfg_scales == {"alpha": 3.0, "beta": 7.5}
        log: list = []
        context = types.SimpleNamespace(scene=bpy.context.scene, space_data=types.SimpleNamespace(type="IMAGE_EDITOR"))
        addon_env.ui.SDCORE_PT_image_editor.draw(types.SimpleNamespace(layout=RecordingLayout(log)), context)
        assert ("model", True, {"text": "", "icon": "FILE_3D", "placeholder": "The engine's model"}) in log
        assert ("sdcore.choose_model", True, {"text": "", "icon": "DOWNARROW_HLT"}) in log
        loaded = addon_env.sd_client.SDClient(server.url).options()["sd_model_checkpoint"]
        chosen = "beta" if not loaded.startswith("beta") else "alpha"
        assert bpy.ops.sdcore.choose_model(name=chosen) == {"FINISHED"} and s.model == chosen
        own = engine.listed_cfg_scales[chosen]
        assert addon_env.ui._model_cfg_text(s) == f"Model's CFG ({own:g})"
        assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}
        parameters = bpy.data.images[PROMPT]["sd_parameters"]
        assert re.search(f"Model: {chosen}(,|$)", parameters) and f"CFG scale: {own}," in parameters, parameters
        assert addon_env.sd_client.SDClient(server.url).options()["sd_model_checkpoint"] == loaded
        s.model = "nosuch"
        with pytest.raises(RuntimeError, match="The server refused the request: .*nosuch"):
            bpy.ops.sdcore.generate_texture()
    finally:
        bpy.context.scene.sd_core.model = ""
        server.stop()


def test_a_setting_beyond_the_engines_limits_from_a_script_is_the_engines_clear_report(addon_env):
    """The add-on does not restate the engine's limits: the server refuses (here a prompt over the one limits table's
    length), and the report names the field."""
    s = bpy.context.scene.sd_core
    s.prompt = "x" * 20_001
    before = image_names()
    with pytest.raises(RuntimeError, match=r"The server refused the request: prompt: .*20000"):
        bpy.ops.sdcore.generate_texture()
    assert image_names() == before and "prompt" in addon_env.runs.SESSION.last_error


def test_unpacked_textures_need_a_saved_file(addon_env, tmp_path):
    s = bpy.context.scene.sd_core
    s.pack = False
    before = image_names()
    with pytest.raises(RuntimeError, match=r"Save the \.blend file first"):
        bpy.ops.sdcore.generate_texture()
    assert image_names() == before
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}
    image = bpy.data.images[PROMPT]
    assert image.packed_file is None
    written = Path(bpy.path.abspath(image.filepath))
    assert written.parent == tmp_path / "sd_textures" and written.is_file()
    assert np.array_equal(decode_png(written.read_bytes()), blender_pixels(image))


# --- acceptance 3: the tick-driven flow and cancel --------------------------------------------------------------------


def start_texture_run(addon, steps: int):
    """What the panel's button starts, without the modal timer: the test calls `run.step()` itself."""
    s = bpy.context.scene.sd_core
    s.steps = steps
    request = addon.props.make_request(s, "txt2img")
    finish = addon.operators._texture_finish(bpy.context, request, s)
    return addon.runs.SESSION.start(bpy.context, request, "test", finish)


def test_tick_flow_progress_preview_result(addon_env):
    before = image_names()
    run = start_texture_run(addon_env, steps=40)
    run.task.poll_interval = 0.05  # 40 steps take about 0.1 s here: the UI's 0.2 s polls would see one preview
    states, fractions, previews = [], [], []
    while not run.step():
        states.append(run.task.state.value)
        fractions.append(run.task.fraction)
        preview = bpy.data.images.get(addon_env.runs.PREVIEW_NAME)
        if preview is not None:
            previews.append(blender_pixels(preview).tobytes())
        time.sleep(0.02)
    assert run.task.state.value == "done"
    assert states[0] == "submitted" and "running" in states
    assert fractions == sorted(fractions) and any(0.0 < f < 1.0 for f in fractions), fractions
    assert len(set(previews)) >= 2, "the preview image did not update during the run"
    assert image_names() - before == {PROMPT}  # the result arrived; the preview datablock is gone


def block_means(rgb: np.ndarray, cells: int) -> np.ndarray:
    """HxWx3 averaged over a cells x cells grid of equal blocks."""
    h, w = rgb.shape[:2]
    return rgb.reshape(cells, h // cells, cells, w // cells, 3).mean(axis=(1, 3))


def test_the_live_preview_is_large_and_looks_like_the_coming_texture(addon_env):
    """With the built-in model (whose latents SD1's fixed matrix shows as grey-blue noise): the panel's preview image
    is at least 128 px and, from the second half of the run on, follows the texture that arrives (correlation of
    8x8 block means, the latent grid of a 64 px texture)."""
    bpy.context.preferences.addons[ADDON].preferences.url = BUILTIN_URL
    s = bpy.context.scene.sd_core
    s.prompt, s.seamless, s.apply_material = "red and white vertical stripes", "XY", False
    run = start_texture_run(addon_env, steps=60)
    run.task.poll_interval = 0.05
    seen = []
    while not run.step():
        preview = bpy.data.images.get(addon_env.runs.PREVIEW_NAME)
        if preview is not None and run.task.step >= 30 and run.task.preview_serial > 0:
            seen.append((tuple(preview.size), blender_pixels(preview)[:, :, :3].astype(np.float64)))
        time.sleep(0.02)
    assert run.task.state.value == "done" and seen, "no preview in the second half of the run"
    size, last = seen[-1]
    assert min(size) >= 128, size
    texture = blender_pixels(run.images[0])[:, :, :3].astype(np.float64)
    score = np.corrcoef(block_means(last, 8).ravel(), block_means(texture, 8).ravel())[0, 1]
    np.save(OUT / "preview_last.npy", last.astype(np.uint8))
    assert score > 0.5, score


def test_cancel_leaves_nothing_and_server_idle(addon_env):
    before = image_names()
    run = start_texture_run(addon_env, steps=150)  # the server's limit: about 8 s here
    while run.task.state.value != "running":
        assert not run.step()
    addon_env.runs.SESSION.cancel()
    while not run.step():
        pass
    assert run.task.state.value == "cancelled"
    assert image_names() == before, "a cancelled run left datablocks behind"
    progress = client(addon_env).progress(skip_current_image=True)
    assert progress["state"]["job_count"] == 0 and progress["state"]["queue_pending"] == 0, progress
    bpy.context.scene.sd_core.steps = 4
    assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}
    assert image_names() - before == {PROMPT}


# --- acceptance 2: restyle and inpaint --------------------------------------------------------------------------------


def test_restyle_viewport_in_background_renders_the_camera(addon_env):
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 2
    scene.cycles.device = "CPU"
    scene.render.resolution_x = scene.render.resolution_y = 64
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    before = image_names()

    assert bpy.ops.sdcore.restyle_viewport() == {"FINISHED"}

    run = addon_env.runs.SESSION.run
    assert "rendered the camera with CYCLES" in run.label
    made = image_names() - before
    assert len(made) == 1 and next(iter(made)).startswith("Restyled")
    image = bpy.data.images[next(iter(made))]
    assert tuple(image.size) == (64, 64)
    init = run.task.request.image  # what the fallback render gave the engine
    assert init.shape == (64, 64, 3) and init.std() > 1.0, "the render is empty"
    s = scene.sd_core
    payload = dict(base_payload(s), init_images=[png_b64(addon_env, init)], denoising_strength=s.strength)
    expected = server_image(addon_env, "img2img", payload)
    got = blender_pixels(image)
    assert np.array_equal(got, expected), "not the server's img2img result for this render"
    assert not np.array_equal(got[:, :, :3], init), "img2img returned the render unchanged"
    # the panel's strength is a float32 (0.6000000238418579 as a double): the infotext shows what was typed
    assert re.search(r"Denoising strength: 0\.6(,|$)", image["sd_parameters"]), image["sd_parameters"]


def png_b64(addon, rgb: np.ndarray) -> str:
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return addon.sd_client.bytes_to_b64(addon.sd_client.encode_png_rgba(rgb.shape[1], rgb.shape[0], rgba.tobytes()))


@pytest.mark.parametrize("float_buffer", [False, True], ids=["byte", "float"])
def test_inpaint_keeps_opaque_pixels(addon_env, float_buffer):
    rng = np.random.default_rng(7)
    values = rng.random((64, 64, 4), dtype=np.float32)
    values[:, :, 3] = 1.0
    values[20:44, 16:48, 3] = 0.0  # the hole to fill
    source = bpy.data.images.new("holey", 64, 64, alpha=True, float_buffer=float_buffer)
    source.pixels.foreach_set(values[::-1].ravel())
    stored = np.empty(64 * 64 * 4, dtype=np.float32)
    source.pixels.foreach_get(stored)
    values = stored.reshape(64, 64, 4)[::-1]  # as stored: a byte image keeps 8 bits of each value
    before = image_names()

    assert bpy.ops.sdcore.inpaint_image(image="holey") == {"FINISHED"}

    made = image_names() - before
    assert made == {"Inpainted holey"}, made
    result = bpy.data.images["Inpainted holey"]
    assert result.is_float == float_buffer
    out = np.empty(64 * 64 * 4, dtype=np.float32)
    result.pixels.foreach_get(out)
    out = out.reshape(64, 64, 4)[::-1]
    opaque = values[:, :, 3] == 1.0
    assert np.array_equal(out[opaque][:, :3], values[opaque][:, :3]), "opaque pixels changed"
    hole = ~opaque
    assert np.all(out[:, :, 3] == 1.0)
    assert np.abs(out[hole][:, :3] - values[hole][:, :3]).mean() > 0.01, "the hole was not filled"


# --- acceptance 4: clear reports, Blender keeps running ---------------------------------------------------------------


def test_unreachable_server_is_a_clear_report(addon_env):
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.url = f"http://127.0.0.1:{free_port()}"
    before = image_names()
    with pytest.raises(RuntimeError, match="Cannot reach the sd-core server.*add-on preferences"):
        bpy.ops.sdcore.generate_texture()
    assert image_names() == before
    assert "Cannot reach" in addon_env.runs.SESSION.last_error  # what the panel shows
    prefs.url = URL  # Blender is still there and the next generation works
    assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}


def test_bad_model_path_is_a_clear_report(addon_env):
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.connection, prefs.python, prefs.model = "LOCAL", PYTHON, "/nonexistent/model.safetensors"
    with pytest.raises(RuntimeError, match="Model not found: /nonexistent/model.safetensors.*add-on preferences"):
        bpy.ops.sdcore.generate_texture()


def test_an_empty_model_field_starts_the_local_server_with_the_built_in_model(addon_env):
    """Empty means sd-core's built-in texture model, and the empty field says so (its placeholder)."""
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.connection, prefs.python, prefs.model = "LOCAL", PYTHON, ""
    log: list = []
    drawn = types.SimpleNamespace(layout=RecordingLayout(log), connection=prefs.connection)
    addon_env.preferences.SDCORE_AP_preferences.draw(drawn, bpy.context)
    assert ("model", True, {"placeholder": "Built-in texture model"}) in log
    s = bpy.context.scene.sd_core
    s.apply_material, s.prompt = False, "red and white vertical stripes"
    assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}
    engine = addon_env.runs.SESSION.engine
    assert engine.running and "the built-in texture model" in engine.describe()
    parameters = bpy.data.images[s.prompt]["sd_parameters"]
    assert "Model: default_model" in parameters and "CFG scale: 3.0" in parameters, parameters  # the built-in's own
    assert bpy.ops.sdcore.release() == {"FINISHED"}


def test_broken_model_reports_why_the_server_did_not_start(addon_env, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"this is not a checkpoint")
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.connection, prefs.python, prefs.model = "LOCAL", PYTHON, str(broken)
    with pytest.raises(RuntimeError, match="local sd-core server did not start.*broken.safetensors"):
        bpy.ops.sdcore.generate_texture()


def test_zero_size_image_is_a_clear_report(addon_env):
    missing = bpy.data.images.new("missing", 4, 4)
    missing.source, missing.filepath = "FILE", "/nonexistent/texture.png"
    with pytest.raises(RuntimeError, match="The image 'missing' has no pixels"):
        bpy.ops.sdcore.img2img_image(image="missing")
    with pytest.raises(RuntimeError, match="has no pixels"):
        bpy.ops.sdcore.inpaint_image(image="missing")


def test_in_process_without_torch_is_a_clear_report(addon_env):
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.connection, prefs.model = "INPROCESS", MODEL
    with pytest.raises(RuntimeError, match="In-process mode needs sd_core and torch"):
        bpy.ops.sdcore.generate_texture()


# --- the usual case: a local server the add-on starts, and Release ----------------------------------------------------


def test_local_server_generates_and_release_stops_it(addon_env):
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.connection, prefs.python, prefs.model = "LOCAL", PYTHON, MODEL
    assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}
    engine = addon_env.runs.SESSION.engine
    assert engine.running
    process = engine._server.process
    assert bpy.ops.sdcore.release() == {"FINISHED"}
    assert process.poll() is not None, "Release left the server running"
    assert addon_env.runs.SESSION.engine is None


class RecordingServer:
    """A stand-in A1111 server that answers every request with `{}` and records (method, path)."""

    def __init__(self) -> None:
        import http.server
        import threading

        calls = self.calls = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                calls.append((self.command, self.path))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = answer

            def log_message(self, *_args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_quitting_leaves_a_shared_server_its_model_and_stops_the_add_ons_own(addon_env):
    """Blender quitting (the add-on's exit hook) or another engine chosen in the preferences: a server at a URL is
    someone else's and keeps its model; the local server the add-on started is stopped. Release still unloads."""
    shared = RecordingServer()
    try:
        prefs = bpy.context.preferences.addons[ADDON].preferences
        prefs.connection, prefs.url = "SERVER", shared.url
        addon_env.runs.SESSION.engine_for(bpy.context)
        addon_env._release_at_exit()
        prefs.url = URL  # the same for a switch to another engine
        addon_env.runs.SESSION.engine_for(bpy.context)
        prefs.url = shared.url
        addon_env.runs.SESSION.engine_for(bpy.context)
        assert ("POST", "/sdapi/v1/unload-checkpoint") not in shared.calls, shared.calls
        assert bpy.ops.sdcore.release() == {"FINISHED"}  # asked for: the shared server unloads
        assert shared.calls.count(("POST", "/sdapi/v1/unload-checkpoint")) == 1, shared.calls
    finally:
        shared.close()
    prefs.connection, prefs.python, prefs.model = "LOCAL", PYTHON, MODEL
    assert bpy.ops.sdcore.test_connection() == {"FINISHED"}
    process = addon_env.runs.SESSION.engine._server.process
    addon_env._release_at_exit()
    assert process.wait(timeout=30) is not None and addon_env.runs.SESSION.engine is None


def test_panels_and_operators_are_registered(addon_env):
    for name in ("SDCORE_PT_image_editor", "SDCORE_PT_shader_editor", "SDCORE_PT_image_history"):
        assert hasattr(bpy.types, name)
    for op in (
        "generate_texture",
        "restyle_viewport",
        "restyle_render",
        "img2img_image",
        "inpaint_image",
        "cancel",
        "release",
        "size",
        "add_lora",
        "project_texture",
    ):
        assert hasattr(bpy.ops.sdcore, op)


def test_restyling_a_render_is_not_seamless_unless_asked(addon_env):
    """The panel's Seamless is for textures: Restyle Render/Viewport make an ordinary image with it on (tiling the
    render would turn the object into a full-frame pattern), unless the operator is asked for it."""
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 2
    scene.render.resolution_x = scene.render.resolution_y = 64
    scene.render.resolution_percentage = 100
    scene.sd_core.seamless = "XY"
    for operator in (bpy.ops.sdcore.restyle_render, bpy.ops.sdcore.restyle_viewport):
        assert operator() == {"FINISHED"}
        task = addon_env.runs.SESSION.run.task
        assert task.request.tiling == "" and "Tiling" not in task.result.infotexts[0], task.result.infotexts[0]
        assert operator(seamless=True) == {"FINISHED"}
        task = addon_env.runs.SESSION.run.task
        assert task.request.tiling == "xy" and "Tiling: xy" in task.result.infotexts[0], task.result.infotexts[0]


def test_restyle_render_and_restyle_image_keep_the_source_size(addon_env):
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 2
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 80, 64, 100
    before = image_names()
    assert bpy.ops.sdcore.restyle_render() == {"FINISHED"}
    (name,) = image_names() - before
    assert tuple(bpy.data.images[name].size) == (80, 64)

    odd = bpy.data.images.new("odd", 70, 50)  # not multiples of 8: generated at 72x48, scaled back
    odd.pixels.foreach_set(np.random.default_rng(3).random(70 * 50 * 4, dtype=np.float32))
    before = image_names()
    assert bpy.ops.sdcore.img2img_image(image="odd") == {"FINISHED"}
    assert image_names() - before == {"Restyled odd"}
    assert tuple(bpy.data.images["Restyled odd"].size) == (70, 50)
    task = addon_env.runs.SESSION.run.task
    assert task.request.width is None  # the engine's rule: the source's size to the nearest multiple of 8
    assert decode_png(task.result.images[0]).shape[:2] == (48, 72)


def test_seamless_both_axes_reaches_the_engine(addon_env):
    s = bpy.context.scene.sd_core
    s.seamless, s.apply_material = "XY", False
    assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}
    got = blender_pixels(bpy.data.images[PROMPT])
    assert np.array_equal(got, server_image(addon_env, "txt2img", dict(base_payload(s), tiling=True)))
    assert not np.array_equal(got, server_image(addon_env, "txt2img", base_payload(s)))


def test_seamless_textures_from_the_built_in_model(addon_env):
    """The artist's path with a model that draws what it is asked: seamless textures through the add-on, equal to
    the server's images; saved (rows top-down, RGB) with their prompts for the outer test to measure."""
    bpy.context.preferences.addons[ADDON].preferences.url = BUILTIN_URL
    s = bpy.context.scene.sd_core
    s.steps, s.seamless, s.apply_material = 20, "XY", False  # and the model's own CFG: 3 for this one
    server = addon_env.sd_client.SDClient(BUILTIN_URL, timeout=60)
    made = []
    for i, prompt in enumerate(BUILTIN_PROMPTS * 2):
        s.prompt, s.seed = prompt, 300 + i
        before = image_names()
        assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}
        (name,) = image_names() - before  # a repeated prompt gets a new image ("... .001")
        got = blender_pixels(bpy.data.images[name])
        expected = server.txt2img(dict(base_payload(s), tiling=True))["images"][0]
        assert np.array_equal(got, decode_png(addon_env.sd_client.b64_to_bytes(expected))), prompt
        assert "CFG scale: 3.0" in bpy.data.images[name]["sd_parameters"]
        np.save(OUT / f"texture{i}.npy", got[:, :, :3])
        made.append({"file": f"texture{i}.npy", "prompt": prompt})
    (OUT / "textures.json").write_text(json.dumps(made))
    assert addon_env.ui._model_cfg_text() == "Model's CFG (3)"  # what the panel shows beside the toggle


def test_a_production_size_texture_takes_two_passes_with_progress_and_wraps(addon_env, monkeypatch):
    """The panel's 2K/4K: the first pass at the panel's size, then the hires fix's wrap-aware enlargement and tiled
    second pass (the server's `sd_core_tile`). The same path at a size a test affords: "2K" made 512 px here, from
    256 px in 128 px tiles. Progress runs across both passes; the texture is saved for the outer test's seam check."""
    monkeypatch.setitem(addon_env.props.PRODUCTION_SIDES, "2K", 512)
    bpy.context.preferences.addons[ADDON].preferences.url = BUILTIN_URL
    s = bpy.context.scene.sd_core
    s.prompt, s.seamless, s.apply_material, s.texture_size = "large black and white checkerboard", "XY", False, "2K"
    s.width = s.height = 256
    run = start_texture_run(addon_env, steps=12)
    run.task.poll_interval = 0.05
    assert (run.task.request.hires_scale, run.task.request.tile) == (2.0, (128, 128, 32))
    assert run.task.request.hires_steps == 5  # 12 steps x strength 0.4: the second pass refines
    seen = []
    while not run.step():
        seen.append((run.task.phase, run.task.phases, run.task.fraction, run.task.step))
        time.sleep(0.02)
    assert run.task.state.value == "done", run.task.error
    phases = {(phase, phases) for phase, phases, _, step in seen if step}
    assert phases == {(1, 2), (2, 2)}, phases  # both passes reported
    fractions = [f for _, _, f, _ in seen]
    assert fractions == sorted(fractions)
    first = [f for phase, _, f, step in seen if phase == 1 and step]
    second = [f for phase, _, f, step in seen if phase == 2 and step]
    assert max(first) <= 0.5 + 1e-9 and 0.5 <= min(second) and max(second) > 0.6, (first, second)
    image = run.images[0]
    assert tuple(image.size) == (512, 512)
    parameters = image["sd_parameters"]
    assert "Hires upscale: 2.0" in parameters and "Tiling: xy" in parameters and "Size: 256x256" in parameters
    assert "Tile size: 128x128, Tile overlap: 32" in parameters and "Hires steps: 5" in parameters, parameters
    np.save(OUT / "production.npy", blender_pixels(image)[:, :, :3])


def pbr_wiring(material) -> dict:
    """What feeds the Principled BSDF's Normal and Roughness and the output's Displacement, followed back to the
    images: {"normal": (image, normal map space), "roughness": image, "height": image, "displacement": scale}."""
    nodes = material.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    (normal_link,) = bsdf.inputs["Normal"].links
    normal_map = normal_link.from_node
    assert normal_map.type == "NORMAL_MAP"
    (normal_tex,) = [link.from_node for link in normal_map.inputs["Color"].links]
    (rough_link,) = bsdf.inputs["Roughness"].links
    output = bsdf.outputs["BSDF"].links[0].to_node
    (disp_link,) = output.inputs["Displacement"].links
    displacement = disp_link.from_node
    assert displacement.type == "DISPLACEMENT" and normal_tex.type == "TEX_IMAGE"
    (height_tex,) = [link.from_node for link in displacement.inputs["Height"].links]
    return {
        "normal": (normal_tex.image, normal_map.space),
        "roughness": rough_link.from_node.image,
        "height": height_tex.image,
        "base": bsdf.inputs["Base Color"].links[0].from_node.image,
    }


def test_pbr_maps_from_a_seamless_texture_are_wired_into_the_material(addon_env):
    """Make PBR Maps on a texture whose infotext says it tiles: height, normal and roughness images (Non-Color), the
    maps `sd_core.pbr` makes of its pixels with wrap-around, wired into the cube's Principled BSDF."""
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    u = np.arange(64)
    wave = (0.5 + 0.4 * np.sin(2 * np.pi * u / 32))[None, :] * np.ones((64, 1))  # tiles every 32 px
    rgba = np.stack([wave, wave, wave, np.ones_like(wave)], axis=-1)
    texture = addon_env.pixels.new_image("bark", np.round(rgba * 255).astype(np.uint8))
    texture["sd_parameters"] = "bark\nSteps: 4, Sampler: Euler, Seed: 1, Size: 64x64, Tiling: xy"
    assert bpy.ops.sdcore.pbr_maps(image="bark") == {"FINISHED"}
    wired = pbr_wiring(cube.active_material)
    assert wired["base"] == texture and wired["normal"][1] == "TANGENT"
    expected = addon_env.sd_pbr.pbr_maps(addon_env.pixels.to_srgb8(texture), seamless="xy", strength=4.0)
    for name, image in (("normal", wired["normal"][0]), ("roughness", wired["roughness"]), ("height", wired["height"])):
        assert image.name == f"bark {name}" and image.colorspace_settings.name == "Non-Color"
        assert image.packed_file is not None
        got = blender_pixels(image)[:, :, :3].astype(np.float64) / 255
        want = expected[name] if name == "normal" else np.repeat(expected[name][:, :, None], 3, axis=2)
        assert np.abs(got - want).max() <= 0.5 / 255 + 1e-6, name
    normal = blender_pixels(wired["normal"][0])[:, :, :3].astype(np.float64) / 255 * 2 - 1
    assert np.abs(normal[:, 0] - normal[:, 32]).max() < 2 / 255  # the wrap: column 0 is like any other
    assert normal[:, 0, 0].mean() < -0.2 and normal[:, 16, 0].mean() > 0.2  # rising: leans left; falling: right
    again = len(bpy.data.images)
    assert bpy.ops.sdcore.pbr_maps(image="bark") == {"FINISHED"}  # again: the same nodes, new maps
    assert len(bpy.data.images) == again + 3 and pbr_wiring(cube.active_material)["base"] == texture


def test_generate_texture_with_pbr_maps_wires_them(addon_env):
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    bpy.ops.mesh.primitive_cube_add()
    s = bpy.context.scene.sd_core
    s.pbr, s.seamless = True, "XY"
    before = image_names()
    assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}
    assert image_names() - before == {PROMPT} | {f"{PROMPT} {name}" for name in ("height", "normal", "roughness")}
    wired = pbr_wiring(bpy.context.active_object.active_material)
    assert wired["base"].name == PROMPT and wired["height"].name == f"{PROMPT} height"


def test_connection_check_reports_the_engine(addon_env):
    assert bpy.ops.sdcore.test_connection() == {"FINISHED"}
    bpy.context.preferences.addons[ADDON].preferences.url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RuntimeError, match="Cannot reach"):
        bpy.ops.sdcore.test_connection()


class RecordingLayout:
    """Stands in for a panel's UILayout (panels do not draw in background mode): records each property and
    operator with whether it would be enabled, as Blender greys out a row whose `enabled` is off."""

    def __init__(self, log: list, parent=None) -> None:
        self.log, self.parent, self.enabled, self.alert = log, parent, True, False

    def active(self) -> bool:
        return self.enabled and (self.parent is None or self.parent.active())

    def row(self, **_kwargs):
        return RecordingLayout(self.log, self)

    column = box = row

    def prop(self, _data, name, **kwargs) -> None:
        self.log.append((name, self.active(), kwargs))

    def operator_menu_enum(self, idname, name, **kwargs) -> None:
        self.log.append((f"{idname}.{name}", self.active(), kwargs))

    def operator(self, idname, **kwargs):
        self.log.append((idname, self.active(), kwargs))
        return types.SimpleNamespace()

    def label(self, **_kwargs) -> None:
        pass

    progress = template_icon = label


def test_panel_greys_out_cfg_while_the_models_own_is_used(addon_env):
    s = bpy.context.scene.sd_core
    context = types.SimpleNamespace(scene=bpy.context.scene, space_data=types.SimpleNamespace(type="IMAGE_EDITOR"))
    drawn = {}
    for model_cfg in (True, False):
        s.model_cfg = s.random_seed = model_cfg
        log: list = []
        panel = types.SimpleNamespace(layout=RecordingLayout(log))
        addon_env.ui.SDCORE_PT_image_editor.draw(panel, context)
        drawn[model_cfg] = {name: (enabled, kwargs) for name, enabled, kwargs in log}
    assert drawn[True]["cfg_scale"][0] is False and drawn[False]["cfg_scale"][0] is True
    assert drawn[True]["model_cfg"] == (True, {"toggle": True, "text": addon_env.ui._model_cfg_text()})
    assert addon_env.ui._model_cfg_text().startswith("Model's CFG")  # "(3)" once the engine knows the model's value
    assert drawn[True]["seed"][0] is False and drawn[False]["seed"][0] is True  # as 'Random' does for the seed


def test_size_menu_offers_the_models_sizes_and_sets_width_and_height(addon_env):
    """SD1's sizes until the engine has seen the model; then the model's own: SDXL's training sizes for an SDXL
    model. Picking one sets the panel's width and height, and a texture is made at that size."""
    s = bpy.context.scene.sd_core
    context = types.SimpleNamespace(scene=bpy.context.scene, space_data=types.SimpleNamespace(type="IMAGE_EDITOR"))
    log: list = []
    addon_env.ui.SDCORE_PT_image_editor.draw(types.SimpleNamespace(layout=RecordingLayout(log)), context)
    assert ("sdcore.size.size", True, {"text": "", "icon": "PRESET"}) in log

    def offered():
        return [tuple(int(v) for v in key.split("x")) for key, _, _ in addon_env.operators._size_items(None, None)]

    addon_env.runs.SESSION.release()
    assert offered() == [(512, 512), (768, 512), (512, 768)]
    assert bpy.ops.sdcore.test_connection() == {"FINISHED"}  # the engine meets the model
    sizes = offered()
    assert sizes == (SDXL_SIZES if SDXL else [(512, 512), (768, 512), (512, 768)])
    width, height = sizes[-1] if not SDXL else (832, 1216)
    assert bpy.ops.sdcore.size(size=f"{width}x{height}") == {"FINISHED"}
    assert (s.width, s.height) == (width, height)
    if SDXL:  # the tiny SDXL model makes a texture at one of its sizes quickly
        s.steps = 1
        before = image_names()
        assert bpy.ops.sdcore.generate_texture() == {"FINISHED"}
        (made,) = image_names() - before
        assert tuple(bpy.data.images[made].size) == (width, height)
        assert f"Size: {width}x{height}" in bpy.data.images[made]["sd_parameters"]


def test_every_icon_the_ui_names_exists_in_this_blender(addon_env):
    """Icons come and go between Blender versions; a missing one breaks a panel's drawing."""
    known = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())
    folder = Path(addon_env.__file__).parent
    used = {m for f in folder.glob("*.py") for m in re.findall(r'icon="([A-Z0-9_]+)"', f.read_text())}
    assert used and used <= known, sorted(used - known)
