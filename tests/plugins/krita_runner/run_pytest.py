"""kritarunner entry point: run pytest on `inside_krita.py` inside Krita and exit with pytest's status.

    QT_QPA_PLATFORM=offscreen PYTHONPATH=<pytest dir>:<krita_plugin>:<this dir> kritarunner -s run_pytest -f main

kritarunner always exits 0 and sometimes hangs after its script, so the status leaves through `os._exit`, and a
watchdog thread ends the process if anything inside hangs (SD_KRITA_WATCHDOG seconds).
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
WATCHDOG_EXIT = 3
CRASH_EXIT = 4


def _watchdog() -> None:
    print("run_pytest: watchdog fired, Krita or a test hung; thread stacks follow", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr)
    os._exit(WATCHDOG_EXIT)


def main(*_args: object) -> None:
    timer = threading.Timer(float(os.environ.get("SD_KRITA_WATCHDOG", "900")), _watchdog)
    timer.daemon = True
    timer.start()
    code = CRASH_EXIT
    try:
        import pytest

        args = [
            os.path.join(HERE, "inside_krita.py"),
            "-p", "no:cacheprovider",
            "--rootdir", HERE,
            "--confcutdir", HERE,  # never load the repository's conftest files (torch) into Krita
            "-o", "addopts=",
            "-v", "-ra",
        ]  # fmt: skip
        args += os.environ.get("SD_KRITA_PYTEST_ARGS", "").split()
        code = int(pytest.main(args))
    except BaseException:  # report anything, then leave with a failure status
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
