"""Control maps made without downloaded models: edges (OpenCV's Canny), line art from a drawing (invert), a drawing's
strokes (scribble, threshold), and depth and normal maps from a renderer's exact passes (Blender's Z / Depth and
Normal passes). "none": the image is a control map already. Estimators that need weights (MiDaS, line-art networks)
are not here: a unit asking for one is refused by name (`module`).

Conventions of the maps the released ControlNets were trained on:
- depth: near = white, far = black. `depth_map` normalises inverse depth (1/z, a disparity, as the MiDaS maps the
  depth ControlNets were trained on) between the nearest and farthest surface (`mode="inverse"`), or the depth
  itself (`mode="linear"`); pixels with no surface (infinite or non-finite, or beyond `far`) are black.
- normals: camera space encoded as colour `(n + 1) / 2`: red = +X (right), green = +Y (up), blue = +Z (toward the
  camera), so a surface facing the camera is (128, 128, 255), the OpenGL normal-map convention of the normal
  ControlNets' maps. Blender's Normal pass is in world space: pass the camera's world-to-camera rotation
  (`camera_rotation`, the inverse of the camera's world rotation) to bring it into camera space. Pixels with no
  surface (a zero vector) are (128, 128, 128).

Every function takes PIL images or numpy arrays and returns an uint8 HxWx3 map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import images, limits, projection


def _cv2(what: str) -> Any:
    """OpenCV, an optional extra (`sd-core[controlnet]`): its wheels need numpy 2, which Blender's Python lacks."""
    try:
        import cv2
    except ImportError as e:  # missing, or built for another numpy
        raise limits.SettingError("module", f"{what} needs OpenCV: pip install 'sd-core[controlnet]' ({e})") from None
    return cv2


def _rgb(image: Any) -> np.ndarray:
    try:
        return images.to_rgb_array(image, "control_image")
    except (TypeError, ValueError) as e:
        raise limits.SettingError("control_image", f"control_image is not a usable picture: {e}") from None


def _grey3(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def resize_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """The A1111 extension's processor resolution: the image scaled so its shorter side is `resolution` (OpenCV's
    area filter shrinking, cubic enlarging, as the extension); unchanged for `resolution` <= 0."""
    if resolution <= 0:
        return image
    cv2 = _cv2("resizing to a processor resolution")
    h, w = image.shape[:2]
    k = resolution / min(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    if size == (w, h):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)


def canny(image: Any, low: float = 100, high: float = 200) -> np.ndarray:
    """White edges on black: OpenCV's Canny on the RGB image with hysteresis thresholds `low` and `high`, as the
    A1111 extension's "canny"."""
    limits.check_number("threshold_a", low, 1, 255)
    limits.check_number("threshold_b", high, 1, 255)
    return _grey3(_cv2("the canny preprocessor").Canny(_rgb(image), low, high))


def invert(image: Any) -> np.ndarray:
    """White lines on black from a drawing's black lines on white (the line-art ControlNets' input)."""
    return 255 - _rgb(image)


def threshold(image: Any, value: float = 127) -> np.ndarray:
    """White where the image's grey level is above `value`, black elsewhere."""
    limits.check_number("threshold_a", value, 0, 255)
    grey = _rgb(image).astype(np.float32).mean(axis=2)
    return _grey3(np.where(grey > value, 255, 0).astype(np.uint8))


def scribble(image: Any, value: float = 127) -> np.ndarray:
    """A drawing's dark strokes as white on black (the scribble ControlNets' input): pixels whose darkest channel is
    below `value`, as the A1111 extension's simple scribble."""
    limits.check_number("threshold_a", value, 0, 255)
    darkest = _rgb(image).min(axis=2)
    return _grey3(np.where(darkest < value, 255, 0).astype(np.uint8))


def none(image: Any) -> np.ndarray:
    """The image as it is: a control map already."""
    return _rgb(image)


def _pass(values: Any, name: str, channels: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 3 and channels == 1 and arr.shape[2] >= 1:
        arr = arr[:, :, 0]  # Blender's Z pass saved as RGB(A): every channel holds the depth
    if channels == 3 and arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    want = 2 if channels == 1 else 3
    if arr.ndim != want or (channels == 3 and arr.shape[2] != 3) or arr.size == 0:
        shape = "HxW" if channels == 1 else "HxWx3"
        raise limits.SettingError(name, f"{name} must be an {shape} array of floats, got shape {arr.shape}")
    return arr


def depth_map(depth: Any, *, near: float | None = None, far: float | None = None, mode: str = "inverse") -> np.ndarray:
    """A renderer's depth pass (distance from the camera per pixel, HxW floats) as a depth ControlNet's map: near =
    white. `near`/`far`: the distances mapped to white and black (None: the nearest and farthest surface seen).
    `mode`: "inverse" (1/z, as MiDaS's maps) or "linear"."""
    limits.check_choice("depth_mode", mode, ("inverse", "linear"))
    z = _pass(depth, "depth", 1)
    try:
        grey = projection.depth_levels(z, near=near, far=far, mode=mode)
    except ValueError as e:
        raise limits.SettingError("depth", str(e)) from None
    return _grey3(grey)


def normal_map(normals: Any, *, camera_rotation: Any = None) -> np.ndarray:
    """A renderer's normal pass (HxWx3 unit vectors) as a normal ControlNet's map (camera space, `(n + 1) / 2`, see
    the module's conventions). `camera_rotation`: 3x3 world-to-camera rotation for world-space passes (Blender's)."""
    n = _pass(normals, "normals", 3)
    if camera_rotation is not None:
        rot = np.asarray(camera_rotation, dtype=np.float64)
        if rot.shape != (3, 3):
            raise limits.SettingError("camera_rotation", f"camera_rotation must be 3x3, got shape {rot.shape}")
        n = n @ rot.T
    return projection.normal_colours(n)


@dataclass(frozen=True)
class Module:
    """A preprocessor as the server lists it: the function of (image, threshold_a, threshold_b), and its sliders
    (A1111's `module_detail`): (name, default, min, max) for threshold_a and threshold_b."""

    run: Callable[[Any, float, float], np.ndarray]
    sliders: tuple[tuple[str, float, float, float], ...] = ()
    resizes: bool = True  # scaled to the processor resolution first (A1111: all but "none")


MODULES: dict[str, Module] = {
    "none": Module(lambda img, a, b: none(img), resizes=False),
    "canny": Module(
        lambda img, a, b: canny(img, a, b), (("Low Threshold", 100, 1, 255), ("High Threshold", 200, 1, 255))
    ),
    "invert": Module(lambda img, a, b: invert(img)),
    "threshold": Module(lambda img, a, b: threshold(img, a), (("Binarization Threshold", 127, 0, 255),)),
    "scribble": Module(lambda img, a, b: scribble(img, a), (("Threshold", 127, 0, 255),)),
}
"""The preprocessors the server offers by name (A1111 module names); depth and normal maps come from renderer
passes through the Python API (`depth_map`, `normal_map`), not from pictures."""
ALIASES = {"invert (from white bg & black line)": "invert", "scribble_threshold": "scribble"}


def run(module: str, image: Any, resolution: int = -1, threshold_a: float = -1, threshold_b: float = -1) -> np.ndarray:
    """`module` (a name of `MODULES` or an alias) on `image` at the processor `resolution` (-1: 512, A1111's
    default), thresholds -1 for the module's defaults. An unknown module is a `SettingError` naming `module`."""
    name = ALIASES.get(module, module)
    if name not in MODULES:
        known = ", ".join(MODULES)
        raise limits.SettingError("module", f"unknown preprocessor module {module!r} (available: {known})")
    entry = MODULES[name]
    defaults = [s[1] for s in entry.sliders] + [0, 0]
    a = defaults[0] if threshold_a == -1 else threshold_a
    b = defaults[1] if threshold_b == -1 else threshold_b
    arr = _rgb(image)
    if entry.resizes:
        arr = resize_short_side(arr, 512 if resolution == -1 else int(resolution))
    return entry.run(arr, a, b)
