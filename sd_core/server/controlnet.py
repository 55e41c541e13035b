"""The A1111 ControlNet extension's API over the engine's ControlNets (`sd_core.Control`).

Requests: `alwayson_scripts: {"controlnet": {"args": [unit, ...]}}` on txt2img and img2img (the key matched
case-insensitively, as A1111). Every unit field is honoured or refused with a 422 naming it
(`alwayson_scripts.controlnet.args[N].field`); none is dropped silently:

- honoured: `enabled` (left out: true, as the extension's 2023 API; false skips the unit), `image` (base64, or
  `{"image": ...}` / `[image]`; `input_image` is its old name), `module` (`sd_core.controlnet.preprocess.MODULES`),
  `model` (a name of `/controlnet/model_list`, with or without its `[hash]`, resolved only inside
  `--controlnet-dir`), `weight` (0-2), `guidance_start`/`guidance_end` (the extension's step rule, start <= i/N <=
  end), `control_mode` (names or 0/1/2), `resize_mode` ("Just Resize"/0, "Crop and Resize"/1, the default, "Resize
  and Fill"/2: the map fitted to the generation size with `sd_core.resize.fit`'s "resize"/"crop"/"fill"),
  `processor_res`, `threshold_a`/`threshold_b` (-1: the module's defaults), `pixel_perfect` (the processor
  resolution from the image and generation sizes, as the extension), `save_detected_map` (true: each preprocessed
  map is appended to the response's images, as the extension), `hr_option` "Both";
- accepted with no effect on the image, listed in `info["ignored_fields"]`: `low_vram` (a memory option), `is_ui`,
  thresholds of a module without sliders;
- refused when set: `mask`/`mask_image` and a mask in `image` (the extension's inpaint masks), `hr_option` other than
  "Both", `advanced_weighting`, `effective_region_mask`, `union_control_type`, `guessmode`, `input_mode` other than
  "simple", and any field this table does not know.

Endpoints: `GET /controlnet/version`, `/controlnet/model_list`, `/controlnet/module_list`, `/controlnet/settings`,
`POST /controlnet/detect` (routes in `controlnet_routes.py`: this module imports without FastAPI, as the request
checks `sd_core.batch` shares). Loaded ControlNets are kept per process (`NetCache`, the last few used).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

import sd_core
from sd_core import limits, resize
from sd_core.controlnet import preprocess

from .api_error import ApiError, invalid
from .codec import decode_image, png_b64

SCRIPT = "controlnet"
SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
RESIZE_MODES = {"just resize": "resize", "crop and resize": "crop", "resize and fill": "fill"}
RESIZE_LABELS = {"resize": "Just Resize", "crop": "Crop and Resize", "fill": "Resize and Fill"}
CONTROL_MODES = {
    "balanced": "balanced",
    "my prompt is more important": "prompt",
    "controlnet is more important": "controlnet",
}
UNIT_FIELDS = {
    "enabled", "image", "input_image", "module", "model", "weight", "resize_mode", "low_vram", "processor_res",
    "threshold_a", "threshold_b", "guidance_start", "guidance_end", "pixel_perfect", "control_mode", "hr_option",
    "save_detected_map", "mask", "mask_image", "advanced_weighting", "effective_region_mask", "union_control_type",
    "guessmode", "input_mode", "is_ui",
}  # fmt: skip
DEFAULT_RES = 512


# --- the model folder ----------------------------------------------------------------------------------------


def short_hash(path: Path) -> str:
    """The extension's model hash: sha256 of 64 KiB at 1 MiB into the file (a folder: its weight file), 8 hex."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES)
        if not files:
            return "00000000"
        path = files[0]
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


class ControlNetFolder:
    """The ControlNets of `--controlnet-dir` (files with a model suffix and diffusers folders, subfolders included),
    read afresh for each listing so new files show without a restart. Names are the file stems."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def entries(self) -> dict[str, Path]:
        if self.root is None or not self.root.is_dir():
            return {}
        found: dict[str, Path] = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and path.suffix.lower() in SUFFIXES and not (path.parent / "config.json").is_file():
                found.setdefault(path.stem, path)
            elif path.is_dir() and (path / "config.json").is_file():
                found.setdefault(path.name, path)
        return found

    def model_list(self) -> list[str]:
        return [f"{name} [{short_hash(path)}]" for name, path in self.entries().items()]

    def resolve(self, name: str, field_name: str) -> tuple[str, Path]:
        """(the listed name with its hash, the path) of `name` ("stem", "stem [hash]" or "stem.ext"); names with a
        path in them are refused: only the folder's own models are served."""
        text = name.strip()
        if text.endswith("]") and " [" in text:
            text = text[: text.rindex(" [")]
        if "/" in text or "\\" in text or ".." in text or Path(text).is_absolute() or text.startswith("~"):
            raise invalid(field_name, f"{field_name}: {name!r} is refused: name a model of /controlnet/model_list")
        entries = self.entries()
        stem = Path(text).stem if Path(text).suffix.lower() in SUFFIXES else text
        if stem not in entries:
            listed = ", ".join(entries) or f"none: no --controlnet-dir{'' if self.root is None else ' models'}"
            raise invalid(field_name, f"{field_name}: ControlNet model {name!r} not found (available: {listed})")
        path = entries[stem]
        return f"{stem} [{short_hash(path)}]", path


class NetCache:
    """Loaded ControlNets by (path, modification time, device, dtype), the `size` most recently used."""

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self._nets: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, device: Any, dtype: Any) -> Any:
        key = (str(path), path.stat().st_mtime_ns, str(device), str(dtype))
        with self._lock:
            if key in self._nets:
                self._nets.move_to_end(key)
                return self._nets[key]
        net = sd_core.load_controlnet(path, device=device, dtype=dtype)
        with self._lock:
            self._nets[key] = net
            while len(self._nets) > self.size:
                self._nets.popitem(last=False)
        return net


NETS = NetCache()


# --- request units ---------------------------------------------------------------------------------------------


@dataclass
class UnitPlan:
    """One enabled unit, checked on the request thread; the map is made on the worker once the size is known."""

    index: int
    prefix: str
    image: Image.Image
    module: str
    model: str  # "name [hash]"
    path: Path
    weight: float
    start: float
    end: float
    control_mode: str
    resize_mode: str
    processor_res: int
    threshold_a: float
    threshold_b: float
    pixel_perfect: bool
    save_detected_map: bool
    ignored: list[str] = field(default_factory=list)


def _choice(value: Any, table: dict[str, str], numbers: dict[int, str], name: str) -> str:
    if isinstance(value, bool):
        raise invalid(name, f"{name}: {value!r} is not one of {list(table)}")
    if isinstance(value, int) and value in numbers:
        return numbers[value]
    if isinstance(value, str) and value.strip().lower() in table:
        return table[value.strip().lower()]
    raise invalid(name, f"{name}: {value!r} is not one of {[*numbers, *(label for label in table)]}")


def _number(unit: dict, key: str, default: float, low: float, high: float, prefix: str) -> float:
    value = unit.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise invalid(f"{prefix}.{key}", f"{prefix}.{key}: {value!r} must be a number from {low:g} to {high:g}")
    return float(value)


def _flag(unit: dict, key: str, default: bool, prefix: str) -> bool:
    value = unit.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"{prefix}.{key}", f"{prefix}.{key}: {value!r} must be true or false")
    return value


def _image(unit: dict, prefix: str, max_pixels: int) -> Image.Image:
    key = "image" if unit.get("image") not in (None, "") else "input_image"
    value = unit.get(key)
    name = f"{prefix}.{key}"
    if isinstance(value, list):
        if len(value) != 1:
            raise invalid(name, f"{name}: give one image (a list of {len(value)}; masks are not supported)")
        value = value[0]
    if isinstance(value, dict):
        if value.get("mask") not in (None, ""):
            raise invalid(f"{name}.mask", f"{name}.mask: unit masks are refused (the extension's inpaint units)")
        value, name = value.get("image"), f"{name}.image"
    if value in (None, ""):
        raise invalid(name, f"{name}: a ControlNet unit needs an image (none given)")
    return decode_image(value, name, max_pixels)


def _unit(unit: Any, index: int, folder: ControlNetFolder, max_pixels: int) -> UnitPlan | None:
    prefix = f"alwayson_scripts.{SCRIPT}.args[{index}]"
    if not isinstance(unit, dict):
        raise invalid(prefix, f"{prefix}: a ControlNet unit must be an object, got {type(unit).__name__}")
    unknown = sorted(set(unit) - UNIT_FIELDS)
    if unknown:
        raise invalid(f"{prefix}.{unknown[0]}", f"{prefix}.{unknown[0]}: not a ControlNet unit field this server knows")
    if not _flag(unit, "enabled", True, prefix):
        return None
    for key, allowed in (
        ("mask", (None, "")),
        ("mask_image", (None, "")),
        ("advanced_weighting", (None,)),
        ("effective_region_mask", (None, "")),
        ("union_control_type", (None, "Unknown", "")),
        ("guessmode", (None, False)),
        ("input_mode", (None, "simple", "SIMPLE")),
    ):
        if unit.get(key) not in allowed:
            raise invalid(f"{prefix}.{key}", f"{prefix}.{key}: {unit[key]!r:.60} is refused: not supported here")
    hr = unit.get("hr_option", "Both")
    if hr not in (None, "Both", 0):
        raise invalid(f"{prefix}.hr_option", f"{prefix}.hr_option: {hr!r} is refused: only 'Both' is supported")
    module_name = unit.get("module") or "none"
    if not isinstance(module_name, str):
        raise invalid(f"{prefix}.module", f"{prefix}.module: must be a name")
    module = preprocess.ALIASES.get(module_name, module_name)
    if module not in preprocess.MODULES:
        raise invalid(
            f"{prefix}.module",
            f"{prefix}.module: Module not available: {module_name!r} (available: {', '.join(preprocess.MODULES)})",
        )
    model = unit.get("model")
    if not isinstance(model, str) or model in ("", "None", "none"):
        raise invalid(f"{prefix}.model", f"{prefix}.model: an enabled unit needs a model of /controlnet/model_list")
    listed, path = folder.resolve(model, f"{prefix}.model")
    start = _number(unit, "guidance_start", 0.0, 0.0, 1.0, prefix)
    end = _number(unit, "guidance_end", 1.0, 0.0, 1.0, prefix)
    if start >= end:
        raise invalid(f"{prefix}.guidance_start", f"{prefix}.guidance_start: {start:g} must be below guidance_end")
    res = _number(unit, "processor_res", -1, -1, 4096, prefix)
    plan = UnitPlan(
        index=index,
        prefix=prefix,
        image=_image(unit, prefix, max_pixels),
        module=module,
        model=listed,
        path=path,
        weight=_number(unit, "weight", 1.0, 0.0, 2.0, prefix),
        start=start,
        end=end,
        control_mode=_choice(
            unit.get("control_mode", "Balanced"),
            CONTROL_MODES,
            {0: "balanced", 1: "prompt", 2: "controlnet"},
            f"{prefix}.control_mode",
        ),  # fmt: skip
        resize_mode=_choice(
            unit.get("resize_mode", "Crop and Resize"),
            RESIZE_MODES,
            {0: "resize", 1: "crop", 2: "fill", 3: "resize"},
            f"{prefix}.resize_mode",
        ),  # fmt: skip
        processor_res=-1 if res == -1 else int(res),
        threshold_a=_number(unit, "threshold_a", -1, -1, 1024, prefix),
        threshold_b=_number(unit, "threshold_b", -1, -1, 1024, prefix),
        pixel_perfect=_flag(unit, "pixel_perfect", False, prefix),
        save_detected_map=_flag(unit, "save_detected_map", True, prefix),
    )
    if _flag(unit, "low_vram", False, prefix):
        plan.ignored.append(f"{prefix}.low_vram")
    if _flag(unit, "is_ui", False, prefix):
        plan.ignored.append(f"{prefix}.is_ui")
    sliders = len(preprocess.MODULES[module].sliders)
    for n, key in enumerate(("threshold_a", "threshold_b")):
        if n >= sliders and getattr(plan, key) != -1 and unit.get(key) is not None:
            plan.ignored.append(f"{prefix}.{key}")
    return plan


def plan_units(req: Any, max_pixels: int, folder: ControlNetFolder) -> list[UnitPlan]:
    """The request's enabled ControlNet units, checked (422s name the field); [] without the script."""
    scripts = req.alwayson_scripts or {}
    entry = next((value for key, value in scripts.items() if key.lower() == SCRIPT), None)
    if entry is None:
        return []
    where = f"alwayson_scripts.{SCRIPT}"
    args = entry.get("args") if isinstance(entry, dict) else None
    if not isinstance(args, list):
        raise invalid(f"{where}.args", f"{where}.args: expected a list of ControlNet units")
    units = [_unit(unit, n, folder, max_pixels) for n, unit in enumerate(args)]
    return [u for u in units if u is not None]


def _pixel_perfect_res(image: Image.Image, width: int, height: int, mode: str) -> int:
    """The extension's pixel-perfect processor resolution for a `mode` fit of `image` into width x height."""
    w0, h0 = image.size
    k = (min if mode == "fill" else max)(height / h0, width / w0)
    return round(k * min(h0, w0))


def engine_units(units: list[UnitPlan], width: int, height: int, device: Any, dtype: Any) -> tuple[list, list]:
    """(the `sd_core.Control` units for a width x height generation, the detected maps to return). Worker side."""
    controls, maps = [], []
    for u in units:
        res = _pixel_perfect_res(u.image, width, height, u.resize_mode) if u.pixel_perfect else u.processor_res
        try:
            detected = preprocess.run(u.module, u.image, res if res != -1 else DEFAULT_RES, u.threshold_a,
                                      u.threshold_b)  # fmt: skip
            fitted = resize.fit(Image.fromarray(detected), width, height, u.resize_mode)
            net = NETS.get(u.path, device, dtype)
            info = {
                "Model": u.model,
                "Resize Mode": RESIZE_LABELS[u.resize_mode],
                "Processor Res": res if res != -1 else DEFAULT_RES,
                "Threshold A": u.threshold_a,
                "Threshold B": u.threshold_b,
                "Pixel Perfect": u.pixel_perfect,
            }
            controls.append(
                sd_core.Control(
                    net,
                    fitted,
                    strength=u.weight,
                    start=u.start,
                    end=u.end,
                    control_mode=u.control_mode,
                    steps="a1111",
                    module=u.module,
                    info=info,
                )  # fmt: skip
            )
        except limits.SettingError as exc:
            name = {"threshold_a": "threshold_a", "threshold_b": "threshold_b"}.get(exc.setting, "image")
            raise invalid(f"{u.prefix}.{name}", f"{u.prefix}.{name}: {exc}") from None
        except ValueError as exc:  # a file in the folder that is no usable ControlNet (CheckpointError)
            raise invalid(f"{u.prefix}.model", f"{u.prefix}.model: {exc}") from None
        if u.save_detected_map and u.module != "none":
            maps.append(Image.fromarray(detected))
    return controls, maps


# --- endpoints -------------------------------------------------------------------------------------------------


class DetectRequest(BaseModel):
    controlnet_module: str = Field("none", max_length=200)
    controlnet_input_images: list[str] = Field(default_factory=list, max_length=64)
    controlnet_masks: list[str] | None = Field(None, max_length=64)
    controlnet_processor_res: int = Field(DEFAULT_RES, ge=-1, le=4096)
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    low_vram: bool = False


def detect(body: DetectRequest, max_pixels: int) -> dict[str, Any]:
    """`POST /controlnet/detect`: each image through the module, base64 PNGs."""
    module = preprocess.ALIASES.get(body.controlnet_module, body.controlnet_module)
    if module not in preprocess.MODULES:
        raise invalid("controlnet_module", f"Module not available: {body.controlnet_module!r}")
    if not body.controlnet_input_images:
        raise invalid("controlnet_input_images", "No image selected")
    if body.controlnet_masks:
        raise invalid("controlnet_masks", "controlnet_masks: masks are refused: not supported here")
    out = []
    for n, text in enumerate(body.controlnet_input_images):
        img = decode_image(text, f"controlnet_input_images[{n}]", max_pixels)
        try:
            res = body.controlnet_processor_res
            arr = preprocess.run(module, img, res, body.controlnet_threshold_a, body.controlnet_threshold_b)
        except limits.SettingError as exc:
            name = f"controlnet_{exc.setting}" if exc.setting.startswith("threshold") else "controlnet_input_images"
            raise invalid(name, f"{name}: {exc}") from None
        out.append(png_b64(Image.fromarray(np.asarray(arr))))
    return {"info": "Success", "images": out}


def module_list() -> dict[str, Any]:
    detail = {
        name: {
            "model_free": True,
            "sliders": [
                {"name": label, "value": value, "min": low, "max": high} for label, value, low, high in m.sliders
            ],
        }
        for name, m in preprocess.MODULES.items()
    }
    return {"module_list": list(preprocess.MODULES), "module_detail": detail}


__all__ = [
    "ApiError",
    "ControlNetFolder",
    "DetectRequest",
    "UnitPlan",
    "detect",
    "engine_units",
    "module_list",
    "plan_units",
]
