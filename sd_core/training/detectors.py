"""Measurable checks of a generated texture, meant to agree with what a person sees: which named colours it shows,
which of them is the figure (dots, grid lines, bricks) and which the background, and which pattern it has.

Every pattern check works on the image split into its two colours (`two_colour_mask`) and fails an image without
real contrast (flat, or a faint texture a person would call flat). Stripes and checkerboards: every row (column) is
the same as, or the inverse of, one reference row; waves: columns line up into straight bands once each is shifted
by a smooth displacement that really swings; bricks: continuous thin horizontal mortar lines, with vertical joints
that move between courses (a bond); grid: thin lines crossing the whole image both ways; dots: separate, compact,
similar blobs on one connected background; noise: two colours in irregular blobs with no repetition.

Deliberately simple and independent of the model: validated on the training generator with known answers
(`tests/training/test_detectors.py`) and on generated images labelled by looking at them
(`tests/training/test_labelled_set.py`, `tests/training/data/labelled/`), then used to score the model's samples
(`sd_core.training.evaluate`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

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


MIN_CONTRAST = 45.0
"""RGB distance between the two colours' means below which an image counts as flat (a faint texture at 12% of a
palette pair's contrast stays under it; the model's weakest stripes a person still sees are above)."""
ROLE_PATTERNS = ("dots", "grid", "bricks")
"""Patterns whose two colours have roles: a figure (the dots, the grid lines, the bricks) on a background (the
surround, the squares, the mortar), as `data.pattern_mask` draws them (the mask is the figure)."""


@dataclass
class Split:
    """An image split into two colours: `mask` True on the minority side, the two sides' mean RGB, and their
    distance (`contrast`)."""

    mask: np.ndarray
    minority_rgb: np.ndarray
    majority_rgb: np.ndarray
    contrast: float

    @property
    def share(self) -> float:
        return float(self.mask.mean())


def two_colour_mask(image: Image.Image | np.ndarray) -> Split:
    """Split on the image's main colour axis (`principal_channel`, a 1-D two-means): works for two colours of equal
    brightness too."""
    arr = as_array(image)
    signal = principal_channel(arr)
    mask = split_two_colours(signal)
    flat = arr.reshape(-1, 3).astype(np.float64)
    m = mask.ravel()
    if m.all() or not m.any():
        mean = flat.mean(axis=0)
        return Split(mask, mean, mean, 0.0)
    lo, hi = flat[m].mean(axis=0), flat[~m].mean(axis=0)
    return Split(mask, lo, hi, float(np.linalg.norm(lo - hi)))


def has_contrast(split: Split, min_share: float = 0.05) -> bool:
    """Two colours a person tells apart, the smaller covering at least `min_share`: far apart, or nearer but with
    different colour names (orange and yellow stripes; a faint texture keeps one name, or none for greys)."""
    if split.share < min_share:
        return False
    if split.contrast >= MIN_CONTRAST:
        return True
    if split.contrast < 30.0:
        return False
    names = [colour_name(rgb) for rgb in (split.minority_rgb, split.majority_rgb)]
    return None not in names and names[0] != names[1]


def colour_name(rgb: np.ndarray) -> str | None:
    """The name of one colour (`colour_labels` of a single pixel)."""
    label = int(colour_labels(np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(1, 1, 3))[0, 0])
    return NAMES[label] if label >= 0 else None


def row_consistency(mask: np.ndarray) -> tuple[float, float, float]:
    """How well every row is either the same as, or the inverse of, one reference row (the best one): (mean fit,
    share of rows that are inverted, minority share of the reference row). Vertical stripes: fit about 1, none
    inverted, reference half and half; a checkerboard: fit about 1, half inverted."""
    m = mask.astype(np.float64)
    agree = (m @ m.T + (1 - m) @ (1 - m).T) / m.shape[1]  # agree[i, j]: share of pixels where row i == row j
    share = m.mean(axis=1)
    balance = np.minimum(share, 1 - share)
    fit = np.maximum(agree, 1 - agree).mean(axis=1)
    fit = np.where(balance >= 0.2, fit, 0.0)  # a reference row must itself show both colours in bands
    ref = int(fit.argmax())
    return float(fit[ref]), float((agree[ref] < 0.5).mean()), float(balance[ref])


def runs(values: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-D boolean array."""
    out, start = [], None
    for i, v in enumerate(list(values) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i - start))
            start = None
    return out


def stripes_direction(split: Split) -> str | None:
    """ "vertical stripes" when every row is the same bands (columns of one colour), "horizontal stripes" for the
    transpose, None otherwise. Bands of both colours must be broad (a minority of at least a quarter: thin lines
    are a grid's or bricks' mortar, not stripes)."""
    if not has_contrast(split, 0.2):
        return None
    for name, mask in (("vertical stripes", split.mask), ("horizontal stripes", split.mask.T)):
        fit, inverted, balance = row_consistency(mask)
        profile = mask.mean(axis=0) > 0.5
        bands, gaps = runs(profile), runs(~profile)
        if not bands or not gaps or fit < 0.88 or inverted > 0.1 or balance < 0.25:
            continue
        if np.mean([n for _, n in bands]) >= 0.25 * np.mean([n for _, n in gaps]) and not brick_bond(split):
            return name
    return None


def is_vertical_stripes(image: Image.Image | np.ndarray) -> bool:
    return stripes_direction(two_colour_mask(image)) == "vertical stripes"


def is_horizontal_stripes(image: Image.Image | np.ndarray) -> bool:
    return stripes_direction(two_colour_mask(image)) == "horizontal stripes"


def is_checkerboard(image: Image.Image | np.ndarray) -> bool:
    """Squares alternating both ways: every row is the reference row or its inverse, with a fair share of both
    kinds (stripes have none inverted), and the same for columns."""
    split = two_colour_mask(image)
    if not has_contrast(split, 0.3):
        return False
    for mask in (split.mask, split.mask.T):
        fit, inverted, balance = row_consistency(mask)
        if fit < 0.85 or not 0.25 <= inverted <= 0.75 or balance < 0.3:
            return False
        if wave_fit(mask)[0] >= 0.8:  # columns that line up into bands when shifted: waves, not squares
            return False
    return True


def wave_fit(mask: np.ndarray, reach: int = 3) -> tuple[float, float, float]:
    """(purity of the rows after lining the columns up, peak-to-peak displacement in pixels, how far the displacement
    travels in all, up and down) for bands across x. A wave's displacement goes up and comes back (travel at least 1.2
    times its peak-to-peak, even when the image holds one cycle only); a diagonal's only climbs (exactly 1)."""
    h, w = mask.shape
    cols = mask.astype(np.float64)
    shifts = np.zeros(w, dtype=int)
    aligned = np.empty_like(cols)
    aligned[:, 0] = cols[:, 0]
    for x in range(1, w):
        prev = aligned[:, x - 1]
        scores = [float((np.roll(cols[:, x], -(shifts[x - 1] + s)) == prev).mean()) for s in range(-reach, reach + 1)]
        best = int(np.argmax(scores)) - reach
        if scores[reach] >= scores[best + reach] - 1e-9:
            best = 0  # prefer no step on ties: straight stripes stay straight
        shifts[x] = shifts[x - 1] + best
        aligned[:, x] = np.roll(cols[:, x], -shifts[x])
    rows = aligned.mean(axis=1)
    travel = float(np.abs(np.diff(shifts)).sum())
    return float(np.maximum(rows, 1 - rows).mean()), float(shifts.max() - shifts.min()), travel


def is_waves(image: Image.Image | np.ndarray) -> bool:
    """Bands (either direction) that line up into straight bands once each column (row) is shifted, with a
    displacement that swings up and back by at least a few pixels: not straight stripes, not diagonal ones."""
    split = two_colour_mask(image)
    if not has_contrast(split, 0.2) or stripes_direction(split) is not None:
        return False
    for mask in (split.mask, split.mask.T):
        crossings = (mask[1:] != mask[:-1]).sum(axis=0)  # band edges met going down each column
        median = float(np.median(crossings))
        if crossings.min() < 1 or median < 3 or (np.abs(crossings - median) <= 1).mean() < 0.9:
            continue  # bands must run across the whole image, every column crossing about as many
        purity, swing, travel = wave_fit(mask)
        fit, _, _ = row_consistency(mask.T)  # the columns unshifted: the same bands everywhere would be stripes
        if purity >= 0.8 and swing >= 4 and travel >= 1.2 * swing and fit < 0.95:
            return True
    return False


def line_runs(lines: np.ndarray, axis: int, cover: float) -> list[tuple[int, int]]:
    """Runs of rows (axis=1: covered along x) or columns (axis=0) in which `lines` covers at least `cover`."""
    return runs(lines.mean(axis=axis) >= cover)


def grid_lines(split: Split) -> tuple[list[tuple[int, int]], list[tuple[int, int]]] | None:
    """The thin-line side's horizontal and vertical lines (runs of rows / columns it nearly fills), or None when
    the image has no such side."""
    if not has_contrast(split, 0.08) or split.share > 0.45:
        return None
    lines = split.mask
    return line_runs(lines, 1, 0.75), line_runs(lines, 0, 0.75)


def thin(line_list: list[tuple[int, int]], size: int) -> bool:
    """At least two lines, each much thinner than the gaps between them."""
    if len(line_list) < 2:
        return False
    widest = max(length for _, length in line_list)
    gap = (size - sum(length for _, length in line_list)) / len(line_list)
    return widest <= 0.5 * gap


def is_grid(image: Image.Image | np.ndarray) -> bool:
    """Thin lines of one colour crossing the whole image in both directions (bricks' joints do not cross)."""
    split = two_colour_mask(image)
    found = grid_lines(split)
    h, w = split.mask.shape
    return found is not None and thin(found[0], h) and thin(found[1], w)


def brick_courses(split: Split) -> list[np.ndarray] | None:
    """The vertical joints of each course between two horizontal mortar lines (a boolean per column), or None
    when there are no continuous, thin horizontal mortar lines."""
    found = grid_lines(split)
    if found is None or not thin(found[0], split.mask.shape[0]):
        return None
    rows = found[0]
    courses = []
    bounds = [(a + n, b) for (a, n), (b, _) in zip(rows, rows[1:], strict=False)]
    for top, bottom in bounds:
        if bottom - top >= 3:
            courses.append(split.mask[top:bottom].mean(axis=0) >= 0.6)
    return courses


def is_bricks(image: Image.Image | np.ndarray) -> bool:
    """A brick bond: continuous thin horizontal mortar lines; between them, thin vertical joints that do not run
    on through the next course (a grid's do), in at least two courses."""
    return brick_bond(two_colour_mask(image))


def brick_bond(split: Split) -> bool:
    """`is_bricks` of an image already split."""
    courses = brick_courses(split)
    if not courses or len(courses) < 2:
        return False
    joints = [c for c in courses if c.any() and c.mean() <= 0.3]
    if len(joints) < max(2, len(courses) // 2 + 1):
        return False
    pairs = [(a, b) for a, b in zip(courses, courses[1:], strict=False) if a.any() and b.any()]
    if not pairs:
        return False
    shared = [float((a & b).sum()) / float(min(a.sum(), b.sum())) for a, b in pairs]
    full_cols = (split.mask.mean(axis=0) >= 0.75).mean()
    return float(np.mean(shared)) <= 0.34 and full_cols < 0.05


def is_dots(image: Image.Image | np.ndarray) -> bool:
    split = two_colour_mask(image)
    return has_contrast(split, 0.04) and looks_like_dots(split.mask) and periodicity(split.mask) >= 0.5


def looks_like_dots(minority: np.ndarray) -> bool:
    """Dots: a minority colour in several separate, compact, similar-sized blobs on one connected background."""
    frac = float(minority.mean())
    if not 0.04 <= frac <= 0.42:
        return False
    blobs = [c for c in components(minority) if c[0] >= 3]
    inner = [c for c in blobs if not c[5]]
    if len(blobs) < 3 or len(inner) < 1:
        return False
    background = components(~minority)
    if max(c[0] for c in background) < 0.9 * sum(c[0] for c in background):
        return False
    areas = np.array([c[0] for c in inner], dtype=np.float64)
    fill = np.array([c[0] / ((c[3] - c[1] + 1) * (c[4] - c[2] + 1)) for c in inner])
    spans = np.array([max(c[3] - c[1], c[4] - c[2]) + 1 for c in inner], dtype=np.float64)
    squat = np.array([min(c[3] - c[1], c[4] - c[2]) + 1 for c in inner], dtype=np.float64) / spans
    return bool(np.median(fill) >= 0.55 and np.median(squat) >= 0.6 and areas.std() <= 0.4 * areas.mean())


def periodicity(mask: np.ndarray) -> float:
    """Highest circular autocorrelation of the mask outside its central lobe (the connected region around zero shift
    where it stays positive), over its value at zero shift: about 1 for anything that repeats, below about 0.3 for
    random blobs."""
    m = mask.astype(np.float64) - mask.mean()
    auto = np.real(np.fft.ifft2(np.abs(np.fft.fft2(m)) ** 2))
    if auto[0, 0] <= 0:
        return 0.0
    auto = auto / auto[0, 0]
    h, w = auto.shape
    lobe = np.zeros(auto.shape, dtype=bool)
    lobe[0, 0] = True
    queue = deque([(0, 0)])
    while queue:
        y, x = queue.popleft()
        for ny, nx in (((y + 1) % h, x), ((y - 1) % h, x), (y, (x + 1) % w), (y, (x - 1) % w)):
            if not lobe[ny, nx] and auto[ny, nx] > 0:
                lobe[ny, nx] = True
                queue.append((ny, nx))
    return float(auto[~lobe].max()) if (~lobe).any() else 0.0


def thick_share(mask: np.ndarray, radius: int = 1) -> float:
    """Share of `mask`'s pixels that survive an erosion by a (2 * radius + 1)-pixel square: about 0 for lines a
    few pixels wide, most of it for blobs."""
    if not mask.any():
        return 0.0
    padded = np.pad(mask, radius, mode="edge")
    h, w = mask.shape
    kept = np.ones_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            kept &= padded[dy : dy + h, dx : dx + w]
    return float(kept.sum() / mask.sum())


def is_noise(image: Image.Image | np.ndarray) -> bool:
    """Two colours in irregular blobs: both sides sizeable, blobs not speckle, no repetition, and none of the
    regular patterns."""
    split = two_colour_mask(image)
    if not has_contrast(split, 0.12):
        return False
    edges = (split.mask != np.roll(split.mask, 1, 0)).mean() + (split.mask != np.roll(split.mask, 1, 1)).mean()
    if edges > 0.25 or periodicity(split.mask) > 0.5:
        return False
    if min(thick_share(split.mask), thick_share(~split.mask)) < 0.4:  # thin lines (a faint grid) are not blobs
        return False
    return not any(check(image) for name, check in PATTERN_CHECKS.items() if name != "noise")


PATTERN_CHECKS: dict[str, Any] = {
    "vertical stripes": is_vertical_stripes,
    "horizontal stripes": is_horizontal_stripes,
    "waves": is_waves,
    "checkerboard": is_checkerboard,
    "bricks": is_bricks,
    "grid": is_grid,
    "dots": is_dots,
    "noise": is_noise,
}
"""One check per pattern of `data.PATTERNS`, in the order `detect_pattern` tries them."""


def is_pattern(image: Image.Image | np.ndarray, pattern: str) -> bool:
    """The one pattern's check (a name of `data.PATTERNS`)."""
    return bool(PATTERN_CHECKS[pattern](image))


def detect_pattern(image: Image.Image | np.ndarray) -> str | None:
    """The first pattern whose check passes, or None (flat, faint, or nothing a person would name)."""
    for name, check in PATTERN_CHECKS.items():
        if check(image):
            return name
    return None


def is_diagonal_stripes(image: Image.Image | np.ndarray) -> bool:
    """Stripes at 45 degrees, a pattern the built-in model was never trained on (the LoRA demonstration,
    `benchmarks/lora_pattern_demo.py`): most power off the axes, its peak on a diagonal (|fx| == |fy|), and nearly
    all of it in one diagonal direction (a checkerboard has both)."""
    signal = principal_channel(as_array(image))
    if signal.std() < 8.0:
        return False
    f = spectrum_features(signal)
    return f.off_axis >= 0.6 and f.diagonal_peak and f.diagonal_balance <= 0.25


# --- roles --------------------------------------------------------------------------------------------------------


def region_colour(image: Image.Image | np.ndarray, region: np.ndarray, signal: np.ndarray | None = None) -> str | None:
    """The named colour of `region`: the most common name among its named pixels, when at least a quarter of the
    region is named and that name has most of them. With `signal` (`principal_channel`), only the region's purer
    half is read, the pixels farthest from the other colour: thin lines and small dots are half blend with their
    surround at the edges."""
    arr = as_array(image)
    if signal is not None and region.any() and (~region).any():
        inside, outside = signal[region], signal[~region]
        away = inside if inside.mean() >= outside.mean() else -inside  # larger: farther from the other colour
        core = np.zeros_like(region)
        core[region] = away >= np.median(away)
        region = core
    labels = colour_labels(arr)[region]
    named = labels[labels >= 0]
    if labels.size == 0 or named.size < 0.25 * labels.size:
        return None
    counts = np.bincount(named, minlength=len(NAMES))
    best = int(counts.argmax())
    return NAMES[best] if counts[best] >= 0.5 * named.size else None


def roles(image: Image.Image | np.ndarray, pattern: str) -> tuple[str | None, str | None]:
    """(figure colour, background colour) for a pattern with roles: the figure of dots and grids is the minority
    side (dots, thin lines), of bricks the majority (the bricks; the thin mortar is the background)."""
    split = two_colour_mask(image)
    figure = ~split.mask if pattern == "bricks" else split.mask
    signal = principal_channel(as_array(image))
    return region_colour(image, figure, signal), region_colour(image, ~figure, signal)


def colours_present(image: Image.Image | np.ndarray, names: tuple[str, ...] | list[str], pattern: str) -> bool:
    """Every asked colour present: at least 0.06 of the image each when the pattern has a thin or small figure (dots,
    grid lines, mortar), 0.1 otherwise; together at least half of it (0.35 for a one-colour prompt)."""
    min_each = 0.06 if pattern in ROLE_PATTERNS else 0.1
    return has_colours(image, names, min_each=min_each, min_total=0.5 if len(set(names)) >= 2 else 0.35)


def judge(
    image: Image.Image | np.ndarray,
    pattern: str,
    figure: str | None = None,
    background: str | None = None,
    roles_asked: bool = False,
) -> dict[str, bool]:
    """Per-check verdicts for one prompt: `pattern_ok` (its check passes), `colours_ok` (`colours_present` of
    every named colour), `roles_ok` (figure and background in the asked roles, for dots, grid and bricks when the
    prompt fixed them; True otherwise: stripes, checks, waves and noise have no roles) and `ok`, all three."""
    asked = tuple(c for c in (figure, background) if c)
    pattern_ok = is_pattern(image, pattern)
    colours_ok = colours_present(image, asked, pattern)
    roles_ok = True
    if roles_asked and pattern in ROLE_PATTERNS:
        seen = roles(image, pattern)
        roles_ok = all(want is None or got == want for want, got in zip((figure, background), seen, strict=True))
    return {
        "pattern_ok": pattern_ok,
        "colours_ok": colours_ok,
        "roles_ok": roles_ok,
        "ok": pattern_ok and colours_ok and roles_ok,
    }
