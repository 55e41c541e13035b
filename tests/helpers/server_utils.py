"""Helpers for the server tests: tiny real checkpoints, a real `python -m sd_core.server` process, PNG codecs.

`tiny_checkpoint` is the one place that decides which model the servers load; every server test goes through it.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image

from sd_core.client import LocalServer, SDClient

REPO = Path(__file__).resolve().parents[2]
SIZE = 64  # the engine's smallest size: 8x8 latents, a few ms per step with the tiny model


@cache
def _checkpoint_bytes(seed: int) -> bytes:
    from model_fixtures import write_tiny_checkpoint

    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"sd_core_server_tests_{os.getpid()}"
    path = write_tiny_checkpoint(folder / f"seed{seed}.safetensors", seed=seed)
    data = path.read_bytes()
    shutil.rmtree(folder, ignore_errors=True)
    return data


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A tiny random-weight SD1 checkpoint (.safetensors, real LDM layout) at `path`; `seed` picks the weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_checkpoint_bytes(seed))
    return path


def models_dir(root: Path) -> Path:
    """Two different tiny checkpoints, one in a subfolder, plus a symlink that leads out of the folder."""
    models = root / "models"
    tiny_checkpoint(models / "alpha.safetensors", seed=0)
    tiny_checkpoint(models / "sub" / "beta.safetensors", seed=1)
    outside = tiny_checkpoint(root / "outside" / "secret.safetensors", seed=2)
    try:
        (models / "escape.safetensors").symlink_to(outside)
    except OSError:  # no symlinks on this filesystem: nothing to escape through
        pass
    return models


# Torch threads of a test server: one, the machine is shared. An in-process engine whose output must equal a server's
# runs at this count too: GEMMs split over another number of threads sum in another order.
SERVER_THREADS = 1


def start_server(
    model: Path | None,
    *,
    models_dir: Path | None = None,
    token: str | None = None,
    extra_args: tuple[str, ...] = (),
    timeout: float = 180.0,
) -> LocalServer:
    """A real server process on a free loopback port, ready to answer, at `SERVER_THREADS` torch threads."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(SERVER_THREADS),
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    server = LocalServer(sys.executable, model, models_dir=models_dir, token=token, extra_args=extra_args, env=env)
    server.start()
    try:
        server.wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def open_b64(text: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(text)))
    img.load()
    return img


def sample_image(width: int = SIZE, height: int = SIZE) -> Image.Image:
    """A gradient with a bright square: structure that img2img visibly keeps."""
    img = Image.new("RGB", (width, height))
    img.putdata([(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)])
    img.paste((250, 250, 40), (width // 4, height // 4, width // 2, height // 2))
    return img


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def jobs_seen(client: SDClient) -> int:
    """How many jobs the server has accepted so far (finished + running + queued)."""
    return client.request("GET", "/internal/jobs")["accepted"]
