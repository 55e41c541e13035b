"""Selection -> context box -> working size -> back to layer pixels, in plain Python (no Krita, no Qt, no numpy).

Krita's embedded Python has neither numpy nor PIL, so every image operation here works on `bytes` planes (one byte
per pixel per channel) with C-level helpers: slicing to split and interleave channels, `map` over whole rows for
arithmetic, `itertools.accumulate` for running sums, `bytes.translate` for lookup tables. No Python-level loop runs
per pixel; loops run per row or per filter tap, which keeps a 512x512 image well under a second.

Pixel layout: 8-bit Krita RGBA documents store B, G, R, A per pixel (QImage's ARGB32 on little-endian machines);
PNGs are R, G, B(, A). Masks are one byte per pixel, 0 = keep, 255 = replace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import compress, repeat
from operator import add, floordiv, mul

# Fixed-point precision of the resampling weights (two passes: 2 * FRAC bits before the final shift).
FRAC = 14


class RegionError(ValueError):
    """A selection or canvas that cannot be turned into a request; the message is meant for the user."""


@dataclass(frozen=True)
class Rect:
    """An axis-aligned pixel rectangle; empty when w or h is not positive."""

    x: int
    y: int
    w: int
    h: int

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    @property
    def empty(self) -> bool:
        return self.w <= 0 or self.h <= 0

    def intersect(self, other: Rect) -> Rect:
        x, y = max(self.x, other.x), max(self.y, other.y)
        return Rect(x, y, max(0, min(self.right, other.right) - x), max(0, min(self.bottom, other.bottom) - y))

    def expand(self, d: int) -> Rect:
        return Rect(self.x - d, self.y - d, self.w + 2 * d, self.h + 2 * d)

    def contains(self, other: Rect) -> bool:
        return self.x <= other.x and self.y <= other.y and other.right <= self.right and other.bottom <= self.bottom


# ---------------------------------------------------------------------------------------------------------------
# Planning: where to read, at which size to generate


@dataclass(frozen=True)
class Plan:
    """Where a request reads and writes: `box` on the canvas, generated at `work_w` x `work_h`.

    `reach` is the part of the box the result layer can touch: the selection grown and feathered (clamped to the
    canvas). Outside `reach` the result layer stays fully transparent.
    """

    canvas: Rect
    selection: Rect
    reach: Rect
    box: Rect
    work_w: int
    work_h: int
    grow: int
    feather: int

    @property
    def scaled(self) -> bool:
        return (self.work_w, self.work_h) != (self.box.w, self.box.h)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def round_box(box: Rect, canvas: Rect, multiple: int = 8) -> Rect:
    """Grow `box` to a multiple of `multiple` on each axis, centred, shifted back inside the canvas.

    An axis whose rounded size would exceed the canvas takes the whole canvas on that axis (not a multiple then;
    the working size, which always is one, absorbs the difference when scaling).
    """

    x, w = grow_axis(box.x, box.w, round_up(box.w, multiple), canvas.x, canvas.w)
    y, h = grow_axis(box.y, box.h, round_up(box.h, multiple), canvas.y, canvas.h)
    return Rect(x, y, w, h)


def grow_axis(start: int, size: int, want: int, lo: int, extent: int) -> tuple[int, int]:
    """One axis of a box grown from `size` to `want`, centred, shifted back inside [lo, lo + extent); the whole
    extent when `want` does not fit."""
    if want >= extent:
        return lo, extent
    start -= (want - size) // 2
    start = min(max(start, lo), lo + extent - want)
    return start, want


def working_size(
    w: int, h: int, target: int, multiple: int = 8, minimum: int = 64, keep_within: float = 1.25
) -> tuple[int, int]:
    """The model's working size for a `w` x `h` box: about `target`**2 pixels, same aspect, multiples of `multiple`,
    no side under `minimum` (SD's smallest: 8 latent pixels).

    A box already close to the target area (within `keep_within` per side) and already a multiple keeps its own
    size, so nothing is resampled: the result is pixel-exact where no scaling is needed.
    """
    if w <= 0 or h <= 0 or target <= 0:
        raise RegionError(f"invalid size {w}x{h} for target {target}")
    scale = target / math.sqrt(w * h)
    if w % multiple == 0 and h % multiple == 0 and min(w, h) >= minimum and 1 / keep_within <= scale <= keep_within:
        return w, h
    scale = max(scale, minimum / min(w, h))
    ww = max(minimum, int(round(w * scale / multiple)) * multiple)
    hh = max(minimum, int(round(h * scale / multiple)) * multiple)
    return ww, hh


def plan_region(
    selection: Rect,
    canvas_w: int,
    canvas_h: int,
    *,
    grow: int = 0,
    feather: int = 0,
    margin: int = 0,
    target: int = 512,
    multiple: int = 8,
) -> Plan:
    """Plan a request for a selection whose bounds are `selection` (canvas coordinates, may reach outside)."""
    if canvas_w <= 0 or canvas_h <= 0:
        raise RegionError("The document has no pixels.")
    grow, feather, margin = max(0, grow), max(0, feather), max(0, margin)
    canvas = Rect(0, 0, canvas_w, canvas_h)
    inside = selection.intersect(canvas)
    if inside.empty:
        raise RegionError("The selection lies outside the canvas: select something inside the image.")
    reach = inside.expand(grow + feather).intersect(canvas)
    box = round_box(reach.expand(margin).intersect(canvas), canvas, multiple)
    work_w, work_h = working_size(box.w, box.h, target, multiple)
    return Plan(canvas, inside, reach, box, work_w, work_h, grow, feather)


def plan_canvas(canvas_w: int, canvas_h: int, *, target: int = 512, multiple: int = 8) -> Plan:
    """A plan covering the whole canvas (Generate without a selection)."""
    canvas = Rect(0, 0, canvas_w, canvas_h)
    if canvas.empty:
        raise RegionError("The document has no pixels.")
    work_w, work_h = working_size(canvas_w, canvas_h, target, multiple)
    return Plan(canvas, canvas, canvas, canvas, work_w, work_h, 0, 0)


# ---------------------------------------------------------------------------------------------------------------
# Channels


def split(data: bytes, channels: int) -> list[bytes]:
    """Interleaved pixels -> one `bytes` plane per channel."""
    return [bytes(data[c::channels]) for c in range(channels)]


def merge(planes: list[bytes]) -> bytes:
    """One plane per channel -> interleaved pixels."""
    n = len(planes)
    out = bytearray(len(planes[0]) * n)
    for c, plane in enumerate(planes):
        out[c::n] = plane
    return bytes(out)


def bgra_to_rgb(data: bytes, background: int = 255) -> bytes:
    """Krita's B, G, R, A -> R, G, B flattened over a grey level `background` (white by default).

    The model sees no alpha: transparent canvas areas are shown to it as the background, not as stale colours.
    """
    b, g, r, a = split(data, 4)
    if a.count(255) == len(a):
        return merge([r, g, b])
    inv = a.translate(bytes(255 - v for v in range(256)))
    bg = [background * v + 127 for v in inv]
    return merge([bytes(map(floordiv, map(add, map(mul, c, a), bg), repeat(255))) for c in (r, g, b)])


def rgb_to_bgra(data: bytes, alpha: bytes) -> bytes:
    """R, G, B + an alpha plane -> Krita's B, G, R, A with colour zeroed where alpha is 0 (clean transparency)."""
    r, g, b = split(data, 3)
    visible = alpha.translate(bytes([0] + [1] * 255))
    if visible.count(1) != len(visible):
        r, g, b = (bytes(map(mul, c, visible)) for c in (r, g, b))
    return merge([b, g, r, alpha])


def crop(data: bytes, width: int, channels: int, rect: Rect) -> bytes:
    """The `rect` part of an image `width` pixels wide (rect in that image's coordinates)."""
    stride, start, n = width * channels, rect.x * channels, rect.w * channels
    return b"".join(data[(rect.y + y) * stride + start : (rect.y + y) * stride + start + n] for y in range(rect.h))


def nonzero_bounds(mask: bytes, width: int, height: int) -> Rect:
    """The smallest rectangle holding every non-zero byte of `mask`; empty Rect when all are zero."""
    rows = [y for y in range(height) if mask[y * width : (y + 1) * width].count(0) != width]
    if not rows:
        return Rect(0, 0, 0, 0)
    columns = bytearray(width)
    for y in range(rows[0], rows[-1] + 1):
        row = mask[y * width : (y + 1) * width]
        columns = bytearray(map(max, columns, row))
    xs = [x for x, v in enumerate(columns) if v]
    return Rect(xs[0], rows[0], xs[-1] - xs[0] + 1, rows[-1] - rows[0] + 1)


# ---------------------------------------------------------------------------------------------------------------
# Lane arithmetic: a whole plane packed into one Python int, `lane` bytes per pixel. Adding, multiplying by a
# small constant, shifting and masking then act on every pixel at once in C; lanes are wide enough that no value
# ever carries into its neighbour. Filters run vertically (shifting by whole rows); horizontal passes transpose
# first (byte slicing), which keeps row ends from bleeding into the next row.


def pack(plane: bytes, lane: int) -> int:
    buf = bytearray(len(plane) * lane)
    buf[0::lane] = plane
    return int.from_bytes(buf, "little")


def unpack(value: int, count: int, lane: int) -> bytes:
    """The low byte of each of the first `count` lanes (callers shift so that it holds the value)."""
    size = max(count * lane, (value.bit_length() + 7) // 8)
    return value.to_bytes(size, "little")[0 : count * lane : lane]


def lanes_of(value: int, count: int, lane: int) -> int:
    """`value` repeated in `count` lanes."""
    return int.from_bytes(value.to_bytes(lane, "little") * count, "little")


def transpose(plane: bytes, width: int, height: int) -> bytes:
    """Rows become columns: the result is `height` pixels wide and `width` tall."""
    return b"".join(plane[x::width] for x in range(width))


def _replicate_rows(plane: bytes, width: int, height: int, r: int) -> bytes:
    return plane[:width] * r + plane + plane[(height - 1) * width :] * r


def _max_columns(plane: bytes, width: int, height: int, r: int) -> bytes:
    """Max over a 2r+1 window down each column, edges replicated (16-bit lanes, compare by borrow bit)."""
    lane, bits = 2, 16
    padded = _replicate_rows(plane, width, height, r)
    count = len(padded)
    guard, one, ff = lanes_of(0x100, count, lane), lanes_of(1, count, lane), lanes_of(0xFF, count, lane)

    def lane_max(a: int, b: int) -> int:
        pick_a = ((((a | guard) - b) >> 8) & one) * 0xFF
        return (a & pick_a) | (b & (pick_a ^ ff))

    cur, span = pack(padded, lane), 1  # lane i of cur = max of rows i .. i + span - 1 (same column)
    while span * 2 <= 2 * r + 1:
        cur = lane_max(cur, cur >> (span * width * bits))
        span *= 2
    rest = 2 * r + 1 - span
    if rest:
        cur = lane_max(cur, cur >> (rest * width * bits))
    return unpack(cur, width * height, lane)


def dilate(mask: bytes, width: int, height: int, r: int) -> bytes:
    """Grow the mask by `r` pixels (square max filter, edges replicated); soft values grow too."""
    if r <= 0 or not mask:
        return bytes(mask)
    vertical = _max_columns(mask, width, height, r)
    return transpose(_max_columns(transpose(vertical, width, height), height, width, r), height, width)


def _box_columns(plane: bytes, width: int, height: int, r: int) -> bytes:
    """Rounded mean over a 2r+1 window down each column, edges replicated (64-bit lanes)."""
    lane, bits, n = 8, 64, 2 * r + 1
    padded = _replicate_rows(plane, width, height, r)
    count = len(padded)
    powers = [pack(padded, lane)]  # powers[b]: lane i = sum of rows i .. i + 2**b - 1
    while 2 ** len(powers) <= n:
        p = powers[-1]
        powers.append(p + (p >> ((2 ** (len(powers) - 1)) * width * bits)))
    total, offset = 0, 0
    for b in range(len(powers)):
        if n >> b & 1:
            total += powers[b] >> (offset * width * bits)
            offset += 2**b
    shift = 32
    scale = -(-(1 << shift) // n)  # multiply by ceil(2**32 / n) then shift: exact division for sums < 2**16
    total = ((total + lanes_of(n // 2, count, lane)) * scale) >> shift
    return unpack(total, width * height, lane)


def feather_radii(feather: int) -> list[int]:
    """Three box-blur radii summing to `feather`: their convolution is a smooth bell reaching exactly that far."""
    base, extra = divmod(max(0, feather), 3)
    return [r for r in (base + (extra > 0), base + (extra > 1), base) if r > 0]


def blur(mask: bytes, width: int, height: int, feather: int) -> bytes:
    """Soften the mask edge: three separable box blurs whose total reach is `feather` pixels."""
    if feather <= 0 or not mask:
        return bytes(mask)
    plane = bytes(mask)
    for r in feather_radii(feather):
        plane = _box_columns(plane, width, height, r)
        plane = transpose(_box_columns(transpose(plane, width, height), height, width, r), height, width)
    return plane


def shape_mask(mask: bytes, width: int, height: int, grow: int, feather: int) -> bytes:
    """The selection as the result layer's alpha: grown by `grow`, then fading out over the next `feather` pixels.

    The fade lies outside the grown selection (grown a further half feather, then blurred by the other half), so
    everything selected is fully replaced and nothing beyond grow + feather is touched.
    """
    inner = (max(0, feather) + 1) // 2
    return blur(dilate(mask, width, height, grow + inner), width, height, max(0, feather) - inner)


KEEP_DISTANCE = 8  # pixels between the repainted area and the pixels the drift is measured on (one latent cell)


def kept_pixels(hard: bytes, width: int, height: int, distance: int = KEEP_DISTANCE) -> bytes:
    """255 where the server was told to keep the original (`hard` mask 0) at least `distance` pixels away from what
    it repaints, else 0: where its result should equal the original, so any difference there is drift."""
    near = dilate(hard, width, height, distance)
    return near.translate(bytes([255] + [0] * 255))


def harden(mask: bytes, threshold: int = 1) -> bytes:
    """255 wherever mask >= threshold, else 0: what the server regenerates (everything the soft alpha shows)."""
    return mask.translate(bytes(0 if v < threshold else 255 for v in range(256)))


# ---------------------------------------------------------------------------------------------------------------
# Resampling: separable triangle filter (bilinear when enlarging, area-like when shrinking), integer weights,
# one packed int per row so each tap is one multiply-add over the whole row.


def _taps(src: int, dst: int) -> tuple[list[list[int]], list[list[int]]]:
    """Per-tap lists: indices[k][i], weights[k][i] (weights of each output sum to 1 << FRAC)."""
    scale = src / dst
    support = max(1.0, scale)
    per_out: list[tuple[int, list[int]]] = []
    for i in range(dst):
        center = (i + 0.5) * scale
        lo, hi = max(0, int(math.floor(center - support))), min(src, int(math.ceil(center + support)))
        raw = [max(0.0, 1.0 - abs((j + 0.5 - center) / support)) for j in range(lo, hi)]
        total = sum(raw) or 1.0
        ints = [int(round(w / total * (1 << FRAC))) for w in raw]
        ints[max(range(len(ints)), key=raw.__getitem__)] += (1 << FRAC) - sum(ints)
        per_out.append((lo, ints))
    k_max = max(len(w) for _, w in per_out)
    indices = [[min(lo + k, src - 1) for lo, _ in per_out] for k in range(k_max)]
    weights = [[w[k] if k < len(w) else 0 for _, w in per_out] for k in range(k_max)]
    return indices, weights


def _resample_columns(plane: bytes, width: int, height: int, new_h: int, first: int, last: int) -> bytes:
    """Rows `first` .. `last` - 1 of the plane resampled to `new_h` rows (32-bit lanes: 255 << 14 fits)."""
    lane = 4
    indices, weights = _taps(height, new_h)
    rows: dict[int, int] = {}
    half, low = lanes_of(1 << (FRAC - 1), width, lane), lanes_of(0xFF, width, lane)
    out = []
    for i in range(first, last):
        acc = half
        for idx, wts in zip(indices, weights, strict=True):
            if wts[i]:
                y = idx[i]
                if y not in rows:
                    rows[y] = pack(plane[y * width : (y + 1) * width], lane)
                acc += rows[y] * wts[i]
        out.append(unpack((acc >> FRAC) & low, width, lane))
    return b"".join(out)


def resize_plane(plane: bytes, width: int, height: int, new_w: int, new_h: int, rows: Rect | None = None) -> bytes:
    """Resample one channel; `rows` limits the output to that rectangle of the new image (saves work)."""
    if (new_w, new_h) == (width, height) and rows is None:
        return bytes(plane)
    part = rows or Rect(0, 0, new_w, new_h)
    vertical = _resample_columns(plane, width, height, new_h, part.y, part.bottom)
    turned = _resample_columns(transpose(vertical, width, part.h), part.h, width, new_w, part.x, part.right)
    return transpose(turned, part.h, part.w)


def resize(
    data: bytes, width: int, height: int, channels: int, new_w: int, new_h: int, rows: Rect | None = None
) -> bytes:
    """Resample interleaved pixels (any channel order); see `resize_plane`."""
    if (new_w, new_h) == (width, height) and rows is None:
        return bytes(data)
    return merge([resize_plane(p, width, height, new_w, new_h, rows) for p in split(data, channels)])


# ---------------------------------------------------------------------------------------------------------------
# Colour matching


@dataclass(frozen=True)
class ColourFit:
    """Per channel `out = (v - src_mean) * gain + dst_mean`, fitted where the result should equal the original."""

    src_mean: tuple[float, ...]
    dst_mean: tuple[float, ...]
    gain: tuple[float, ...]
    samples: int

    def luts(self) -> list[bytes]:
        return [
            bytes(min(255, max(0, int(round((v - sm) * g + dm)))) for v in range(256))
            for sm, dm, g in zip(self.src_mean, self.dst_mean, self.gain, strict=True)
        ]


def fit_colours(
    result: bytes, original: bytes, keep: bytes, channels: int = 3, min_samples: int = 64, max_gain: float = 1.5
) -> ColourFit | None:
    """Fit the result's colours to the original's on the pixels of `keep` (non-zero); None if too few of them.

    The plugin passes the pixels the server was told to keep (outside its mask, away from its edge,
    `kept_pixels`): the result should equal the original there, so any difference is the engine's drift (a tint
    from the VAE round trip or the sampler, which would show as a halo around new content). Matching mean and
    spread per channel there removes that drift and nothing else: content the model was asked to change never
    enters the fit, so its own colours stay (blue drawn into red stays blue). A server that pastes the original
    back outside its mask (sd-core does) shows no drift there; the fit is then the identity and changes nothing.
    """
    selector = keep.translate(bytes([0] + [1] * 255))
    samples = selector.count(1)
    if samples < min_samples:
        return None
    src_mean, dst_mean, gains = [], [], []
    for src, dst in zip(split(result, channels), split(original, channels), strict=True):
        s = list(compress(src, selector))
        d = list(compress(dst, selector))
        ms, md = sum(s) / samples, sum(d) / samples
        vs = max(0.0, sum(map(mul, s, s)) / samples - ms * ms)
        vd = max(0.0, sum(map(mul, d, d)) / samples - md * md)
        gain = math.sqrt(vd / vs) if vs > 1.0 else 1.0
        src_mean.append(ms)
        dst_mean.append(md)
        gains.append(min(max_gain, max(1.0 / max_gain, gain)))
    return ColourFit(tuple(src_mean), tuple(dst_mean), tuple(gains), samples)


def apply_colours(data: bytes, fit: ColourFit | None, channels: int = 3) -> bytes:
    if fit is None:
        return bytes(data)
    return merge([p.translate(lut) for p, lut in zip(split(data, channels), fit.luts(), strict=True)])


# ---------------------------------------------------------------------------------------------------------------
# Putting a result back


@dataclass(frozen=True)
class LayerPixels:
    """Pixels for a new layer: B, G, R, A bytes covering `rect` (canvas coordinates); transparent elsewhere."""

    rect: Rect
    data: bytes


def composite(
    result_rgb: bytes, plan: Plan, alpha: bytes, original_rgb: bytes | None = None, keep: bytes | None = None
) -> LayerPixels:
    """A generated image (working size, R, G, B) -> the result layer's pixels.

    `alpha` is the shaped mask over `plan.box` (canvas resolution): it becomes the layer's alpha, so the layer
    shows only inside the grown/feathered selection and blends across the feathered edge. `original_rgb` and
    `keep` (working size, see `fit_colours`) enable colour matching. Only the visible part is resampled.
    """
    box = plan.box
    if len(result_rgb) != plan.work_w * plan.work_h * 3:
        raise RegionError(f"the server returned an image of the wrong size (expected {plan.work_w}x{plan.work_h})")
    if original_rgb is not None and keep is not None:
        result_rgb = apply_colours(result_rgb, fit_colours(result_rgb, original_rgb, keep))
    inner = nonzero_bounds(alpha, box.w, box.h)
    if inner.empty:
        return LayerPixels(Rect(box.x, box.y, 0, 0), b"")
    rgb = resize(result_rgb, plan.work_w, plan.work_h, 3, box.w, box.h, rows=inner)
    data = rgb_to_bgra(rgb, crop(alpha, box.w, 1, inner))
    return LayerPixels(Rect(box.x + inner.x, box.y + inner.y, inner.w, inner.h), data)
