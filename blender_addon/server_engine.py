"""Engines over HTTP, through the shared stdlib client (`sd_core/client.py`, vendored into the zip as `sd_client`).

- `ServerEngine`: an `sd-core serve` (or any A1111-compatible server) that someone else runs, at a URL.
- `LocalServerEngine`: starts `sd-core serve` from a given Python interpreter and model, when first needed (the usual
  case: Blender's Python has no torch); Release stops that process, the only sure way to give all GPU memory back.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import numpy as np

from .engine import (
    INPAINT,
    Cancelled,
    Engine,
    Job,
    Progress,
    Request,
    Result,
    UserError,
    client,
    explain,
    model_label,
    quietly,
    sizes_from,
)

SERVER_START_TIMEOUT = 300.0  # loading a large checkpoint from a slow disk takes minutes
GENERATION_TIMEOUT = 3600.0
POLL_TIMEOUT = 10.0
PRODUCTION_PIXELS = 4096 * 4096  # the add-on's own server makes 4K textures


def _png_b64(pixels: np.ndarray) -> str:
    """uint8 HxW (grey) or HxWx3/4 top-down -> base64 RGBA PNG."""
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    height, width = pixels.shape[:2]
    rgba = np.full((height, width, 4), 255, dtype=np.uint8)
    rgba[:, :, : pixels.shape[2]] = pixels
    return client.bytes_to_b64(client.encode_png_rgba(width, height, rgba.tobytes()))


def a1111_payload(request: Request) -> tuple[str, dict[str, Any]]:
    """The A1111 endpoint ("txt2img" or "img2img") and JSON body for a request."""
    payload: dict[str, Any] = {
        "prompt": request.tagged_prompt(),
        "negative_prompt": request.negative_prompt,
        "steps": request.steps,
        "sampler_name": request.sampler,
        "seed": request.seed,
        "batch_size": request.batch_size,
    }
    if request.model:  # this request only (A1111 restores its model afterwards): a shared server stays as it was
        payload["override_settings"] = {"sd_model_checkpoint": request.model}
    for name in ("width", "height", "cfg_scale"):  # left out: the server's rule (the model's own, the image's size)
        if getattr(request, name) is not None:
            payload[name] = getattr(request, name)
    if request.tiling:
        payload["tiling"] = True if request.tiling == "xy" else request.tiling
    if request.control_image is not None:  # the A1111 ControlNet extension's unit: the map as it is
        unit = {
            "image": _png_b64(request.control_image),
            "module": "none",
            "model": request.control_model,
            "weight": request.control_weight,
            "resize_mode": "Just Resize",
        }
        payload["alwayson_scripts"] = {"controlnet": {"args": [unit]}}
    if request.kind == "txt2img":
        if request.hires_scale:  # A1111's hires fix; the second pass's strength is its denoising_strength
            payload.update(enable_hr=True, hr_scale=request.hires_scale, hr_upscaler="Lanczos")
            payload["denoising_strength"] = request.hires_strength
            if request.hires_steps:
                payload["hr_second_pass_steps"] = request.hires_steps
        if request.tile:
            width, height, overlap = request.tile
            payload["sd_core_tile"] = {"width": width, "height": height, "overlap": overlap}
        return "txt2img", payload
    assert request.image is not None
    payload["init_images"] = [_png_b64(request.image)]
    payload["denoising_strength"] = request.strength
    if request.kind == "inpaint":
        assert request.mask is not None
        payload.update(mask=_png_b64(request.mask), **INPAINT)
    return "img2img", payload


def decode_result(response: dict[str, Any]) -> Result:
    images = [client.b64_to_bytes(text) for text in response.get("images") or []]
    try:
        info = json.loads(response.get("info") or "{}")
    except (TypeError, ValueError):
        info = {}
    if info.get("interrupted") and not images:
        raise Cancelled("the server stopped the generation")
    seeds = [int(s) for s in info.get("all_seeds") or []]
    return Result(images, seeds, [str(t) for t in info.get("infotexts") or []])


def decode_progress(data: dict[str, Any]) -> Progress:
    state = data.get("state") or {}
    preview = data.get("current_image")
    fraction = float(data.get("progress") or 0.0)
    passes = int(state.get("job_count") or 1)  # one request: a hires batch is two jobs, one per pass (A1111)
    return Progress(
        active=bool(state.get("job_count")) or fraction > 0.0,
        step=int(state.get("sampling_step") or 0),
        total=int(state.get("sampling_steps") or 0),
        fraction=fraction,
        preview=client.b64_to_bytes(preview) if preview else None,
        text=data.get("textinfo") or "",
        phase=min(int(state.get("job_no") or 0) + 1, max(passes, 1)),
        phases=max(passes, 1),
    )


def _client(url: str, token: str | None) -> Any:
    return client.SDClient(url, token=token, timeout=POLL_TIMEOUT, generation_timeout=GENERATION_TIMEOUT)


class ServerEngine(Engine):
    """A server that someone else runs."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url, self.token = url.rstrip("/"), token or None
        self._client = _client(self.url, self.token)

    def describe(self) -> str:
        return f"server at {self.url}"

    def _ready(self, cancel: threading.Event) -> None:
        """Nothing to prepare: the server is already there (or the request says it is not)."""

    def start(self, request: Request) -> Job:
        request.check()
        endpoint, payload = a1111_payload(request)

        def call(cancel: threading.Event) -> Result:
            self._ready(cancel)
            if cancel.is_set():
                raise Cancelled("cancelled before the request was sent")
            try:
                response = getattr(self._client, endpoint)(payload)
            except Exception as exc:
                raise UserError(explain(exc, self)) from exc
            quietly(self._read_model_defaults)
            return decode_result(response)

        return Job(call, on_cancel=self.interrupt)

    def loras(self) -> list[str]:
        return [str(item["name"]) for item in self._client.loras() if isinstance(item, dict) and item.get("name")]

    def controlnets(self) -> list[str]:
        """The server's `/controlnet/model_list` (A1111's ControlNet extension API; names with their `[hash]`)."""
        listed = (self._client.request("GET", "/controlnet/model_list") or {}).get("model_list") or []
        return [str(name) for name in listed if isinstance(name, str) and name and name != "None"]

    def models(self) -> list[str]:
        listed = [item for item in self._client.request("GET", "/sdapi/v1/sd-models") or [] if isinstance(item, dict)]
        names = [str(item["model_name"]) for item in listed if item.get("model_name")]
        self.listed_cfg_scales = {  # sd-core's own field: each model's defaults
            str(item["model_name"]): float(defaults["cfg_scale"])
            for item in listed
            if item.get("model_name")
            and isinstance(defaults := item.get("sd_core_defaults"), dict)
            and isinstance(defaults.get("cfg_scale"), (int, float))
        }
        return names

    def _read_model_defaults(self) -> None:
        """The model's own CFG scale and size choices, for the panel: sd-core's options name them (other servers
        do not)."""
        defaults = self._client.options().get("sd_core_model_defaults") or {}
        self.model_cfg_scale = defaults.get("cfg_scale")
        self.model_sizes = sizes_from(defaults.get("sizes"))

    def progress(self) -> Progress:
        return decode_progress(self._client.progress())

    def interrupt(self) -> None:
        self._client.interrupt()

    def release(self) -> str:
        """Ask the server to unload its model (A1111's unload-checkpoint); servers without it keep theirs."""
        try:
            self._client.request("POST", "/sdapi/v1/unload-checkpoint")
        except client.ServerUnavailable:
            return f"the server at {self.url} is not running"
        except client.ClientError as exc:
            if exc.status not in (404, 405):
                raise
            return f"the server at {self.url} cannot unload its model: stop it to free the GPU"
        return f"the server at {self.url} unloaded its model"


class LocalServerEngine(ServerEngine):
    """Starts `sd-core serve` from `python` with `model` (empty: the built-in texture model) on a loopback port, when
    first needed."""

    def __init__(
        self, python: str, model: str, port: int | None = None, token: str | None = None, lora_dir: str = ""
    ) -> None:
        self.python, self.model, self.port, self.lora_dir = python, model, port or None, lora_dir
        self.url, self.token = "", token or None
        self._server: Any = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        state = f"running at {self.url}" if self._server is not None else "not started"
        return f"local server ({state}) with {model_label(self.model)}"

    def check(self) -> None:
        """Refuse a missing interpreter or model before spawning anything."""
        if not self.python or not os.path.isfile(self.python):
            raise UserError(
                f"Python interpreter not found: {self.python or '(empty)'}. Set the Python that has "
                "sd-core installed (e.g. .../venv/bin/python) in the add-on preferences"
            )
        if self.model and not os.path.exists(self.model):  # empty: sd-core's built-in texture model
            raise UserError(
                f"Model not found: {self.model}. Set the model path (.safetensors, .ckpt or diffusers folder) in "
                "the add-on preferences, or leave it empty for the built-in texture model"
            )

    def start(self, request: Request) -> Job:
        self.check()
        return super().start(request)

    def _ready(self, cancel: threading.Event) -> None:
        with self._lock:
            if self._server is not None:
                return
            # PYTHONHOME, when Blender's environment has one, would point the other interpreter at Blender's stdlib.
            env = {k: v for k, v in os.environ.items() if k != "PYTHONHOME"}
            # production sizes: a 4096 px texture (its second pass in tiles) is more than the default --max-pixels
            extra = ("--max-pixels", str(PRODUCTION_PIXELS))
            extra += ("--lora-dir", self.lora_dir) if self.lora_dir else ()
            server = client.LocalServer(
                self.python, self.model or None, port=self.port, token=self.token, env=env, extra_args=extra
            )
            try:
                server.start()
                self._wait_ready(server, cancel)
            except Cancelled:
                quietly(server.stop)
                raise
            except Exception as exc:
                quietly(server.stop)
                lines = [line for line in str(exc).splitlines() if line.strip()]
                why = " / ".join(lines[:1] + lines[-3:]) if len(lines) > 4 else " / ".join(lines)
                raise UserError(
                    f"The local sd-core server did not start ({why}). Check the Python interpreter and "
                    "the model path in the add-on preferences"
                ) from exc
            self._server, self.url = server, server.url.rstrip("/")
            self._client = _client(self.url, self.token)

    @staticmethod
    def _wait_ready(server: Any, cancel: threading.Event) -> None:
        """`wait_ready` in short slices, so that Cancel does not wait for a slow model load to finish."""
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                server.wait_ready(min(1.0, max(deadline - time.monotonic(), 0.0)))
                return
            except client.ServerUnavailable:
                if not server.running():
                    raise
                if time.monotonic() >= deadline:
                    raise client.ServerUnavailable(
                        f"no answer within {SERVER_START_TIMEOUT:.0f} s:\n{server.output()}"
                    ) from None
            if cancel.is_set():
                raise Cancelled("cancelled while the local server was starting")

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.running()

    def progress(self) -> Progress:
        if self._server is None:
            return Progress(active=True, text="starting the local server")
        return super().progress()

    def interrupt(self) -> None:
        if self._server is not None:
            super().interrupt()

    def models(self) -> list[str]:
        return super().models() if self._server is not None else []  # its one model until it runs

    def controlnets(self) -> list[str]:
        return super().controlnets() if self._server is not None else []

    def loras(self) -> list[str]:
        """The server's list once it runs; before, the LoRA folder's files (what it will list)."""
        if self._server is not None:
            return super().loras()
        if not self.lora_dir or not os.path.isdir(self.lora_dir):
            return []
        suffixes = (".safetensors", ".pt", ".ckpt")
        return sorted(
            os.path.splitext(name)[0]
            for _root, _dirs, files in os.walk(self.lora_dir)
            for name in files
            if name.lower().endswith(suffixes)
        )

    def shutdown(self) -> str:
        return self.release()  # the server process is this add-on's own

    def release(self) -> str:
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return "the local server was not running"
        server.stop()
        return f"stopped the local server at {server.url}"
