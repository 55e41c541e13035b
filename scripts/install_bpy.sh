#!/usr/bin/env bash
# Creates the virtual environments that host Blender (the `bpy` wheel from PyPI) for the add-on tests:
#   .venv-bpy50  bpy 5.0.1
#   .venv-bpy42  bpy 4.2 LTS
# Separate from the main environment because bpy needs Python 3.11 and numpy < 2, while the engine's environment
# has numpy 2. Idempotent: a venv whose stamp matches its requirements is left alone (a second run takes a second).
# Usage: bash scripts/install_bpy.sh [50|42 ...]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "install_bpy.sh: the bpy wheels need Python 3.11; $PY is $("$PY" --version 2>&1) (set PYTHON=...)" >&2
    exit 1
fi

declare -A BPY=([50]="bpy==5.0.1" [42]="bpy==4.2.23")
# pytest runs the checks inside Blender's Python; numpy < 2 because bpy is built against numpy 1.x.
COMMON=("numpy>=1.26,<2" "pytest>=8")

install_one() {
    local tag=$1 dir=".venv-bpy$1"
    local want="${BPY[$1]} ${COMMON[*]}"
    if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.sd-core-stamp" 2>/dev/null)" = "$want" ]; then
        echo "install_bpy.sh: $dir is up to date ($want)"
        return
    fi
    echo "install_bpy.sh: creating $dir ($want)"
    rm -rf "$dir"
    "$PY" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "${BPY[$tag]}" "${COMMON[@]}"
    "$dir/bin/python" -c 'import bpy; print("install_bpy.sh: Blender", bpy.app.version_string)'
    echo "$want" > "$dir/.sd-core-stamp"
}

tags=("$@")
[ ${#tags[@]} -gt 0 ] || tags=(50 42)
for tag in "${tags[@]}"; do
    [ -n "${BPY[$tag]:-}" ] || { echo "install_bpy.sh: unknown version tag '$tag' (use 50 or 42)" >&2; exit 2; }
    install_one "$tag"
done
