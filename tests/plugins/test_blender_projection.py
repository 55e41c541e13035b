"""Project Texture's geometry in real Blender (bpy 5.0 and 4.2 LTS): the depth the ControlNet gets, visibility,
baking, the coverage mask and the next camera's inpaint mask. No server or model: the checks in
tests/plugins/blender_runner/bpy_projection_checks.py project a synthetic picture. The depth map they make is
compared here with the engine's own `sd_core.controlnet.preprocess.depth_map` (which needs torch, absent in bpy's
venvs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import real_hosts

from sd_core.controlnet import preprocess

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "plugins" / "blender_runner" / "bpy_projection_checks.py"
OPERATOR_RUNNER = REPO / "tests" / "plugins" / "blender_runner" / "bpy_projection_operator_checks.py"
BUILDER = REPO / "scripts" / "build_blender_addon.py"


@pytest.mark.host("blender")
@pytest.mark.parametrize("version", list(real_hosts.BLENDER_VENVS))
def test_projection_geometry_in_blender(version, tmp_path):
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        BLENDER_USER_RESOURCES=str(tmp_path / "blender_user"),
        SDCORE_TEST_OUT=str(tmp_path),
    )
    cmd = [
        str(real_hosts.blender_python(version)),
        *("-m", "pytest", "-q", "-rA", "--noconftest", "-p", "no:cacheprovider"),
        *("--rootdir", str(RUNNER.parent), str(RUNNER)),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=RUNNER.parent, timeout=600)
    assert done.returncode == 0, f"Blender {version} checks failed:\n{done.stdout[-12000:]}\n{done.stderr[-4000:]}"
    assert "7 passed" in done.stdout.splitlines()[-1], done.stdout[-2000:]
    depth = np.load(tmp_path / "planes_depth.npy")
    control = np.load(tmp_path / "planes_control.npy")
    np.testing.assert_array_equal(preprocess.depth_map(depth), control)  # the add-on's map is the engine's


@pytest.fixture(scope="module")
def projection_server(tmp_path_factory):
    """A server with the tiny SD1 model and a tiny random SD1 ControlNet in its `--controlnet-dir` (standing in for a
    depth ControlNet: the geometry does not depend on what the net learned)."""
    from controlnet_fixtures import write_controlnet_file
    from server_utils import start_server, tiny_checkpoint

    root = tmp_path_factory.mktemp("projection_server")
    write_controlnet_file(root / "ControlNet" / "control_tiny_depth.safetensors")
    server = start_server(
        tiny_checkpoint(root / "tiny.safetensors"), extra_args=("--controlnet-dir", str(root / "ControlNet"))
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def projection_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("projection_zip")
    cmd = [sys.executable, str(BUILDER), "--blender-python", str(real_hosts.blender_python("5.0")), "--output-dir"]
    done = subprocess.run([*cmd, str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.mark.server
@pytest.mark.host("blender")
@pytest.mark.parametrize("version", list(real_hosts.BLENDER_VENVS))
def test_project_texture_operator_in_blender(version, projection_server, projection_zip, tmp_path):
    """AC2: Project Texture from a camera, then a second camera, in real Blender against a real server."""
    from sd_core.client import SDClient

    names = SDClient(projection_server.url).request("GET", "/controlnet/model_list")["model_list"]
    assert len(names) == 1 and names[0].startswith("control_tiny_depth")
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        BLENDER_USER_RESOURCES=str(tmp_path / "blender_user"),
        SDCORE_TEST_URL=projection_server.url,
        SDCORE_TEST_ZIP=str(projection_zip),
        SDCORE_TEST_CONTROLNET=names[0],
    )
    cmd = [
        str(real_hosts.blender_python(version)),
        *("-m", "pytest", "-q", "-rA", "-s", "--noconftest", "-p", "no:cacheprovider"),
        *("--rootdir", str(OPERATOR_RUNNER.parent), str(OPERATOR_RUNNER)),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=OPERATOR_RUNNER.parent, timeout=600)
    assert done.returncode == 0, f"Blender {version} checks failed:\n{done.stdout[-12000:]}\n{done.stderr[-4000:]}"
    assert "5 passed" in done.stdout.splitlines()[-1], done.stdout[-2000:]
    print("\n".join(line for line in done.stdout.splitlines() if "mean abs diff" in line))  # the figures (-s)
