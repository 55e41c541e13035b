"""A standard-library client for `sd-core serve` (and any AUTOMATIC1111-compatible server).

This one file is vendored by the Krita and Blender plugins, so it imports nothing outside the Python standard
library (3.10+) and nothing from sd_core.

    server = LocalServer(sys.executable, "model.safetensors")  # optional: start a server of our own
    server.start(); server.wait_ready(120)
    client = SDClient(server.url)
    result = client.txt2img({"prompt": "a red brick wall", "steps": 20, "seed": 1})
    png = b64_to_bytes(result["images"][0])

Errors: `ClientError` when the server answers with an error (its message, status and the request field at fault),
`ServerUnavailable` (a `ClientError`) when it cannot be reached.
"""

from __future__ import annotations

import base64
import collections
import http.client
import json
import os
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "ClientError",
    "ServerUnavailable",
    "SDClient",
    "Job",
    "LocalServer",
    "free_port",
    "encode_png_rgba",
    "decode_png",
    "png_text",
    "bytes_to_b64",
    "b64_to_bytes",
    "add_lora",
    "lora_tags",
    "parse_loras",
]

DEFAULT_URL = "http://127.0.0.1:7860"
TOKEN_ENV = "SD_CORE_TOKEN"


class ClientError(Exception):
    """The server refused or failed a request. `status` is the HTTP status (None when there was no answer),
    `field` the request field at fault when the server named one, `body` the decoded error body."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.message, self.status, self.field, self.body = message, status, field, body


class ServerUnavailable(ClientError):
    """No answer: the server is not running, not reachable, or did not answer in time."""


def _error_message(status: int, body: Any, reason: str) -> tuple[str, str | None]:
    """The human message and field from sd_core's `{"error", "detail", "field"}`, FastAPI's or A1111's shapes."""
    if isinstance(body, dict):
        field = body.get("field") if isinstance(body.get("field"), str) else None
        detail = body.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # FastAPI's validation list
            first = detail[0]
            loc = [str(p) for p in first.get("loc", []) if p != "body"]
            field = field or (".".join(loc) or None)
            detail = f"{'.'.join(loc)}: {first.get('msg', '')}" if loc else str(first.get("msg", ""))
        for text in (detail, body.get("errors"), body.get("error")):
            if isinstance(text, str) and text:
                return text, field
    if isinstance(body, str) and body.strip():
        return body.strip()[:500], None
    return f"HTTP {status} {reason}".strip(), None


class SDClient:
    """Blocking calls to one server; thread-safe (each call opens its own connection)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 30.0,
        generation_timeout: float | None = 3600.0,
    ) -> None:
        self.base_url, self.token = base_url.rstrip("/"), token
        self.timeout, self.generation_timeout = timeout, generation_timeout

    # --- transport ----------------------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        """One JSON request; returns the decoded JSON answer or raises ClientError/ServerUnavailable."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err_body: Any = json.loads(raw)
            except ValueError:
                err_body = raw.decode("utf-8", "replace")
            message, field = _error_message(exc.code, err_body, str(exc.reason or ""))
            raise ClientError(message, exc.code, field, err_body) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerUnavailable(f"cannot reach {self.base_url}: {reason}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ClientError(f"the server at {self.base_url} did not answer with JSON", 200) from None

    # --- A1111 endpoints ----------------------------------------------------------------------------------------

    def txt2img(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST /sdapi/v1/txt2img: {"images": [base64 PNG], "parameters": {...}, "info": JSON string}."""
        return self.request("POST", "/sdapi/v1/txt2img", dict(payload), self.generation_timeout)

    def img2img(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST /sdapi/v1/img2img (inpainting when the payload has a `mask`)."""
        return self.request("POST", "/sdapi/v1/img2img", dict(payload), self.generation_timeout)

    def progress(self, skip_current_image: bool = False) -> dict[str, Any]:
        query = "?skip_current_image=true" if skip_current_image else ""
        return self.request("GET", "/sdapi/v1/progress" + query)

    def interrupt(self) -> None:
        self.request("POST", "/sdapi/v1/interrupt")

    def models(self) -> list[dict[str, Any]]:
        return self.request("GET", "/sdapi/v1/sd-models")

    def samplers(self) -> list[dict[str, Any]]:
        return self.request("GET", "/sdapi/v1/samplers")

    def schedulers(self) -> list[dict[str, Any]]:
        return self.request("GET", "/sdapi/v1/schedulers")

    def options(self) -> dict[str, Any]:
        return self.request("GET", "/sdapi/v1/options")

    def loras(self) -> list[dict[str, Any]]:
        """GET /sdapi/v1/loras: the server's LoRA files, [{"name", "alias", "path", "metadata"}] (A1111's shape)."""
        return self.request("GET", "/sdapi/v1/loras")

    def set_options(self, options: Mapping[str, Any]) -> None:
        """Setting `sd_model_checkpoint` switches the model; returns once it is loaded."""
        self.request("POST", "/sdapi/v1/options", dict(options), self.generation_timeout)

    def png_info(self, image_b64: str) -> dict[str, Any]:
        """{"info": parameters text, "items": other text chunks, "parameters": parsed}."""
        return self.request("POST", "/sdapi/v1/png-info", {"image": image_b64})

    def ping(self) -> bool:
        """True when the server answers its health check."""
        try:
            self.request("GET", "/internal/ping", timeout=min(self.timeout, 5.0))
        except ClientError:
            return False
        return True

    def submit(self, kind: str, payload: Mapping[str, Any]) -> Job:
        """Start `txt2img`/`img2img` (or any method name of this class) in a thread; poll `progress()` meanwhile."""
        if kind not in ("txt2img", "img2img", "set_options", "png_info"):
            raise ValueError(f"cannot submit {kind!r}; use txt2img, img2img, set_options or png_info")
        return Job(getattr(self, kind), payload)


def parse_loras(text: str) -> list[tuple[str, float]]:
    """A plugin's LoRA field, "name:0.8, other:-0.5" (a name alone weighs 1) -> [(name, weight)]."""
    out = []
    for item in filter(None, (part.strip() for part in text.replace(";", ",").split(","))):
        name, _, weight = item.rpartition(":") if ":" in item else (item, "", "1")
        try:
            out.append((name.strip(), float(weight)))
        except ValueError:
            raise ValueError(f"LoRA {item!r}: write name:weight (a number)") from None
        if not out[-1][0] or set("<>") & set(name):
            raise ValueError(f"LoRA {item!r}: write name:weight")
    return out


def add_lora(text: str, name: str, weight: float) -> str:
    """A LoRA field with `name` at `weight`: its earlier entry dropped, the new one last."""
    items = [(n, w) for n, w in parse_loras(text) if n != name] + [(name, weight)]
    return ", ".join(f"{n}:{w:g}" for n, w in items)


def lora_tags(prompt: str, loras: Iterable[tuple[str, float]]) -> str:
    """The prompt with A1111's `<lora:name:weight>` tag of each LoRA appended: how a request asks for a LoRA."""
    tags = " ".join(f"<lora:{name}:{weight:g}>" for name, weight in loras)
    return f"{prompt} {tags}".strip() if tags else prompt


class Job:
    """A request running in a background thread: `done`, `result`, `error`, `wait(timeout)`."""

    def __init__(self, call: Callable[[Any], Any], payload: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._event = threading.Event()
        threading.Thread(target=self._run, args=(call, payload), daemon=True).start()

    def _run(self, call: Callable[[Any], Any], payload: Any) -> None:
        try:
            self.result = call(payload)
        except BaseException as exc:  # handed to whoever waits
            self.error = exc
        finally:
            self._event.set()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done (or `timeout` seconds); True when done."""
        return self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The result, raising the request's error; ServerUnavailable if not done within `timeout`."""
        if not self.wait(timeout):
            raise ServerUnavailable(f"no answer within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


# --- running a server ---------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalServer:
    """A `python -m sd_core.server` child process on a loopback port; its output is kept for error messages."""

    def __init__(
        self,
        python: str,
        model: str | os.PathLike[str] | None,
        *,
        port: int | None = None,
        models_dir: str | os.PathLike[str] | None = None,
        token: str | None = None,
        extra_args: Iterable[str] = (),
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        module: str = "sd_core.server",
    ) -> None:
        self.python, self.model, self.models_dir, self.token = python, model, models_dir, token
        self.host, self.port = host, port or free_port(host)
        self.extra_args, self.env, self.module = list(extra_args), env, module
        self.process: subprocess.Popen[bytes] | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=200)
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [self.python, "-m", self.module, "--host", self.host, "--port", str(self.port)]
        for option, path in (("--model", self.model), ("--models-dir", self.models_dir)):
            if path is not None:
                cmd += [option, os.fspath(path)]
        return cmd + self.extra_args

    def start(self) -> LocalServer:
        if self.running():
            return self
        env = dict(os.environ if self.env is None else self.env)
        if self.token:
            env[TOKEN_ENV] = self.token  # not on the command line, where other users could read it
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            creationflags=flags,
        )
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        return self

    def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in iter(self.process.stdout.readline, b""):
            self._log.append(line.decode("utf-8", "replace").rstrip())

    def output(self) -> str:
        """The last lines the server printed."""
        return "\n".join(self._log)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 120.0) -> LocalServer:
        """Wait until the server answers its health check (the model is loaded by then)."""
        if self.process is None:
            raise ServerUnavailable("the server was not started")
        client = SDClient(self.url, token=self.token, timeout=2.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                time.sleep(0.1)  # let the reader catch the last lines
                raise ServerUnavailable(f"the server exited with code {self.process.returncode}:\n{self.output()}")
            if client.ping():
                return self
            time.sleep(0.2)
        raise ServerUnavailable(f"the server did not answer within {timeout} s:\n{self.output()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate, then kill if it does not exit within `timeout`; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(2.0)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- PNG and base64 helpers ---------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bytes_to_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64_to_bytes(text: str) -> bytes:
    """Decode base64, with or without a `data:image/png;base64,` prefix."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error is one
        raise ValueError(f"not valid base64: {exc}") from None


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png_rgba(
    width: int, height: int, rgba: bytes, text: Mapping[str, str] | None = None, level: int = 6
) -> bytes:
    """An 8-bit RGBA PNG from raw top-to-bottom RGBA rows (`width * height * 4` bytes), with optional tEXt chunks
    (latin-1 keys and values, e.g. A1111's `parameters`)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    stride = width * 4
    if len(rgba) != stride * height:
        raise ValueError(f"expected {stride * height} bytes for {width}x{height} RGBA, got {len(rgba)}")
    raw = b"".join(b"\x00" + rgba[y * stride : (y + 1) * stride] for y in range(height))
    out = [_PNG_SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))]
    for key, value in (text or {}).items():
        out.append(_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace")))
    out += [_chunk(b"IDAT", zlib.compress(raw, level)), _chunk(b"IEND", b"")]
    return b"".join(out)


def _chunks(data: bytes) -> Iterable[tuple[bytes, bytes]]:
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise ValueError("truncated PNG")
        yield kind, body
        pos += 12 + length
        if kind == b"IEND":
            return


def png_text(data: bytes) -> dict[str, str]:
    """The PNG's text chunks (tEXt, zTXt, uncompressed or compressed iTXt), e.g. `png_text(png)["parameters"]`."""
    out: dict[str, str] = {}
    for kind, body in _chunks(data):
        if kind == b"tEXt":
            key, _, value = body.partition(b"\x00")
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\x00")
            out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":  # key, compression flag, method, language, translated key, text
            key, _, rest = body.partition(b"\x00")
            value = rest[2:].partition(b"\x00")[2].partition(b"\x00")[2]
            out[key.decode("latin-1")] = (zlib.decompress(value) if rest[0] else value).decode("utf-8")
    return out


# Which channel of each colour type's pixels feeds R, G, B (and A): grey, RGB, grey+alpha, RGBA.
_RGBA_SOURCES = {0: (0, 0, 0), 2: (0, 1, 2), 4: (0, 0, 0, 1), 6: (0, 1, 2, 3)}


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGBA bytes) of an 8-bit non-interlaced PNG (grey, grey+alpha, RGB, RGBA or palette):
    what the server sends. Pure Python, so meant for previews and modest sizes."""
    chunks: dict[bytes, list[bytes]] = {}
    for kind, body in _chunks(data):
        chunks.setdefault(kind, []).append(body)
    if b"IHDR" not in chunks:
        raise ValueError("PNG without IHDR")
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"][-1])
    palette, alpha_table = (chunks.get(kind, [b""])[-1] for kind in (b"PLTE", b"tRNS"))
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"unsupported PNG (bit depth {depth}, colour type {color}, interlace {interlace})")
    raw = zlib.decompress(b"".join(chunks.get(b"IDAT", [])))
    stride = width * channels
    if len(raw) < (stride + 1) * height:
        raise ValueError("truncated PNG image data")
    pixels, prev = bytearray(), bytearray(channels + stride)  # rows start with `channels` zeros: the filters' edge
    for y in range(height):
        start = y * (stride + 1)
        ftype, line = raw[start], bytearray(channels) + raw[start + 1 : start + 1 + stride]
        for i in range(channels, channels + stride):
            left, up, upleft = line[i - channels], prev[i], prev[i - channels]
            if ftype == 1:
                line[i] = (line[i] + left) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + up) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif ftype == 4:  # Paeth: the neighbour nearest to left + up - upleft
                p = left + up - upleft
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else upleft)) & 0xFF
            elif ftype != 0:
                raise ValueError(f"bad PNG filter type {ftype}")
        pixels += line[channels:]
        prev = line
    if color == 3:  # palette indices -> the palette's RGB and the tRNS alpha (opaque where it has none)
        alpha = alpha_table + b"\xff" * (256 - len(alpha_table))
        table = [palette[3 * v : 3 * v + 3] + alpha[v : v + 1] for v in range(256)]
        return width, height, b"".join(table[v] for v in pixels)
    out = bytearray(b"\xff" * (width * height * 4))  # opaque unless the PNG has alpha
    for target, source in enumerate(_RGBA_SOURCES[color]):
        out[target::4] = pixels[source::channels]
    return width, height, bytes(out)
