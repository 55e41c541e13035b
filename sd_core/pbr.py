"""A PBR set from a texture: height, normal and roughness maps derived from an albedo by image processing.

numpy only (no torch, no PIL): the Blender add-on ships this file as `sd_pbr.py` and runs it in Blender's own
Python. Arrays are rows top-down (PNG order), values floats in [0, 1]; `seamless` ("", "x", "y" or "xy", as
`GenerationSettings.tiling`) makes every neighbourhood wrap around on those axes, so the maps of a seamless texture
tile exactly as it does; other edges repeat their last texel (one-sided differences).

The maths:

- **Height** `h` (0 = low, 1 = high) is the texture's relative luminance, `Y = 0.2126 R + 0.7152 G + 0.0722 B` of the
  linear-light values (sRGB decoded; ITU-R BT.709 weights), smoothed by a small box blur (`blur` texels, wrapped when
  seamless: it keeps pixel noise out of the normals), then stretched to span 0..1. Bright reads as raised, dark as
  recessed: the usual "height from albedo" assumption (crevices are shaded), which suits stone, bricks, bark, fabric.
- **Normal**, tangent space in the OpenGL convention that Blender's Normal Map node expects (+X to the texture's
  right = U, +Y up = V, +Z out of the surface; "green up"). With the surface `z(u, v) = strength * h` measured in
  texels, the normal is `normalize(-dz/du, -dz/dv, 1)`, the derivatives by central differences
  (`(h[x+1] - h[x-1]) / 2`); since rows run top-down, `dz/dv = -dz/drow`. Stored as `(n + 1) / 2` in RGB, to be read as
  Non-Color data.
- **Roughness** `r = clip(base + spread * (0.5 - h) + detail * |h - blur(h)| / max, 0, 1)`: recessed and busy
  (high-frequency) areas read rougher, raised smooth areas shinier. A heuristic, like every albedo-to-roughness
  tool's; `base` sets the overall value.
"""

from __future__ import annotations

import numpy as np

BT709 = (0.2126, 0.7152, 0.0722)


def _axes(seamless: str) -> tuple[bool, bool]:
    """(wrap across columns, wrap across rows) for a `seamless` value "", "x", "y" or "xy"."""
    if seamless not in ("", "x", "y", "xy"):
        raise ValueError(f"seamless must be '', 'x', 'y' or 'xy', not {seamless!r}")
    return "x" in seamless, "y" in seamless


def _shift(a: np.ndarray, offset: int, axis: int, wrap: bool) -> np.ndarray:
    """`a` moved by `offset` along `axis` (a[i - offset] at i): wrapped, or with the edge texel repeated."""
    if wrap:
        return np.roll(a, offset, axis=axis)
    n = a.shape[axis]
    index = np.clip(np.arange(n) - offset, 0, n - 1)
    return np.take(a, index, axis=axis)


def _central(h: np.ndarray, axis: int, wrap: bool) -> np.ndarray:
    """dh/d(index) along `axis`: central differences; one-sided at edges that do not wrap."""
    ahead, behind = _shift(h, -1, axis, wrap), _shift(h, 1, axis, wrap)
    d = (ahead - behind) / 2.0
    if not wrap and h.shape[axis] > 1:  # the edge texel has one neighbour: its own difference, not half of it
        first = [slice(None)] * h.ndim
        last = [slice(None)] * h.ndim
        first[axis], last[axis] = 0, -1
        d[tuple(first)] *= 2.0
        d[tuple(last)] *= 2.0
    return d


def box_blur(a: np.ndarray, radius: int, seamless: str = "") -> np.ndarray:
    """Mean over the (2 radius + 1)^2 square around each texel (wrapped on seamless axes, edges repeated else)."""
    if radius <= 0:
        return a.astype(np.float64)
    wrap_x, wrap_y = _axes(seamless)
    out = a.astype(np.float64)
    for axis, wrap in ((0, wrap_y), (1, wrap_x)):
        total = np.zeros_like(out)
        for offset in range(-radius, radius + 1):
            total += _shift(out, offset, axis, wrap)
        out = total / (2 * radius + 1)
    return out


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def to_float(rgb: np.ndarray) -> np.ndarray:
    """uint8 (0-255) or float (0-1) HxWx3/4 -> float64 HxWx3 in [0, 1] (alpha dropped)."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] < 3:
        raise ValueError(f"expected an HxWx3 or HxWx4 image, got shape {a.shape}")
    a = a[:, :, :3]
    return a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else np.clip(a.astype(np.float64), 0.0, 1.0)


def height_map(rgb: np.ndarray, seamless: str = "", blur: int = 1) -> np.ndarray:
    """HxW height in [0, 1] from an sRGB texture (module docstring)."""
    linear = srgb_to_linear(to_float(rgb))
    luminance = linear @ np.array(BT709)
    h = box_blur(luminance, blur, seamless)
    span = h.max() - h.min()
    return (h - h.min()) / span if span > 1e-12 else np.zeros_like(h)


def normals(height: np.ndarray, strength: float = 4.0, seamless: str = "") -> np.ndarray:
    """HxWx3 unit normals (x right, y up, z out) of the surface z = strength * height, in texel units."""
    wrap_x, wrap_y = _axes(seamless)
    z = strength * np.asarray(height, dtype=np.float64)
    dz_du = _central(z, 1, wrap_x)
    dz_dv = -_central(z, 0, wrap_y)  # rows run top-down, V runs up
    n = np.stack([-dz_du, -dz_dv, np.ones_like(z)], axis=-1)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def normal_map(height: np.ndarray, strength: float = 4.0, seamless: str = "") -> np.ndarray:
    """The tangent-space normal map (OpenGL, green up) as HxWx3 floats in [0, 1]: `(n + 1) / 2`."""
    return (normals(height, strength, seamless) + 1.0) / 2.0


def roughness_map(
    height: np.ndarray, seamless: str = "", base: float = 0.6, spread: float = 0.4, detail: float = 0.2
) -> np.ndarray:
    """HxW roughness in [0, 1] (module docstring)."""
    h = np.asarray(height, dtype=np.float64)
    busy = np.abs(h - box_blur(h, 2, seamless))
    busy = busy / busy.max() if busy.max() > 1e-12 else busy
    return np.clip(base + spread * (0.5 - h) + detail * busy, 0.0, 1.0)


def pbr_maps(rgb: np.ndarray, seamless: str = "", strength: float = 4.0) -> dict[str, np.ndarray]:
    """{"height": HxW, "normal": HxWx3, "roughness": HxW}, floats in [0, 1], from an sRGB texture."""
    h = height_map(rgb, seamless)
    return {"height": h, "normal": normal_map(h, strength, seamless), "roughness": roughness_map(h, seamless)}
