"""The rule for a missing host (tests/helpers/real_hosts.py, applied by tests/conftest.py to `host` tests): skip with
a reason naming what is missing and its install script, or fail under SD_CORE_REQUIRE_HOSTS=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import real_hosts

HERE = Path(__file__).resolve().parent


@pytest.fixture
def no_krita(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH: no krita, kritarunner, xvfb-run, xauth


@pytest.fixture
def no_blender(monkeypatch, tmp_path):
    monkeypatch.setattr(real_hosts, "BLENDER_VENVS", {"5.0": tmp_path / "bpy50", "4.2": tmp_path / "bpy42"})


def test_missing_krita_skips_naming_the_tools_and_the_install_script(no_krita, monkeypatch):
    monkeypatch.delenv("SD_CORE_REQUIRE_HOSTS", raising=False)
    assert real_hosts.missing("krita") == [f"{tool} not on PATH" for tool in real_hosts.KRITA_TOOLS]
    with pytest.raises(pytest.skip.Exception, match=r"krita not on PATH.*bash scripts/install_krita\.sh"):
        real_hosts.require("krita")


def test_missing_blender_skips_naming_the_venvs_and_the_install_script(no_blender, monkeypatch, tmp_path):
    monkeypatch.setenv("SD_CORE_REQUIRE_HOSTS", "0")
    with pytest.raises(pytest.skip.Exception, match=r"bpy50/bin/python.*bpy42/bin/python.*install_bpy\.sh"):
        real_hosts.require("blender")


@pytest.mark.parametrize("host", ["krita", "blender"])
def test_missing_host_fails_when_hosts_are_required(host, no_krita, no_blender, monkeypatch):
    monkeypatch.setenv("SD_CORE_REQUIRE_HOSTS", "1")
    with pytest.raises(pytest.fail.Exception, match="SD_CORE_REQUIRE_HOSTS=1"):
        real_hosts.require(host)


def test_present_host_neither_skips_nor_fails(monkeypatch, tmp_path):
    venvs = {"5.0": tmp_path / "bpy50", "4.2": tmp_path / "bpy42"}
    for venv in venvs.values():
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").touch()
    monkeypatch.setattr(real_hosts, "BLENDER_VENVS", venvs)
    monkeypatch.setenv("SD_CORE_REQUIRE_HOSTS", "1")
    assert real_hosts.missing("blender") == []
    real_hosts.require("blender")


def test_unknown_host_is_an_error():
    with pytest.raises(ValueError, match="unknown host"):
        real_hosts.missing("gimp")


# test_krita_real.py: the API and the whole-app smoke, each with SD1 and SDXL; the zip; the layout at two screens
KRITA_REAL_TESTS = 7


@pytest.mark.parametrize("required", ["", "1"])
def test_the_marker_applies_the_rule_before_any_fixture(required, tmp_path):
    """The real Krita tests, run with Krita off PATH: all skipped with the reason, or all failed when required; either
    way at once, before their fixtures build a model or install pytest for Krita."""
    env = dict(os.environ, PATH=str(tmp_path), SD_CORE_REQUIRE_HOSTS=required)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rsE", "-p", "no:cacheprovider", str(HERE / "test_krita_real.py")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parents[1], timeout=300)
    summary = done.stdout.splitlines()[-1]
    n = KRITA_REAL_TESTS
    if required:
        assert done.returncode == 1 and f"{n} errors" in summary, done.stdout
        assert done.stdout.count("SD_CORE_REQUIRE_HOSTS=1: a missing host fails") >= n, done.stdout
    else:
        assert done.returncode == 0 and f"{n} skipped" in summary, done.stdout
        assert f"SKIPPED [{n}]" in done.stdout and "kritarunner not on PATH" in done.stdout, done.stdout
        assert "install it with `bash scripts/install_krita.sh`" in done.stdout, done.stdout
