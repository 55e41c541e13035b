"""Colour matching of repainted regions to their surroundings, in CIE Lab (own sRGB<->Lab maths, D65)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .images import check_same_size, to_mask_array, to_rgb_array
from .masks import grow_mask

_SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_XYZ_TO_SRGB = np.linalg.inv(_SRGB_TO_XYZ)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_DELTA = 6.0 / 29.0


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 (or float in [0, 255]) sRGB HxWx3 -> CIE L*a*b* (D65), float64."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _SRGB_TO_XYZ.T / _WHITE_D65
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) -> sRGB float64 in [0, 255] (clipped, not rounded)."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0)) * _WHITE_D65
    lin = np.clip(xyz @ _XYZ_TO_SRGB.T, 0.0, 1.0)
    c = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.clip(c * 255.0, 0.0, 255.0)


def color_match(
    generated: Any, original: Any, mask: Any, *, ring: int | None = 32, strength: float = 1.0
) -> np.ndarray:
    """Match the colour statistics of the repainted region to its surroundings (uint8 HxWx3 result).

    In CIE Lab (own sRGB<->Lab math, D65) and per channel, the generated pixels inside the mask (weighted by the mask)
    are shifted and scaled so their mean and standard deviation equal those of the original's unmasked pixels within
    `ring` pixels of the mask (`ring=None`: all unmasked pixels). The std ratio is clamped to [0.5, 2] so a flat
    region cannot blow noise up. The change is applied in proportion to mask * strength: pixels with mask == 0 keep
    their exact bytes. Without unmasked surroundings (mask covers everything) the image is returned unchanged.
    """
    gen = to_rgb_array(generated, "generated")
    orig = to_rgb_array(original, "original")
    m = to_mask_array(mask)
    check_same_size(gen, orig, "generated", "original")
    check_same_size(gen, m, "generated", "mask")
    rows, cols = np.flatnonzero(m.max(axis=1) > 0), np.flatnonzero(m.max(axis=0) > 0)
    if rows.size == 0:
        return gen.copy()
    crop: tuple[slice, slice] = (slice(None), slice(None))
    if ring is not None:  # only the mask's box plus the ring matters
        r = int(ring)
        crop = (slice(max(rows[0] - r, 0), rows[-1] + r + 1), slice(max(cols[0] - r, 0), cols[-1] + r + 1))
    mm = m[crop]
    inside = mm > 0
    outside = mm == 0
    if ring is not None:
        outside &= grow_mask(inside.astype(np.float32), int(ring)) > 0
    if not outside.any():
        return gen.copy()
    region = rgb_to_lab(gen[crop][inside])
    surround = rgb_to_lab(orig[crop][outside])
    w = mm[inside].astype(np.float64)[:, None]
    mean_g = (region * w).sum(0) / w.sum()
    std_g = np.sqrt((((region - mean_g) ** 2) * w).sum(0) / w.sum())
    mean_o, std_o = surround.mean(0), surround.std(0)
    ratio = np.clip(std_o / np.maximum(std_g, 1e-6), 0.5, 2.0)
    ratio = np.where(std_g < 1e-6, 1.0, ratio)
    matched = (region - mean_g) * ratio + mean_o
    amount = np.clip(w * float(strength), 0.0, 1.0)
    out = gen.copy()
    view = out[crop]
    view[inside] = np.round(lab_to_rgb(region + (matched - region) * amount)).astype(np.uint8)
    return out
