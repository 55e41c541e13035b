#!/usr/bin/env bash
# The project's test command (README "Tests"): installs everything the tests need, pinned for a CPU machine, then
# runs the linters (ruff, import-linter), the engine's tests under numpy 1.26 (what bpy needs), then the whole test suite.
# CI (.ci/run) calls exactly this. Extra arguments go to the main pytest run (e.g. -m "not slow").
#
# Needs: Python 3.11 (the bpy wheels need it; PYTHON=... picks the interpreter), apt-get (with sudo unless root) for
# Debian's Krita, network access for pip and apt, and about 3 GB of disk for the hosts and the venvs (the two bpy
# venvs 1 GB each, Krita with its Qt/KDE libraries and Xvfb up to 0.7 GB, the numpy-1.26 venv 0.1 GB).
# Takes about 6 minutes on a 2-core x86 machine with everything installed (measured 5 min 38 s, 5 min 14 s of it the
# whole suite), plus about 5 minutes for tests/engine/test_sdxl_full.py (full-size SDXL, peak RSS 10.4 GiB) and about
# 2.5 for tests/batch (local Ray clusters of 2 CPUs, from the test extra's ray[data]); a first run adds the downloads
# and installs.
#
# Every host test runs here: SD_CORE_REQUIRE_HOSTS=1 makes a missing Krita or bpy fail its tests instead of skipping
# them (tests/helpers/real_hosts.py), so a skipped host test can never pass for a run. A plain `pytest -m "not host"`
# needs only `pip install -e ".[test,server]"`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
export SD_CORE_REQUIRE_HOSTS=1

echo "== [1/6] installing torch (pinned CPU wheel) =="
# torch first and pinned, so nothing pulls the multi-GB CUDA build.
$PY -m pip install -q "torch==2.13.0"
echo "== [2/6] installing sd-core with its test and server extras =="
$PY -m pip install -q -e ".[test,server]"
echo "== [3/6] installing the real hosts: Krita (Debian, Xvfb) and the bpy venvs =="
# Real hosts for the plugin tests: Debian's Krita (+ Xvfb) and Blender's bpy wheels in their own venvs.
bash scripts/install_krita.sh
bash scripts/install_bpy.sh

echo "== [4/6] lint: ruff check, ruff format --check, the import contracts (import-linter) =="
$PY -m ruff check .
$PY -m ruff format --check .
# the layering contracts in pyproject.toml [tool.importlinter]; run through $PY, so a venv's import-linter is used
$PY -c 'import sys; from importlinter.cli import lint_imports_command; sys.argv[0] = "lint-imports"; lint_imports_command()' --no-cache
echo "== [5/6] engine tests under numpy 1.26 (bpy's numpy) =="
# The engine must also work with numpy 1.26 (bpy's numpy): a venv over the same packages with numpy 1.26. $PY's
# site-packages join through a .pth file, after the venv's own (so its numpy wins); --system-site-packages would
# reach only the base interpreter's packages, missing torch when $PY is itself a venv.
if [ ! -x .venv-np126/bin/python ]; then
    $PY -m venv .venv-np126
fi
main_sites=$($PY -c 'import sysconfig; print(repr(sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})))')
np_site=$(.venv-np126/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo "import site; list(map(site.addsitedir, $main_sites))" > "$np_site/sd-core-main-env.pth"
.venv-np126/bin/python -m pip install -q "numpy==1.26.4"
.venv-np126/bin/python -c 'import numpy, sys; sys.exit(numpy.__version__ != "1.26.4")'
.venv-np126/bin/python -m pytest -q -p no:cacheprovider tests/engine/test_images.py tests/engine/test_tiling.py \
    tests/engine/test_loader.py tests/engine/test_txt2img_parity.py tests/engine/test_image_modes.py \
    tests/engine/test_pnginfo.py -k "not every_sampler"

echo "== [6/6] the whole test suite =="
# The whole suite last, so its summary is the run's closing line.
$PY -m pytest "$@"
