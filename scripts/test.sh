#!/usr/bin/env bash
# The project's test command (README "Tests"): installs everything the tests need, pinned for a CPU machine, then
# runs the linter, the engine's tests under numpy 1.26 (what bpy needs), then the whole test suite.
# CI (.ci/run) calls exactly this. Extra arguments go to the main pytest run (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first and pinned, so nothing pulls the multi-GB CUDA build.
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[test,server]"
# Real hosts for the plugin tests: Debian's Krita (+ Xvfb) and Blender's bpy wheels in their own venvs.
bash scripts/install_krita.sh
bash scripts/install_bpy.sh

$PY -m ruff check .
$PY -m ruff format --check .
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

# The whole suite last, so its summary is the run's closing line.
$PY -m pytest "$@"
