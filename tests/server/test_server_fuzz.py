"""Schemathesis (property-based fuzzing from /openapi.json) against a real server: no request may cause a 5xx, every
answer must match the documented status codes, content type and schema, and the server must still work afterwards.

The server runs with tiny caps (64x64 pixels, 2 steps, batch 1) so that the requests that do generate stay cheap.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from server_utils import SIZE, start_server, tiny_checkpoint

from sd_core.client import SDClient

pytest.importorskip("schemathesis")
pytestmark = pytest.mark.server

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = tiny_checkpoint(tmp_path_factory.mktemp("fuzz") / "models" / "tiny.safetensors")
    caps = (
        "--max-pixels",
        str(SIZE * SIZE),
        "--max-steps",
        "2",
        "--max-batch",
        "1",
        "--max-n-iter",
        "2",
        "--max-body-mb",
        "1",
    )
    srv = start_server(model, token=TOKEN, extra_args=caps)
    yield srv
    srv.stop()


def test_schemathesis_finds_no_server_errors(server, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        "40",
        "--workers",
        "1",  # one thread: with 2, hypothesis 6.170 crashed once under load reading a lambda's source (no server error)
        "--seed",
        "20260101",
        "--request-timeout",
        "60",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--no-color",
    ]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=540)
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "passed" in run.stdout, report
    assert "Traceback" not in server.output(), server.output()
    client = SDClient(server.url, token=TOKEN, timeout=60)
    assert client.ping()
    result = client.txt2img({"prompt": "still alive", "width": SIZE, "height": SIZE, "steps": 2, "seed": 1})
    assert len(result["images"]) == 1
