"""`sd_core/client.py`, the stdlib client the plugins vendor: against a real server process (with a token), against
a plain stdlib HTTP server that answers like A1111 does, and its PNG helpers against Pillow."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from server_utils import REPO, SIZE, open_b64, start_server, tiny_checkpoint, wait_until

from sd_core.client import (
    ClientError,
    LocalServer,
    SDClient,
    ServerUnavailable,
    b64_to_bytes,
    bytes_to_b64,
    decode_png,
    encode_png_rgba,
    free_port,
    png_text,
)

pytestmark = pytest.mark.server

TOKEN = "client-test-token"
BASE = {"width": SIZE, "height": SIZE, "steps": 2, "prompt": "a lighthouse"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("client") / "models" / "tiny.safetensors")


@pytest.fixture(scope="module")
def server(model):
    srv = start_server(model, token=TOKEN, extra_args=("--max-steps", "500"))
    yield srv
    srv.stop()


@pytest.fixture
def client(server) -> SDClient:
    return SDClient(server.url, token=TOKEN, timeout=60)


# --- against a real sd-core server --------------------------------------------------------------------------------


def test_token_travels_in_the_environment_not_the_command_line(server):
    assert TOKEN not in " ".join(server.command())
    with pytest.raises(ClientError) as caught:
        SDClient(server.url).options()
    assert caught.value.status == 401 and "token" in caught.value.message


def test_calls_and_results(client):
    assert client.ping()
    result = client.txt2img({**BASE, "seed": 5})
    png = b64_to_bytes(result["images"][0])
    width, height, rgba = decode_png(png)
    assert (width, height) == (SIZE, SIZE)
    assert rgba == open_b64(result["images"][0]).convert("RGBA").tobytes()
    assert "Seed: 5" in png_text(png)["parameters"]
    assert client.png_info(result["images"][0])["parameters"]["Seed"] == "5"
    assert [m["model_name"] for m in client.models()] == ["tiny"]
    assert any(s["name"] == "Euler a" for s in client.samplers())
    assert any(s["name"] == "karras" for s in client.schedulers())
    client.set_options({"CLIP_stop_at_last_layers": 2})
    assert client.options()["CLIP_stop_at_last_layers"] == 2
    client.set_options({"CLIP_stop_at_last_layers": 1})


def test_errors_carry_status_field_and_message(client):
    with pytest.raises(ClientError) as caught:
        client.txt2img({**BASE, "steps": 501})
    err = caught.value
    assert err.status == 422 and err.field == "steps" and "--max-steps" in err.message
    assert err.body["field"] == "steps" and str(err) == err.message
    assert not isinstance(err, ServerUnavailable)


def test_submit_progress_and_interrupt(client):
    job = client.submit("txt2img", {**BASE, "steps": 400, "seed": 9})
    assert not job.done
    wait_until(lambda: client.progress()["state"]["sampling_step"] >= 2, 60, what="sampling to start")
    assert not job.wait(0.05)
    client.interrupt()
    result = job.get(60)
    assert job.done and job.error is None and job.result is result
    # A1111: the interrupted image comes back, made from the engine's estimate at the step it stopped
    assert len(result["images"]) == 1 and json.loads(result["info"])["interrupted"] is True
    failing = client.submit("txt2img", {**BASE, "width": 7})
    assert failing.wait(60)
    assert isinstance(failing.error, ClientError) and failing.error.field == "width"
    with pytest.raises(ClientError):
        failing.get(0)
    with pytest.raises(ValueError):
        client.submit("delete_everything", {})


def test_unreachable_server():
    url = f"http://127.0.0.1:{free_port()}"
    client = SDClient(url, timeout=2)
    assert client.ping() is False
    with pytest.raises(ServerUnavailable) as caught:
        client.progress()
    assert url in caught.value.message and caught.value.status is None
    assert isinstance(caught.value, ClientError)


def test_local_server_reports_why_it_could_not_start(tmp_path):
    missing = tmp_path / "missing.safetensors"
    server = LocalServer(sys.executable, missing, env=dict(os.environ, PYTHONPATH=str(REPO)))
    server.start()
    try:
        with pytest.raises(ServerUnavailable) as caught:
            server.wait_ready(120)
        assert "model not found" in caught.value.message and str(missing) in caught.value.message
    finally:
        server.stop()
    assert not server.running()


def test_local_server_stops_promptly_mid_generation(model):
    server = start_server(model, extra_args=("--max-steps", "1000"))
    client = SDClient(server.url, timeout=60)
    job = client.submit("txt2img", {**BASE, "steps": 1000, "seed": 1})
    wait_until(lambda: client.progress()["state"]["sampling_step"] >= 1, 60, what="sampling to start")
    t0 = time.monotonic()
    code = server.stop(timeout=20)
    assert time.monotonic() - t0 < 20
    assert code is not None and not server.running()
    assert job.wait(30)  # never left hanging: answered as interrupted, or cut off with the connection
    assert isinstance(job.error, ClientError) or json.loads(job.result["info"])["interrupted"] is True
    assert not client.ping()


# --- against A1111-shaped answers -----------------------------------------------------------------------------------


class A1111Like(BaseHTTPRequestHandler):
    """Answers the way AUTOMATIC1111 does: its 500 body and FastAPI's 422 list."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/sdapi/v1/options":
            self._send(500, {"error": "RuntimeError", "detail": "", "body": "", "errors": "model 'x' not found"})
        elif self.path == "/sdapi/v1/txt2img":
            self._send(
                422,
                {
                    "detail": [
                        {"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"}
                    ]
                },
            )
        else:
            body = b"upstream exploded"
            self.send_response(502)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_messages_from_a1111_shaped_errors():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), A1111Like)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        client = SDClient(f"http://127.0.0.1:{httpd.server_address[1]}", timeout=10)
        with pytest.raises(ClientError) as caught:
            client.set_options({"sd_model_checkpoint": "x"})
        assert caught.value.status == 500 and caught.value.message == "model 'x' not found"
        with pytest.raises(ClientError) as caught:
            client.txt2img({"steps": "x"})
        assert caught.value.status == 422 and caught.value.field == "steps"
        assert caught.value.message == "steps: value is not a valid integer"
        with pytest.raises(ClientError) as caught:
            client.img2img({})
        assert caught.value.status == 502 and caught.value.message == "upstream exploded"
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- vendoring ----------------------------------------------------------------------------------------------------


def test_client_is_a_standalone_stdlib_module(tmp_path):
    """The plugins copy the file alone: it must import with neither torch nor sd_core nor third-party packages."""
    shutil.copy(REPO / "sd_core" / "client.py", tmp_path / "vendored_client.py")
    code = (
        "import sys\n"
        "sys.path.insert(0, '.')\n"
        "for name in ('torch', 'numpy', 'PIL', 'sd_core', 'requests', 'fastapi', 'pydantic'):\n"
        "    sys.modules[name] = None\n"
        "import vendored_client as c\n"
        "png = c.encode_png_rgba(2, 1, bytes([255, 0, 0, 255, 0, 255, 0, 128]), {'parameters': 'p'})\n"
        "assert c.decode_png(png) == (2, 1, bytes([255, 0, 0, 255, 0, 255, 0, 128]))\n"
        "assert c.png_text(png) == {'parameters': 'p'}\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    through_package = subprocess.run(
        [sys.executable, "-c", "import sys, sd_core.client; print('torch' in sys.modules)"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert through_package.stdout.strip() == "False", through_package.stderr


# --- PNG and base64 helpers -----------------------------------------------------------------------------------------


def noisy(mode: str, size: tuple[int, int] = (23, 17)) -> Image.Image:
    rng = random.Random(0)
    img = Image.frombytes("RGBA", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 4)))
    img.paste((10, 200, 30, 255), (3, 3, 12, 9))  # flat areas make Pillow pick the other row filters
    return img.convert(mode) if mode != "RGBA" else img


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "L", "LA", "P"])
def test_decode_png_matches_pillow(mode):
    img = noisy(mode)
    buf = io.BytesIO()
    if mode == "P":
        img.save(buf, format="PNG", transparency=3)
        expected = Image.open(io.BytesIO(buf.getvalue())).convert("RGBA")
    else:
        img.save(buf, format="PNG")
        expected = img.convert("RGBA")
    width, height, rgba = decode_png(buf.getvalue())
    assert (width, height) == img.size
    assert rgba == expected.tobytes()


def test_encode_png_rgba_reads_back_in_pillow():
    img = noisy("RGBA")
    png = encode_png_rgba(img.width, img.height, img.tobytes(), {"parameters": "a cat\nSteps: 20, Seed: 1"})
    back = Image.open(io.BytesIO(png))
    back.load()
    assert back.mode == "RGBA" and back.size == img.size and back.tobytes() == img.tobytes()
    assert back.info["parameters"] == "a cat\nSteps: 20, Seed: 1"
    with pytest.raises(ValueError):
        encode_png_rgba(2, 2, b"\x00" * 15)
    with pytest.raises(ValueError):
        encode_png_rgba(0, 2, b"")


def test_png_text_reads_every_text_chunk_kind():
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "plain")
    info.add_text("compressed", "z" * 200, zip=True)
    info.add_itxt("unicode", "caf\u00e9 \u2603", zip=False)
    info.add_itxt("unicode_z", "\u00fcber " * 50, zip=True)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG", pnginfo=info)
    assert png_text(buf.getvalue()) == {
        "parameters": "plain",
        "compressed": "z" * 200,
        "unicode": "caf\u00e9 \u2603",
        "unicode_z": "\u00fcber " * 50,
    }
    with pytest.raises(ValueError):
        png_text(b"GIF89a....")


def test_base64_helpers():
    data = bytes(range(256))
    text = bytes_to_b64(data)
    assert b64_to_bytes(text) == data
    assert b64_to_bytes("data:image/png;base64," + text) == data
    with pytest.raises(ValueError):
        b64_to_bytes("not base64 at all!")
