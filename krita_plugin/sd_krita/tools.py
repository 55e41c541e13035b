"""The docker's tools beyond inpainting, Krita-free and Qt-free: Upscale's requests and answers, unique layer names,
and the History of candidates.

Upscale goes through A1111's API of the same server: `/sdapi/v1/extra-single-image` (the "Extras" upscalers: the
server's pixel upscalers and its ESRGAN-family models) or, with *SD upscale*, `/sdapi/v1/img2img` with the
"SD upscale" script (enlarge with the upscaler, then img2img the enlarged image in tiles of *Model size* at
*Strength*). The canvas is larger afterwards, so the result opens as a new document: the user's document is not
touched at all.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import regions
from .generation import common_payload, png_of
from .regions import LayerPixels, Plan, Rect, RegionError
from .sd_client import decode_png
from .settings import Settings

FACTORS = (2, 4)
SD_UPSCALE_OVERLAP = 64  # A1111's script default (for its 512 px tiles; a quarter of smaller tiles)
UPSCALERS_PATH = "/sdapi/v1/upscalers"
STYLES_PATH = "/sdapi/v1/prompt-styles"
EXTRAS_PATH = "/sdapi/v1/extra-single-image"


def unique_name(name: str, existing: Iterable[str]) -> str:
    """`name`, or `name [2]`, `name [3]`, ... : the first one not among `existing` (a rerun with the same seed gets
    a layer name of its own)."""
    taken = set(existing)
    if name not in taken:
        return name
    n = 2
    while f"{name} [{n}]" in taken:
        n += 1
    return f"{name} [{n}]"


def upscaler_names(items: Any) -> list[str]:
    """Names from `/sdapi/v1/upscalers` ([{"name", ...}]) without "None" (which would not enlarge anything)."""
    if not isinstance(items, list):
        return []
    names = [str(i["name"]) for i in items if isinstance(i, dict) and isinstance(i.get("name"), str)]
    return [n for n in names if n and n != "None"]


def style_names(items: Any) -> list[str]:
    """Names from `/sdapi/v1/prompt-styles` ([{"name", "prompt", "negative_prompt"}])."""
    if not isinstance(items, list):
        return []
    return [str(i["name"]) for i in items if isinstance(i, dict) and isinstance(i.get("name"), str) and i["name"]]


@dataclass(frozen=True)
class UpscaleRequest:
    path: str  # the API path
    payload: dict[str, Any]
    width: int  # the size the answer must have
    height: int


def upscale_request(
    rgb: bytes, width: int, height: int, settings: Settings, factor: int, upscaler: str, sd_upscale: bool
) -> UpscaleRequest:
    """The request that enlarges a `width` x `height` R, G, B image by `factor` with `upscaler`. The server floors
    each side to a multiple of 8 (A1111's rule), so the expected size says so too."""
    if factor not in FACTORS:
        raise RegionError(f"Upscale by {factor}: choose {' or '.join(f'{f}x' for f in FACTORS)}.")
    if not upscaler:
        raise RegionError("Choose an upscaler (the server lists its own once connected).")
    image = png_of(regions.split(rgb, 3), width, height)
    out_w, out_h = width * factor // 8 * 8, height * factor // 8 * 8
    if not sd_upscale:
        payload = {"image": image, "resize_mode": 0, "upscaling_resize": factor, "upscaler_1": upscaler}
        return UpscaleRequest(EXTRAS_PATH, payload, out_w, out_h)
    tile = max(64, settings.resolution // 8 * 8)
    plan = Plan(Rect(0, 0, width, height), Rect(0, 0, width, height), Rect(0, 0, width, height),
                Rect(0, 0, width, height), tile, tile, 0, 0)  # fmt: skip
    payload = common_payload(settings, plan)
    payload.update(
        {
            "init_images": [image],
            "denoising_strength": settings.strength,
            "batch_size": 1,
            "script_name": "SD upscale",
            "script_args": [None, min(SD_UPSCALE_OVERLAP, tile // 32 * 8), upscaler, factor],
        }
    )
    return UpscaleRequest("/sdapi/v1/img2img", payload, out_w, out_h)


def decode_bgra(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, B, G, R, A bytes) of a PNG with the shared client's pure-Python decoder. Inside Krita the
    controller passes Qt's decoder instead (`document.decode_bgra`), much faster on an upscaled canvas."""
    w, h, rgba = decode_png(data)
    r, g, b, a = regions.split(rgba, 4)
    return w, h, regions.merge([b, g, r, a])


def read_upscale(
    request: UpscaleRequest, response: Any, decode: Callable[[bytes], tuple[int, int, bytes]] = decode_bgra
) -> LayerPixels:
    """The server's enlarged image as a layer's B, G, R, A pixels over the new canvas (opaque)."""
    image = None
    if isinstance(response, dict):
        image = response.get("image")
        images = response.get("images")
        if image is None and isinstance(images, list) and images:
            image = images[0]
    if not isinstance(image, str) or not image:
        raise RegionError("The server returned no image.")
    try:
        w, h, bgra = decode(base64.b64decode(image))
    except (ValueError, TypeError, zlib.error):
        raise RegionError("The server returned an unreadable image.") from None
    if (w, h) != (request.width, request.height):
        raise RegionError(f"The server returned a {w}x{h} image; {request.width}x{request.height} was expected.")
    if bgra[3::4].count(255) != w * h:
        b, g, r, _ = regions.split(bgra, 4)
        bgra = regions.merge([b, g, r, b"\xff" * (w * h)])
    return LayerPixels(Rect(0, 0, w, h), bgra)


# ---------------------------------------------------------------------------------------------------------------
# History


@dataclass
class Entry:
    """One candidate of a finished run: its pixels, its name and seed, and what made it (to regenerate)."""

    key: int
    name: str
    seed: int | None
    kind: str  # "inpaint", "generate" or "refine"
    settings: Settings
    pixels: LayerPixels
    document: Any = None  # the Krita document it was made for (None in tests)
    extra: dict[str, Any] = field(default_factory=dict)

    def rerun_settings(self) -> Settings:
        """The settings it was made with, its own seed fixed, one candidate: "regenerate with the same seed"."""
        s = Settings.from_strings(self.settings.to_strings())
        if self.seed is not None:
            s.seed = self.seed
        s.candidates = 1
        return s


class History:
    """The candidates of this session, newest first: at most `limit` of them and `max_bytes` of pixels (a whole
    canvas refined at 4000x3000 holds 48 MB); the oldest are dropped, the newest is always kept."""

    def __init__(self, limit: int = 40, max_bytes: int = 512 * 2**20) -> None:
        self.limit, self.max_bytes = limit, max_bytes
        self.entries: list[Entry] = []
        self._next = 1

    def add(self, name: str, seed: int | None, kind: str, settings: Settings, pixels: LayerPixels,
            document: Any = None) -> Entry:  # fmt: skip
        entry = Entry(self._next, name, seed, kind, settings, pixels, document)
        self._next += 1
        self.entries.insert(0, entry)
        del self.entries[self.limit :]
        total = 0
        for i, e in enumerate(self.entries):
            total += len(e.pixels.data)
            if total > self.max_bytes and i > 0:
                del self.entries[i:]
                break
        return entry

    def get(self, key: int) -> Entry | None:
        return next((e for e in self.entries if e.key == key), None)

    def discard(self, key: int) -> bool:
        before = len(self.entries)
        self.entries = [e for e in self.entries if e.key != key]
        return len(self.entries) != before
