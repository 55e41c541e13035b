"""Pixels between Blender images and numpy, and PNG bytes to pixels.

Blender keeps rows bottom-up; everything outside this module (PNG, the engine) is top-down, so the flip happens
here and only here. Byte images hold display-encoded (sRGB) values, float images scene-linear values; the engine
works on sRGB bytes, so float images are converted on the way out and back. Pixels move with
`foreach_get`/`foreach_set` into preallocated float32 arrays (`image.pixels[:]` is about 100 times slower).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import bpy
import numpy as np

from .engine import UserError

RAW_SPACES = {"Non-Color", "Raw", "Generic Data", "Data"}  # float data that is not colour: no transfer function


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4))


def is_linear(image: Any) -> bool:
    """Whether the image's stored values are scene-linear colour (float buffers), not display-encoded bytes."""
    return bool(image.is_float) and image.colorspace_settings.name not in RAW_SPACES


def read_rgba(image: Any) -> np.ndarray:
    """The stored values as float32 HxWx4, rows top-down. A clear error for images without pixels."""
    width, height = image.size  # asking for the size makes Blender load a file image
    channels = image.channels
    if width == 0 or height == 0 or len(image.pixels) != width * height * channels:
        where = f" (its file {image.filepath!r} is missing or unreadable)" if image.filepath else ""
        raise UserError(f"The image '{image.name}' has no pixels{where}: reload it or pick another image")
    flat = np.empty(width * height * channels, dtype=np.float32)
    image.pixels.foreach_get(flat)
    pixels = flat.reshape(height, width, channels)[::-1]
    if channels == 4:
        return np.ascontiguousarray(pixels)
    rgba = np.ones((height, width, 4), dtype=np.float32)
    rgba[:, :, :3] = pixels[:, :, :3] if channels >= 3 else pixels[:, :, :1]
    return rgba


def to_srgb8(image: Any) -> np.ndarray:
    """uint8 HxWx4 top-down, colour display-encoded (what the engine expects); alpha unchanged."""
    rgba = read_rgba(image)
    if is_linear(image):
        rgba[:, :, :3] = linear_to_srgb(rgba[:, :, :3])
    return np.round(np.clip(rgba, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_rgba(image: Any, rgba: np.ndarray) -> None:
    """float32 HxWx4 top-down, in the image's own storage space, into the image (resized to fit if needed)."""
    height, width = rgba.shape[:2]
    if tuple(image.size) != (width, height):
        image.scale(width, height)
    image.pixels.foreach_set(np.ascontiguousarray(rgba[::-1], dtype=np.float32).ravel())
    image.update()


def write_srgb8(image: Any, pixels: np.ndarray) -> None:
    """uint8 HxWx3/4 top-down display-encoded pixels into the image, converting for float images."""
    height, width = pixels.shape[:2]
    rgba = np.ones((height, width, 4), dtype=np.float32)
    rgba[:, :, : pixels.shape[2]] = pixels.astype(np.float32) / 255.0
    if is_linear(image):
        rgba[:, :, :3] = srgb_to_linear(rgba[:, :, :3])
    write_rgba(image, rgba)


def new_image(name: str, pixels: np.ndarray) -> Any:
    """A new 8-bit sRGB image datablock holding uint8 HxWx3/4 top-down pixels exactly."""
    height, width = pixels.shape[:2]
    image = bpy.data.images.new(name, width, height, alpha=True, float_buffer=False)
    write_srgb8(image, pixels)
    return image


@contextmanager
def temp_path(suffix: str) -> Iterator[str]:
    fd, path = tempfile.mkstemp(prefix="sd_core_", suffix=suffix)
    os.close(fd)
    try:
        yield path
    finally:
        try:
            os.remove(path)
        except OSError:
            pass


def png_to_array(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 HxWx4 top-down, decoded by Blender itself (no PIL in Blender's Python)."""
    with temp_path(".png") as path:
        with open(path, "wb") as fh:
            fh.write(data)
        image = bpy.data.images.load(path, check_existing=False)
        try:
            pixels = to_srgb8(image)
        finally:
            bpy.data.images.remove(image)
    return pixels
