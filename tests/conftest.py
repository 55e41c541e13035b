"""Markers with behaviour (pyproject registers them all):

- `host("krita")` / `host("blender")`: needs that real application; when it is missing the test is skipped with the
  install command, or fails under SD_CORE_REQUIRE_HOSTS=1 (scripts/test.sh, CI). See tests/helpers/real_hosts.py.
- `cuda`: needs a CUDA device; skipped where torch sees none.

Both are checked here, before the test's fixtures are set up, so a missing host costs no model or server.
"""

from __future__ import annotations

import pytest
import real_hosts


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("host"):
        if not mark.args:
            pytest.fail(f"{item.nodeid}: name the host, e.g. @pytest.mark.host('krita')", pytrace=False)
        for host in mark.args:
            real_hosts.require(host)
    if item.get_closest_marker("cuda") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs CUDA")
