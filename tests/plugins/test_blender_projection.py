"""Project Texture's geometry in real Blender (bpy 5.0 and 4.2 LTS): the depth the ControlNet gets, visibility,
baking, the coverage mask and the next camera's inpaint mask. No server or model: the checks in
tests/plugins/blender_runner/bpy_projection_checks.py project a synthetic picture. The depth map they make is
compared here with the engine's own `sd_core.controlnet.preprocess.depth_map` (which needs torch, absent in bpy's
venvs)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import real_hosts

from sd_core.controlnet import preprocess

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "plugins" / "blender_runner" / "bpy_projection_checks.py"


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
    assert "5 passed" in done.stdout.splitlines()[-1], done.stdout[-2000:]
    depth = np.load(tmp_path / "planes_depth.npy")
    control = np.load(tmp_path / "planes_control.npy")
    np.testing.assert_array_equal(preprocess.depth_map(depth), control)  # the add-on's map is the engine's
