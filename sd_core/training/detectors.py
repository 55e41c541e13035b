"""Measurable checks of a generated texture: which named colours it shows (a hue histogram) and which pattern it has
(stripe orientation from the 2D spectrum, checkerboard from its two balanced diagonal directions, dots from connected
blobs).

Deliberately simple and independent of the model: they are validated on the training generator
(`tests/training/test_detectors.py`), then used to score the model's samples (`sd_core.training.evaluate`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

HUE_RANGES: dict[str, tuple[float, float]] = {
    "red": (345.0, 15.0),
    "orange": (15.0, 43.0),
    "yellow": (43.0, 80.0),
    "green": (80.0, 175.0),
    "blue": (175.0, 255.0),
    "purple": (255.0, 320.0),
}
"""Hue intervals in degrees (red wraps through 0); 320-345 (magenta/pink) is no named colour."""
MIN_SATURATION = 0.4
MIN_VALUE = 0.3
WHITE = (0.25, 0.75)  # saturation below, value above
BLACK_VALUE = 0.25
NAMES = (*HUE_RANGES, "white", "black")
STRIPE_PURITY = 0.85
"""Share of the spectrum on one frequency axis that makes stripes: bricks reach about 0.8, waves 0.77, stripes 1."""


def as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] from a PIL image or an array."""
    arr = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {arr.shape}")
    return arr


def hsv(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1] of a uint8 RGB array."""
    rgb = arr.astype(np.float32) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    delta = mx - mn
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60.0
    hue = np.where(delta > 0, hue, 0.0)
    sat = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0)
    return hue % 360.0, sat, mx


def colour_labels(image: Image.Image | np.ndarray) -> np.ndarray:
    """Per-pixel index into `NAMES`, or -1 for pixels that are none of them (greys, pinks, dull blends)."""
    hue, sat, val = hsv(as_array(image))
    labels = np.full(hue.shape, -1, dtype=np.int64)
    chromatic = (sat >= MIN_SATURATION) & (val >= MIN_VALUE)
    for i, (lo, hi) in enumerate(HUE_RANGES.values()):
        inside = (hue >= lo) & (hue < hi) if lo < hi else (hue >= lo) | (hue < hi)
        labels[chromatic & inside] = i
    labels[(sat < WHITE[0]) & (val > WHITE[1])] = NAMES.index("white")
    labels[val < BLACK_VALUE] = NAMES.index("black")
    return labels


def colour_fractions(image: Image.Image | np.ndarray) -> dict[str, float]:
    """The hue histogram by name: fraction of pixels of each named colour."""
    labels = colour_labels(image)
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=len(NAMES))
    return {name: float(counts[i]) / labels.size for i, name in enumerate(NAMES)}


def has_colours(
    image: Image.Image | np.ndarray, names: tuple[str, ...] | list[str], min_each: float = 0.1, min_total: float = 0.5
) -> bool:
    """True when every asked colour covers at least `min_each` of the image and together they cover `min_total`
    (so a third, unasked colour cannot dominate)."""
    fr = colour_fractions(image)
    return all(fr[n] >= min_each for n in names) and sum(fr[n] for n in set(names)) >= min_total


# --- pattern ---------------------------------------------------------------------------------------------------------


def principal_channel(arr: np.ndarray) -> np.ndarray:
    """The image projected on its main colour axis (the line between its two colours for a two-colour texture), so
    two colours of equal brightness still give contrast. Returns float [H, W] with zero mean."""
    x = arr.reshape(-1, 3).astype(np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[0]).reshape(arr.shape[:2])


@dataclass
class SpectrumFeatures:
    """Fractions of the (windowed, DC-free) power: along the x-frequency axis (variation across x: vertical
    stripes), along the y-frequency axis, and off both axes. `diagonal_peak` is True when the strongest off-axis
    peak has |fx| == |fy| (a checkerboard's fundamental); `diagonal_balance` is the weaker of the two diagonal
    directions' off-axis power over the stronger (about 1 for a checkerboard, about 0 for diagonal stripes)."""

    along_x: float
    along_y: float
    off_axis: float
    diagonal_peak: bool
    diagonal_balance: float


def spectrum_features(signal: np.ndarray, band: int = 1) -> SpectrumFeatures:
    h, w = signal.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2((signal - signal.mean()) * window)) ** 2
    sy = (np.fft.fftfreq(h) * h)[:, None]
    sx = (np.fft.fftfreq(w) * w)[None, :]
    fy, fx = np.abs(sy), np.abs(sx)
    low = (fx <= band) & (fy <= band)  # DC and the window's leakage around it
    power = np.where(low, 0.0, power)
    total = power.sum()
    if total <= 0:
        return SpectrumFeatures(0.0, 0.0, 0.0, False, 0.0)
    x_axis = (fy <= band) & ~low
    y_axis = (fx <= band) & ~low
    off = ~(x_axis | y_axis | low)
    off_power = np.where(off, power, 0.0)
    iy, ix = np.unravel_index(int(off_power.argmax()), power.shape)
    diagonal = abs(float(fx[0, ix]) - float(fy[iy, 0])) <= band
    same_sign = float(off_power[(sx * sy) > 0].sum())
    opposite = float(off_power[(sx * sy) < 0].sum())
    balance = min(same_sign, opposite) / max(same_sign, opposite, 1e-12)
    return SpectrumFeatures(
        float(power[x_axis].sum() / total),
        float(power[y_axis].sum() / total),
        float(off_power.sum() / total),
        diagonal,
        balance,
    )


def split_two_colours(signal: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Boolean mask of the minority side of a 1-D two-means split of the projected image."""
    lo, hi = np.percentile(signal, 10), np.percentile(signal, 90)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        a, b = signal[signal <= mid], signal[signal > mid]
        if len(a) == 0 or len(b) == 0:
            break
        lo, hi = a.mean(), b.mean()
    mask = signal > (lo + hi) / 2
    return mask if mask.mean() <= 0.5 else ~mask


def components(mask: np.ndarray) -> list[tuple[int, int, int, int, int, bool]]:
    """4-connected components of `mask`: (area, top, left, bottom, right, touches_border) each."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue = deque([(y0, x0)])
        area, top, left, bottom, right = 0, y0, x0, y0, x0
        while queue:
            y, x = queue.popleft()
            area += 1
            top, bottom, left, right = min(top, y), max(bottom, y), min(left, x), max(right, x)
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        out.append(
            (
                area,
                int(top),
                int(left),
                int(bottom),
                int(right),
                top == 0 or left == 0 or bottom == h - 1 or right == w - 1,
            )
        )
    return out


def looks_like_dots(minority: np.ndarray) -> bool:
    """Dots: a minority colour in several separate, compact, similar-sized blobs on one connected background."""
    frac = float(minority.mean())
    if not 0.04 <= frac <= 0.4:
        return False
    blobs = [c for c in components(minority) if c[0] >= 3]
    inner = [c for c in blobs if not c[5]]
    if len(blobs) < 3 or not inner:
        return False
    background = components(~minority)
    if max(c[0] for c in background) < 0.9 * sum(c[0] for c in background):
        return False
    areas = np.array([c[0] for c in inner], dtype=np.float64)
    fill = np.array([c[0] / ((c[3] - c[1] + 1) * (c[4] - c[2] + 1)) for c in inner])
    spans = np.array([max(c[3] - c[1], c[4] - c[2]) + 1 for c in inner], dtype=np.float64)
    squat = np.array([min(c[3] - c[1], c[4] - c[2]) + 1 for c in inner], dtype=np.float64) / spans
    return bool(np.median(fill) >= 0.55 and np.median(squat) >= 0.6 and areas.std() <= 0.35 * areas.mean())


def is_diagonal_stripes(image: Image.Image | np.ndarray) -> bool:
    """Stripes at 45 degrees, a pattern the built-in model was never trained on (the LoRA demonstration,
    `benchmarks/lora_pattern_demo.py`): most power off the axes, its peak on a diagonal (|fx| == |fy|), and nearly
    all of it in one diagonal direction (a checkerboard has both)."""
    signal = principal_channel(as_array(image))
    if signal.std() < 8.0:
        return False
    f = spectrum_features(signal)
    return f.off_axis >= 0.6 and f.diagonal_peak and f.diagonal_balance <= 0.25


def detect_pattern(image: Image.Image | np.ndarray) -> str:
    """One of "vertical stripes", "horizontal stripes", "checkerboard", "dots", or "other"."""
    arr = as_array(image)
    signal = principal_channel(arr)
    if signal.std() < 8.0:  # flat image: no pattern at all
        return "other"
    f = spectrum_features(signal)
    if f.along_x >= STRIPE_PURITY:
        return "vertical stripes"
    if f.along_y >= STRIPE_PURITY:
        return "horizontal stripes"
    minority = split_two_colours(signal)
    if f.off_axis >= 0.6 and f.diagonal_peak and f.diagonal_balance >= 0.5 and minority.mean() >= 0.3:
        return "checkerboard"
    if looks_like_dots(minority):
        return "dots"
    return "other"
