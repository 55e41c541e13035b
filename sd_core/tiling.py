"""Seamless (tileable) convolution padding and tiled VAE encode/decode for large images.

Both work on any torch modules / callables, so they do not depend on how the networks are written.
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

_AXES = (None, "x", "y", "xy")
TileFn = Callable[[torch.Tensor], torch.Tensor]
_TORCH_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


# --- seamless ---------------------------------------------------------------------------------------------------


class SeamlessConvForward:
    """A replacement for one conv's `_conv_forward`: circular padding on `axes`, the conv's own mode on the other
    axis, then the convolution with padding 0. It remembers the instance-level `_conv_forward` it replaced
    (`previous`, None for the class's own), so that restoring is exact."""

    def __init__(self, conv: nn.Conv2d, axes: str, previous: Callable | None) -> None:
        self.conv, self.axes, self.previous = conv, axes, previous
        other = _TORCH_PAD_MODE[conv.padding_mode]
        self.x_mode = "circular" if "x" in axes else other
        self.y_mode = "circular" if "y" in axes else other

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        conv = self.conv
        left, right, top, bottom = conv._reversed_padding_repeated_twice
        if left or right:
            x = F.pad(x, (left, right, 0, 0), mode=self.x_mode)
        if top or bottom:
            x = F.pad(x, (0, 0, top, bottom), mode=self.y_mode)
        return F.conv2d(x, weight, bias, conv.stride, 0, conv.dilation, conv.groups)


def _patch(conv: nn.Conv2d) -> SeamlessConvForward | None:
    patch = conv.__dict__.get("_conv_forward")
    return patch if isinstance(patch, SeamlessConvForward) else None


def _set_axes(conv: nn.Conv2d, axes: str | None) -> None:
    """Give `conv` seamless padding on `axes` (None: its own padding again), replacing any seamless padding it had."""
    patch = _patch(conv)
    if patch is not None:
        if patch.previous is None:
            del conv.__dict__["_conv_forward"]
        else:
            conv._conv_forward = patch.previous
    if axes is not None:
        conv._conv_forward = SeamlessConvForward(conv, axes, conv.__dict__.get("_conv_forward"))


def _is_padded_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and any(m._reversed_padding_repeated_twice)


def _padded_convs(module: nn.Module) -> Iterator[nn.Conv2d]:
    return (m for m in module.modules() if _is_padded_conv(m))


def _hand_padders(module: nn.Module) -> Iterator[nn.Module]:
    """Modules that pad by hand before an unpadded conv (the VAE encoder's stride-2 downsample). They declare a
    `seamless` attribute ("x", "y", "xy" or None) and read it in forward; the functions here set and restore it."""
    for m in module.modules():
        if hasattr(m, "seamless") and not isinstance(m, nn.Conv2d):
            yield m


def set_seamless(module: nn.Module, axes: str | None) -> int:
    """Make every padded Conv2d in `module` wrap around along `axes` ("x", "y", "xy"); None restores the original.

    Conv2d's padding_mode is all-or-nothing, so for a single axis the conv's `_conv_forward` is replaced per instance
    (`SeamlessConvForward`). Weights and the state dict are untouched. Returns the number of convs changed.
    """
    if axes not in _AXES:
        raise ValueError(f"axes must be None, 'x', 'y' or 'xy', got {axes!r}")
    count = 0
    for padder in _hand_padders(module):
        padder.seamless = axes
    for conv in _padded_convs(module):
        _set_axes(conv, axes)
        count += 1
    return count


def seamless_axes(module: nn.Module) -> dict[str, str | None]:
    """The seamless axes now set on each padded conv of `module`, by qualified name (None: not seamless)."""
    return {name: getattr(_patch(m), "axes", None) for name, m in module.named_modules() if _is_padded_conv(m)}


@contextlib.contextmanager
def seamless(modules: nn.Module | Iterable[nn.Module], axes: str | None) -> Iterator[None]:
    """Context manager: `set_seamless` on each module for the block, then every conv back to its previous state.

    axes=None does nothing (convenient for an optional setting).
    """
    if axes not in _AXES:
        raise ValueError(f"axes must be None, 'x', 'y' or 'xy', got {axes!r}")
    if axes is None:
        yield
        return
    with padding_axes(modules, axes):
        yield


@contextlib.contextmanager
def padding_axes(modules: nn.Module | Iterable[nn.Module], axes: str | None) -> Iterator[None]:
    """Context manager: exactly `axes` seamless for the block (None: each conv's own padding, whatever seamless
    padding it had), then every conv and hand padder back to its previous state. Tiled denoising uses it to turn the
    UNet's wrap-around off on the axes it tiles: there only the whole canvas wraps, never a tile."""
    if axes not in _AXES:
        raise ValueError(f"axes must be None, 'x', 'y' or 'xy', got {axes!r}")
    mods = [modules] if isinstance(modules, nn.Module) else list(modules)
    padders = [(p, p.seamless) for mod in mods for p in _hand_padders(mod)]
    saved = [(conv, getattr(_patch(conv), "axes", None)) for mod in mods for conv in _padded_convs(mod)]
    try:
        for mod in mods:
            set_seamless(mod, axes)
        yield
    finally:
        for padder, before in padders:
            padder.seamless = before
        for conv, before in saved:
            _set_axes(conv, before)


# --- tiled VAE --------------------------------------------------------------------------------------------------


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile starts covering [0, size): a regular stride, the last tile aligned to the far edge."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def feather(length: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Feather weights along one side of a tile: linear ramps over the overlaps with the previous/next tile, 1
    elsewhere; never 0, and two ramps over the same overlap sum to 1."""
    w = torch.ones(length, dtype=torch.float32, device=device)
    if before > 0:
        w[:before] = (torch.arange(before, dtype=torch.float32, device=device) + 0.5) / before
    if after > 0:
        w[length - after :] = torch.minimum(
            w[length - after :], (torch.arange(after, 0, -1, dtype=torch.float32, device=device) - 0.5) / after
        )
    return w


def _axis_weights(
    starts: list[int], tile: int, size: int, num: int, den: int, device: torch.device
) -> list[torch.Tensor]:
    """Per-tile output weights along one axis (output units = input units * num / den)."""
    out = []
    for i, s in enumerate(starts):
        span = min(tile, size)
        before = starts[i - 1] + span - s if i > 0 else 0
        after = s + span - starts[i + 1] if i + 1 < len(starts) else 0
        out.append(feather(span * num // den, before * num // den, after * num // den, device))
    return out


def _tiled(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int, num: int, den: int
) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"expected a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
    if not 0 <= overlap < tile:
        raise ValueError(f"need 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if tile % den or overlap % den:
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of {den}")
    b, _, h, w = x.shape
    if h % den or w % den:
        raise ValueError(f"input size {w}x{h} must be a multiple of {den}")
    ys, xs = tile_starts(h, tile, tile - overlap), tile_starts(w, tile, tile - overlap)
    wy = _axis_weights(ys, tile, h, num, den, x.device)
    wx = _axis_weights(xs, tile, w, num, den, x.device)
    out = acc = None
    for iy, y0 in enumerate(ys):
        for ix, x0 in enumerate(xs):
            piece = fn(x[:, :, y0 : y0 + tile, x0 : x0 + tile])
            th, tw = min(tile, h) * num // den, min(tile, w) * num // den
            if piece.ndim != 4 or piece.shape[0] != b or piece.shape[2:] != (th, tw):
                raise ValueError(f"tile function returned shape {tuple(piece.shape)}, expected [{b}, C, {th}, {tw}]")
            if out is None:
                shape = (b, piece.shape[1], h * num // den, w * num // den)
                out = torch.zeros(shape, dtype=torch.float32, device=piece.device)
                acc = torch.zeros(h * num // den, w * num // den, dtype=torch.float32, device=piece.device)
                out_dtype = piece.dtype
            weight = wy[iy].to(piece.device)[:, None] * wx[ix].to(piece.device)[None, :]
            oy, ox = y0 * num // den, x0 * num // den
            out[:, :, oy : oy + th, ox : ox + tw].addcmul_(piece.float(), weight)
            acc[oy : oy + th, ox : ox + tw] += weight
            del piece
    out /= acc
    return out.to(out_dtype)


def tiled_decode(
    decode_fn: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    *,
    tile: int = 64,
    overlap: int = 16,
    scale: int = 8,
    seamless: str | None = None,
) -> torch.Tensor:
    """Decode latents [B, C, h, w] tile by tile; `tile` and `overlap` are in latent units, the output is `scale` x.

    Tiles overlap and are blended with linear feather weights; the last tile of a row/column is aligned to the edge.
    The result is accumulated in float32 into one preallocated output and returned in decode_fn's dtype, so peak
    memory is the decoder's activations for one tile plus the output image. The decoder's group norms and mid-block
    attention only see a tile, so the result differs slightly from a whole-image decode.

    `seamless` ("x", "y", "xy"): the latents are periodic along those axes; they are extended circularly by
    max(overlap, tile // 4) latents before tiling and the extension is cut off afterwards, so the image still wraps
    (a tile's own circular padding would wrap the tile, not the image).
    """
    return _tiled_wrapping(decode_fn, z, tile, overlap, scale, 1, seamless)


def _tiled_wrapping(
    fn: TileFn, x: torch.Tensor, tile: int, overlap: int, num: int, den: int, seamless: str | None
) -> torch.Tensor:
    """`_tiled`, with the input extended circularly along the `seamless` axes (by max(overlap, tile // 4) input
    units, a multiple of `den`) and the extension cut off the output."""
    if seamless not in (None, "x", "y", "xy"):
        raise ValueError(f"seamless must be None, 'x', 'y' or 'xy', got {seamless!r}")
    if not seamless:
        return _tiled(fn, x, tile, overlap, num, den)
    h, w = x.shape[-2:]
    extend = max(overlap, tile // 4) // den * den
    px = min(extend, w) if "x" in seamless and w > tile else 0
    py = min(extend, h) if "y" in seamless and h > tile else 0
    out = _tiled(fn, F.pad(x, (px, px, py, py), mode="circular"), tile, overlap, num, den)
    oy, ox, oh, ow = py * num // den, px * num // den, h * num // den, w * num // den
    return out[:, :, oy : oy + oh, ox : ox + ow]


def tiled_encode(
    encode: TileFn, x: torch.Tensor, *, tile: int = 512, overlap: int = 64, scale: int = 8, seamless: str | None = None
) -> torch.Tensor:
    """Encode pixels [B, 3, H, W] tile by tile (`encode` returns the latent mean); `tile` and `overlap` are in
    pixels and multiples of `scale`. Blending, memory and `seamless` as in `tiled_decode`."""
    return _tiled_wrapping(encode, x, tile, overlap, 1, scale, seamless)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device` in bytes, or None if unknown."""
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return None


def decode_bytes_estimate(height: int, width: int, dtype: torch.dtype) -> int:
    """Rough peak memory of an SD VAE decode of a height x width image.

    About four full-resolution 256-channel activations (the last up-block before its channel reduction, with the
    group-norm and residual copies) plus a naively materialised mid-block attention matrix over the latent pixels.
    Deliberately pessimistic: it only decides whether to tile.
    """
    size = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    convs = height * width * 256 * 4 * size
    tokens = (height // 8) * (width // 8)
    attention = 2 * tokens * tokens * size
    return convs + attention


CPU_TILE_LATENT_AREA = 96 * 96


def should_tile(height: int, width: int, dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether to decode a height x width (pixels) image in tiles.

    Yes on the CPU above a 96x96 latent (768x768 pixels), where a whole decode needs several GB and its attention
    grows with the square of the area; on any device when `decode_bytes_estimate` exceeds half the free memory.
    """
    device = torch.device(device)
    if device.type == "cpu" and (height // 8) * (width // 8) > CPU_TILE_LATENT_AREA:
        return True
    free = available_bytes(device)
    return free is not None and decode_bytes_estimate(height, width, dtype) > free // 2


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _free_cached(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def decode_with_fallback(
    decode_fn: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    *,
    tile: bool | None = None,
    tile_size: int = 64,
    overlap: int = 16,
    scale: int = 8,
    seamless: str | None = None,
) -> torch.Tensor:
    """Decode latents whole or in tiles (`seamless` as in `tiled_decode`, used only when tiling).

    tile=True always tiles; tile=False never does (an out-of-memory error propagates); tile=None (auto) tiles when
    `should_tile` says so, otherwise decodes whole and, on an out-of-memory error (torch.OutOfMemoryError, or a
    RuntimeError saying "out of memory" as MPS raises), frees the cache and retries tiled. A tiled decode that runs out
    of memory is retried with half the tile size, down to 16 latents.
    """
    h, w = z.shape[-2] * scale, z.shape[-1] * scale
    if tile is False:
        return decode_fn(z)
    if tile is None and not should_tile(h, w, z.dtype, z.device):
        try:
            return decode_fn(z)
        except RuntimeError as err:
            if not _is_oom(err):
                raise
        _free_cached(z.device)  # outside the except block, so the traceback's tensors can be freed
    size = tile_size
    while True:
        ov = min(overlap, size // 4)
        try:
            return tiled_decode(decode_fn, z, tile=size, overlap=ov, scale=scale, seamless=seamless)
        except RuntimeError as err:
            if not _is_oom(err) or size // 2 < 16:
                raise
        _free_cached(z.device)
        size = max(16, math.ceil(size / 2))
