#!/usr/bin/env bash
# The project's test command (README "Tests"): installs everything the tests need, pinned for a CPU machine, then
# runs the linter and the whole test suite. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch first and pinned, so nothing pulls the multi-GB CUDA build.
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0"
$PY -m pip install -q --disable-pip-version-check -e ".[test,server]"

$PY -m ruff check .
$PY -m ruff format --check .
$PY -m pytest "$@"
