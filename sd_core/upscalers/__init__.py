"""Upscalers, in one place for the engine, the CLI and the server: A1111's pixel upscalers, ESRGAN-family model
files, and A1111's latent modes.

Pixel upscalers (`REGISTRY`, a read-only constant): "None" (a plain Lanczos resize when resizing to a size; no upscale
at all in extras), "Lanczos" and "Nearest". Model upscalers come from the folders a caller configures: `Upscalers(dirs)`
is the set one caller can use, the pixel ones then each `*.pth`, `*.pt` and `*.safetensors` file directly in those
folders (A1111's `models/ESRGAN`), named by its file stem, with its scale read from the file (`esrgan.py`: RRDBNet in
the original ESRGAN or the BasicSR / Real-ESRGAN key layout). Nothing is process-wide: each `Upscalers` reads its
folders once, when a name that is not a pixel upscaler is first looked up or the list is asked for; a file that is not
an ESRGAN-family model, or whose name is taken, is skipped with a logged warning, and asking for it by name is a
`SettingError` that names the file and says why. A model is loaded at its first use and kept by its `Upscaler`.

Each upscales as A1111's `Upscaler.upscale` does: the target is the scaled size floored to a multiple of 8; the
upscaler's own step runs (up to three times while short of the target, once when the scale is 1), and whatever size it
reached is Lanczos-resized to the target. Latent modes (`latent.LATENT_MODES`) resize latents instead of pixels (hires
fix, img2img's latent upscale).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from PIL import Image

from ..limits import SettingError

Step = Callable[[Image.Image, float], Image.Image]
NONE = "None"
MODEL_SUFFIXES = (".pth", ".pt", ".safetensors")
ORIGINAL, BASICSR = "ESRGAN", "RealESRGAN"  # the two key layouts of model files, as `Upscaler.model_name`
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upscaler:
    """One entry of A1111's upscaler list; `step` enlarges an image by about `scale` (None: leaves it as it is).
    A model upscaler's `model_name` is its key layout ("ESRGAN" or "RealESRGAN"), `model_path` its file."""

    name: str
    step: Step | None = None
    scale: float = 4
    model_name: str | None = None
    model_path: str | None = None

    def item(self) -> dict[str, Any]:
        """The A1111 `/sdapi/v1/upscalers` entry."""
        return {
            "name": self.name,
            "model_name": self.model_name,
            "model_path": self.model_path,
            "model_url": None,
            "scale": self.scale,
        }

    def upscale(self, img: Image.Image, scale: float) -> Image.Image:
        """`img` scaled by `scale` to A1111's target size (floored to a multiple of 8)."""
        target = (int(img.width * scale // 8 * 8), int(img.height * scale // 8 * 8))
        if target[0] < 1 or target[1] < 1:
            raise ValueError(f"scaling {img.width}x{img.height} by {scale:g} leaves no pixels")
        for attempt in range(3):
            if self.step is None:
                break
            if img.width >= target[0] and img.height >= target[1] and (attempt > 0 or scale != 1):
                break
            before = img.size
            img = self.step(img, scale)
            if img.size == before:
                break
        if img.size != target:
            img = img.resize(target, Image.Resampling.LANCZOS)
        return img


def _resampler(method: Image.Resampling) -> Step:
    def step(img: Image.Image, scale: float) -> Image.Image:
        return img.resize((int(img.width * scale), int(img.height * scale)), method)

    return step


REGISTRY: Mapping[str, Upscaler] = MappingProxyType(
    {
        u.name: u
        for u in (
            Upscaler(NONE),
            Upscaler("Lanczos", _resampler(Image.Resampling.LANCZOS)),
            Upscaler("Nearest", _resampler(Image.Resampling.NEAREST)),
        )
    }
)
"""The pixel upscalers, a read-only constant; model upscalers are per caller (`Upscalers`)."""


class ModelStep:
    """An ESRGAN-family file as an upscaler's step: the network is loaded at the first call and kept by this step."""

    def __init__(self, path: Path, device: str | None = None, tile: int | None = None, overlap: int | None = None):
        from . import esrgan

        self.path, self.device = path, device or "cpu"
        self.tile = esrgan.TILE if tile is None else tile
        self.overlap = esrgan.OVERLAP if overlap is None else overlap
        self._net: Any = None
        self._lock = threading.Lock()

    def __call__(self, img: Image.Image, scale: float) -> Image.Image:
        from . import esrgan

        with self._lock:
            if self._net is None:
                self._net = esrgan.load(self.path, self.device)
            net = self._net
        return esrgan.upscale(net, img, self.tile, self.overlap)


def model_upscaler(path: str | Path, device: str | None = None, **tiling: int | None) -> Upscaler:
    """The upscaler of one ESRGAN-family model file (named by its stem; `tiling`: `tile`, `overlap`), or an
    `esrgan.UpscalerError` (a ValueError) naming the file. Only the file's shapes are read here."""
    from . import esrgan

    path = Path(path)
    layout, config = esrgan.read_config(path)
    return Upscaler(path.stem, ModelStep(path, device, **tiling), config.scale, layout, str(path))


class Upscalers:
    """The upscalers one caller can use: the pixel ones (`REGISTRY`), then the ESRGAN-family files directly in `dirs`
    (in the folders' order, each folder's files by name), run on `device` (default: the CPU) in float32, in tiles of
    `tile` pixels with `overlap` pixels of context (A1111's ESRGAN_tile and ESRGAN_tile_overlap; default 192 and 8).

    The folders are read once per instance, when first needed: a caller that wants to see new files makes a new
    one (the server does per request)."""

    def __init__(
        self,
        dirs: Iterable[str | Path] = (),
        device: str | None = None,
        *,
        tile: int | None = None,
        overlap: int | None = None,
    ) -> None:
        self.dirs = tuple(Path(d) for d in dirs)
        self.device, self._tiling = device, {"tile": tile, "overlap": overlap}

    @cached_property
    def _scanned(self) -> tuple[dict[str, Upscaler], dict[str, str]]:
        models: dict[str, Upscaler] = {}
        skipped: dict[str, str] = {}  # name -> why, the reason naming the file
        for folder in self.dirs:
            if not folder.is_dir():
                log.warning("upscaler folder %s: not a folder; skipped", folder)
                continue
            for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in MODEL_SUFFIXES and p.is_file()):
                taken = REGISTRY.get(path.stem) or models.get(path.stem)
                try:
                    if taken is not None:
                        raise ValueError(
                            f"{path}: the name {path.stem!r} is taken by {taken.model_path or 'a pixel upscaler'}"
                        )
                    models[path.stem] = model_upscaler(path, self.device, **self._tiling)
                except (ValueError, OSError, RuntimeError) as exc:  # UpscalerError, CheckpointError, what torch raises
                    skipped.setdefault(path.stem, str(exc))
                    log.warning("upscaler skipped: %s", exc)
        return models, skipped

    @property
    def models(self) -> list[Upscaler]:
        """The model upscalers found in the folders."""
        return list(self._scanned[0].values())

    @property
    def skipped(self) -> dict[str, str]:
        """Files of the folders that are not usable: name (file stem) -> why, naming the file."""
        return dict(self._scanned[1])

    def all(self) -> dict[str, Upscaler]:
        """Every upscaler by name: the pixel ones, then the models."""
        return {**REGISTRY, **self._scanned[0]}

    def find(self, name: str, setting: str = "upscaler") -> Upscaler:
        """The upscaler called `name` (exactly, as A1111), or a `SettingError` naming `setting` and either the file
        of that name that is not usable or the upscalers there are. A pixel upscaler is found without reading the
        folders."""
        if name in REGISTRY:
            return REGISTRY[name]
        models, skipped = self._scanned
        if name in models:
            return models[name]
        if name in skipped:
            raise SettingError(setting, f"{setting}: upscaler {name!r} cannot be used: {skipped[name]}")
        raise SettingError(
            setting, f"{setting}: could not find upscaler named {name!r}; upscalers: {', '.join(self.all())}"
        )


BUILTIN = Upscalers()
"""The pixel upscalers alone (no folders)."""


def find(name: str, setting: str = "upscaler", available: Upscalers | None = None) -> Upscaler:
    """The upscaler called `name` among `available` (default: the pixel ones), or a `SettingError` naming `setting`."""
    return (available or BUILTIN).find(name, setting)


def resize(
    img: Image.Image,
    width: int,
    height: int,
    upscaler: str | Upscaler | None,
    available: Upscalers | None = None,
    seamless: str | None = None,
) -> Image.Image:
    """A1111's resize inside `resize_image`: Lanczos, except that an enlargement goes through `upscaler` first (a
    model upscaler, or one of the pixel ones; a name is looked up in `available`, default the pixel ones) when one is
    chosen; masks (mode L) are always resized with Lanczos. `seamless` ("x", "y", "xy"): the image wraps on those
    axes and so does the result (the resampling sees the far edge's pixels across the wrap, `wrap_padded`)."""
    if seamless:
        padded, mx, my = wrap_padded(img, seamless)
        fx, fy = width / img.width, height / img.height
        big = resize(padded, round(padded.width * fx), round(padded.height * fy), upscaler, available)
        fx, fy = big.width / padded.width, big.height / padded.height
        box = (mx * fx, my * fy, (mx + img.width) * fx, (my + img.height) * fy)
        return big.resize((width, height), Image.Resampling.LANCZOS, box=box)
    name = upscaler.name if isinstance(upscaler, Upscaler) else upscaler
    if name is None or name == NONE or img.mode == "L":
        return img.resize((width, height), Image.Resampling.LANCZOS)
    scale = max(width / img.width, height / img.height)
    if scale > 1.0:
        chosen = upscaler if isinstance(upscaler, Upscaler) else find(name, available=available)
        img = chosen.upscale(img, scale)
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    return img


WRAP_MARGIN = 8
"""Source pixels repeated around a seamless image before resampling: more than any resampling kernel reaches."""


def wrap_padded(img: Image.Image, seamless: str) -> tuple[Image.Image, int, int]:
    """`img` with `WRAP_MARGIN` pixels of the opposite edge repeated around it on the `seamless` axes ("x", "y",
    "xy"), and the margins added on x and y."""
    w, h = img.size
    mx = min(WRAP_MARGIN, w) if "x" in seamless else 0
    my = min(WRAP_MARGIN, h) if "y" in seamless else 0
    padded = Image.new(img.mode, (w + 2 * mx, h + 2 * my))
    for dx in (-w, 0, w) if mx else (0,):
        for dy in (-h, 0, h) if my else (0,):
            padded.paste(img, (mx + dx, my + dy))
    return padded, mx, my
