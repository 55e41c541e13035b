"""The real hosts the plugin tests drive (Krita, Blender's `bpy` wheels), and what a missing one means.

Tests that need one carry `@pytest.mark.host("krita")` or `@pytest.mark.host("blender")`; tests/conftest.py calls
`require` for each before the test's fixtures are set up. A missing host skips the test with a reason that names
what is missing and the script that installs it, so that a plain `pytest` passes on a machine with only the Python
packages. With SD_CORE_REQUIRE_HOSTS=1 (scripts/test.sh and CI set it) a missing host fails the test instead: there,
a skipped host test must never count as a pass.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REQUIRE_ENV = "SD_CORE_REQUIRE_HOSTS"

# The bpy venvs made by scripts/install_bpy.sh; the add-on test builds with 5.0 and validates with 4.2, so both.
BLENDER_VENVS = {"5.0": REPO / ".venv-bpy50", "4.2": REPO / ".venv-bpy42"}
KRITA_TOOLS = ("krita", "kritarunner", "xvfb-run", "xauth")
INSTALL = {
    "krita": "`bash scripts/install_krita.sh` (Debian/Ubuntu: Krita, PyQt5, Xvfb)",
    "blender": "`bash scripts/install_bpy.sh` (Python 3.11: the bpy 5.0 and 4.2 venvs)",
}


def hosts_required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def krita_importer() -> Path:
    """Krita's own plugin importer (Tools > Scripts > Import Python Plugin from File), in Krita's install."""
    prefix = Path(shutil.which("krita") or "/usr/bin/krita").resolve().parents[1]
    return prefix / "share" / "krita" / "pykrita" / "plugin_importer" / "plugin_importer.py"


def blender_python(version: str) -> Path:
    return BLENDER_VENVS[version] / "bin" / "python"


def missing(host: str) -> list[str]:
    """What `host` ("krita" or "blender") lacks on this machine; empty when it is all there."""
    if host == "krita":
        gone = [f"{tool} not on PATH" for tool in KRITA_TOOLS if shutil.which(tool) is None]
        if shutil.which("krita") is not None and not krita_importer().is_file():
            gone.append(f"Krita's plugin importer {krita_importer()}")
        return gone
    if host == "blender":
        return [f"{blender_python(v)} (bpy {v})" for v in BLENDER_VENVS if not blender_python(v).exists()]
    raise ValueError(f"unknown host {host!r}: use 'krita' or 'blender'")


def require(host: str) -> None:
    """Return if `host` is installed; otherwise skip the test, or fail it under SD_CORE_REQUIRE_HOSTS=1."""
    gone = missing(host)
    if not gone:
        return
    reason = (
        f"real {host.capitalize()} host missing ({'; '.join(gone)}): install it with {INSTALL[host]}, "
        f"or leave host tests out with -m 'not host'"
    )
    if hosts_required():
        pytest.fail(f"{reason} [{REQUIRE_ENV}=1: a missing host fails]", pytrace=False)
    pytest.skip(reason)
