#!/usr/bin/env bash
# Installs what the real-Krita plugin tests need (tests/plugins/test_krita_real.py): Debian's Krita with Python scripting,
# PyQt5 for Krita's embedded Python, and Xvfb/xauth for the whole-application test. Idempotent: does nothing when
# everything is already there, so the test command can call it on every run.
set -euo pipefail

have_all() {
    command -v krita >/dev/null && command -v kritarunner >/dev/null && command -v xvfb-run >/dev/null \
        && command -v xauth >/dev/null && /usr/bin/python3 -c "import PyQt5.QtCore" 2>/dev/null
}

if have_all; then
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "install_krita.sh: apt-get not found; install krita (5.1+, with Python scripting), python3-pyqt5," \
        "xvfb and xauth with your package manager" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends krita python3-pyqt5 xvfb xauth

if ! have_all; then
    echo "install_krita.sh: installed, but krita/kritarunner/xvfb-run/PyQt5 are still missing" >&2
    exit 1
fi
