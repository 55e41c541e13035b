"""Tiled denoising: the UNet on overlapping latent tiles at every step, their clean-latent estimates blended.

The idea is MultiDiffusion's (Bar-Tal et al., "MultiDiffusion: Fusing Diffusion Paths for Controlled Image
Generation", 2023): each tile of the canvas is denoised on its own, and at every step the canvas takes, pixel by pixel,
the weighted mean of what the tiles that cover the pixel say. Here the mean is taken of the tiles' clean-latent (x0)
estimates, weighted by feather ramps over the overlaps (`tiling.feather`, the tiled VAE's weights), so the wrapper is
one more k-diffusion denoiser `x, sigma -> x0` and works with every sampler, with classifier-free guidance (each tile
is guided before blending), with the inpainting model's extra channels (cropped with the tile) and with blended
inpainting (applied to the whole canvas). A sampler's step is affine in x0 with the same coefficients at every pixel,
so for one-step samplers (Euler, DDIM, ...) blending x0 is blending the tiles' own steps, MultiDiffusion's
least-squares fusion; for the others it is the natural extension.

Seamless canvases (`GenerationSettings.tiling`): along a seamless axis the tiles wrap around the canvas (a cylinder or
torus: the last tiles take their far part from the start), evenly spaced so every overlap is at least the one asked
for. The UNet's own wrap-around padding (`tiling.seamless`) must not wrap a tile onto itself, so while tiles run it is
turned off on the axes that are tiled (`tiling.padding_axes`); an axis one tile covers keeps it, and there the tile is
the whole canvas, as without tiling.

Tiles of a step run in as few UNet calls as `TileOptions.batch` (or the memory estimate) allows, stacked on the
batch axis. An axis the tile covers is not tiled, and a canvas one tile covers is sampled by the plain denoiser, so
the result is then exactly the untiled one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import tiling
from .denoiser import GuidedDenoiser
from .settings import TileOptions

LATENT_FACTOR = 8  # pixels per latent
CPU_CALL_AREA = 16 * 64 * 64
"""Latent pixels per UNet call on a CPU: more tiles per call than this gain little and cost memory (built-in model,
2 cores: 8x8 tiles ran 13x faster per pixel 256 to a call than one by one, 64x64 tiles 1.6x faster 16 to a call)."""


@dataclass(frozen=True)
class Axis:
    """The tiles along one axis of the canvas (latent units): `starts`, each `tile` long, with their feather
    weights; `wraps`: tiles go on past the far edge into the start (a seamless axis with more than one tile)."""

    size: int
    tile: int
    starts: tuple[int, ...]
    weights: tuple[torch.Tensor, ...]
    wraps: bool

    @property
    def extension(self) -> int:
        """How far the tiles reach past the far edge."""
        return max(s + self.tile for s in self.starts) - self.size


def plan_axis(size: int, tile: int, overlap: int, seamless: bool) -> Axis:
    """Tiles of `tile` latents with at least `overlap` in common covering `size` latents (wrapping if `seamless`)."""
    if tile >= size:
        return Axis(size, size, (0,), (torch.ones(size),), False)
    stride = tile - overlap
    if seamless:
        count = max(2, math.ceil(size / stride))
        starts = [k * size // count for k in range(count)]
        gaps = [(starts[(k + 1) % count] - s) % size or size for k, s in enumerate(starts)]
        after = [tile - gap for gap in gaps]
        befores = [after[k - 1] for k in range(count)]  # tile 0's previous tile is the last one, wrapped
    else:
        starts = tiling.tile_starts(size, tile, stride)
        after = [s + tile - starts[k + 1] for k, s in enumerate(starts[:-1])] + [0]
        befores = [0] + after[:-1]
    weights = tuple(tiling.feather(tile, b, a, torch.device("cpu")) for b, a in zip(befores, after, strict=True))
    return Axis(size, tile, tuple(starts), weights, seamless)


class TileGrid:
    """The tiles of a latent canvas of `height` x `width`: rows of `ys` by columns of `xs`, cut from the canvas
    extended circularly past its far edges (`crop`) and added back with their weights, the wrapped parts folded onto
    the start (`blend`)."""

    def __init__(self, ys: Axis, xs: Axis) -> None:
        self.ys, self.xs = ys, xs
        self.tiles = [(y, x) for y in range(len(ys.starts)) for x in range(len(xs.starts))]
        self.weights = [ys.weights[y][:, None] * xs.weights[x][None, :] for y, x in self.tiles]
        ones = torch.ones(1, 1, ys.tile, xs.tile)
        self.norm = self._fold(self._accumulate([(k, ones) for k in range(len(self))]))

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def tile_size(self) -> tuple[int, int]:
        return self.ys.tile, self.xs.tile

    def extend(self, canvas: torch.Tensor) -> torch.Tensor:
        """The canvas with its start repeated past the far edges, as far as the tiles reach."""
        ey, ex = self.ys.extension, self.xs.extension
        return F.pad(canvas, (0, ex, 0, ey), mode="circular") if ey or ex else canvas

    def crop(self, extended: torch.Tensor, k: int) -> torch.Tensor:
        """Tile `k` of a canvas made by `extend`."""
        y, x = self.tiles[k]
        y0, x0 = self.ys.starts[y], self.xs.starts[x]
        return extended[:, :, y0 : y0 + self.ys.tile, x0 : x0 + self.xs.tile]

    def _accumulate(self, parts: Sequence[tuple[int, torch.Tensor]]) -> torch.Tensor:
        """The (tile index, values) pairs weighted and added at their places on an extended canvas (float32)."""
        into = None
        for k, part in parts:
            if into is None:
                shape = (*part.shape[:2], self.ys.size + self.ys.extension, self.xs.size + self.xs.extension)
                into = torch.zeros(shape, dtype=torch.float32, device=part.device)
            if self.weights[k].device != part.device:
                self.weights = [w.to(part.device) for w in self.weights]
            y, x = self.tiles[k]
            y0, x0 = self.ys.starts[y], self.xs.starts[x]
            into[:, :, y0 : y0 + self.ys.tile, x0 : x0 + self.xs.tile].addcmul_(part.float(), self.weights[k])
        assert into is not None, "no tiles to blend"
        return into

    def _fold(self, extended: torch.Tensor) -> torch.Tensor:
        """An extended canvas back to the canvas: what lies past a far edge is added at the start."""
        h, w = self.ys.size, self.xs.size
        ey, ex = extended.shape[-2] - h, extended.shape[-1] - w
        if ex:
            extended[..., :ex] += extended[..., w:]
        if ey:
            extended[..., :ey, :w] += extended[..., h:, :w]
        return extended[..., :h, :w]

    def blend(self, parts: Sequence[tuple[int, torch.Tensor]]) -> torch.Tensor:
        """The canvas from (tile index, values) pairs: at each pixel the weighted mean of the tiles covering it."""
        canvas = self._fold(self._accumulate(parts))
        if self.norm.device != canvas.device:
            self.norm = self.norm.to(canvas.device)
        return canvas / self.norm


def plan(tile: TileOptions, height: int, width: int, seamless: str | None) -> TileGrid | None:
    """The tiles for a latent canvas of `height` x `width` with resolved `tile` options (pixels); None when one
    tile covers the canvas."""
    assert tile.width is not None and tile.height is not None and tile.overlap is not None, "resolve the options"
    overlap = tile.overlap // LATENT_FACTOR
    axes = seamless or ""
    ys = plan_axis(height, tile.height // LATENT_FACTOR, overlap, "y" in axes)
    xs = plan_axis(width, tile.width // LATENT_FACTOR, overlap, "x" in axes)
    return None if len(ys.starts) == len(xs.starts) == 1 else TileGrid(ys, xs)


class TiledDenoiser:
    """A `GuidedDenoiser` run tile by tile over the canvas (see the module's docstring). `module` is the UNet whose
    padding is set while tiles run; `seamless` the canvas's wrap-around axes."""

    def __init__(
        self, inner: GuidedDenoiser, grid: TileGrid, batch: int, module: nn.Module, seamless: str | None
    ) -> None:
        self.inner, self.grid, self.module = inner, grid, module
        self.blend = inner.blend  # the pipeline reads it after sampling
        kept = "".join(a for a, axis in (("x", grid.xs), ("y", grid.ys)) if a in (seamless or "") and not axis.wraps)
        self.seamless, self.unet_axes = seamless, kept or None
        extra = None if inner.extra is None else grid.extend(inner.extra)
        # equal calls: a new input shape costs a weight repack on the CPU (`accel.packing`) and a new CUDA graph, so
        # the tiles are split evenly and the last call is filled up with its last tile again (result unused)
        calls = math.ceil(len(grid) / batch)
        size = math.ceil(len(grid) / calls)
        self.chunks = []
        for first in range(0, len(grid), size):
            chunk = list(range(first, min(first + size, len(grid))))
            chunk += chunk[-1:] * (size - len(chunk))
            stacked = None if extra is None else torch.cat([grid.crop(extra, k) for k in chunk])
            self.chunks.append((chunk, inner.for_tiles(stacked)))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self._run(x, sigma, lambda d, xt, st: (d(xt, st),))[0]

    def with_uncond(
        self, x: torch.Tensor, sigma: torch.Tensor, cfg_factor: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided x0, unconditional x0), each blended over the tiles (`GuidedDenoiser.with_uncond`)."""
        guided, uncond = self._run(x, sigma, lambda d, xt, st: d.with_uncond(xt, st, cfg_factor))
        return guided, uncond

    def _run(
        self, x: torch.Tensor, sigma: torch.Tensor, call: Callable[..., tuple[torch.Tensor, ...]]
    ) -> list[torch.Tensor]:
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(b)
        if self.blend is not None:  # elementwise, so the same on the canvas as on each tile
            x = self.blend.apply(x, sigma)
        extended = self.grid.extend(x)
        parts: list[list[tuple[int, torch.Tensor]]] = []
        # only the canvas wraps: no tile's convolutions wrap on an axis that is tiled
        padding = tiling.padding_axes(self.module, self.unet_axes) if self.seamless else contextlib.nullcontext()
        with padding:
            for chunk, denoiser in self.chunks:
                tiles = torch.cat([self.grid.crop(extended, k) for k in chunk])
                results = call(denoiser, tiles, sigma.repeat(len(chunk)))
                parts.extend([] for _ in range(len(results) - len(parts)))
                for out, result in zip(parts, results, strict=True):
                    out.extend(dict(zip(chunk, result.split(b), strict=True)).items())  # a repeated tile once
        canvases = [self.grid.blend(out).to(x.dtype) for out in parts]
        return [c if self.blend is None else self.blend.restore(c) for c in canvases]


def unet_bytes_estimate(height: int, width: int, unet: nn.Module, dtype: torch.dtype) -> int:
    """Rough peak memory of one UNet row at a latent of `height` x `width`: two dozen activations of the first level's
    width at full size (the skip connections and the working copies), plus a materialised self-attention matrix
    at the largest attention level. Pessimistic, like `tiling.decode_bytes_estimate`: it only sizes tile batches."""
    size = 4 if dtype == torch.float32 else 2
    cfg = getattr(unet, "config", None) or {}
    channels = cfg.get("model_channels", 320) * cfg.get("channel_mult", [1])[0]
    depths = cfg.get("transformer_depth", [1])
    level = next((i for i, d in enumerate(depths) if d), None)
    heads = cfg.get("num_heads", 8) if cfg.get("num_heads", -1) > 0 else channels // 64
    convs = 24 * height * width * channels * size
    if level is None:
        return convs
    tokens = (height >> level) * (width >> level)
    return convs + heads * tokens * tokens * size


def tile_batch(tile: TileOptions, grid: TileGrid, rows: int, unet: nn.Module, device: torch.device) -> int:
    """Tiles per UNet call: `tile.batch`, or as many as a quarter of the free memory holds (on a CPU at most
    `CPU_CALL_AREA` latent pixels a call); `rows` are UNet rows per tile."""
    if tile.batch is not None:
        return min(tile.batch, len(grid))
    free = tiling.available_bytes(device)
    if free is None:
        return 1
    dtype = next(unet.parameters()).dtype
    per_tile = rows * unet_bytes_estimate(*grid.tile_size, unet, dtype)
    height, width = grid.tile_size
    cap = max(1, CPU_CALL_AREA // (height * width)) if device.type == "cpu" else len(grid)
    return max(1, min(len(grid), cap, free // 4 // max(per_tile, 1)))


def wrap(
    inner: GuidedDenoiser,
    tile: TileOptions,
    latents: torch.Size,
    seamless: str | None,
    unet: nn.Module,
    device: torch.device,
) -> GuidedDenoiser | TiledDenoiser:
    """`inner` tiled over a canvas shaped like `latents` ([B, C, h, w]) with resolved `tile` options; `inner`
    itself when one tile covers the canvas. `unet` is the module whose padding tiles switch (the pipeline's UNet)."""
    grid = plan(tile, latents[-2], latents[-1], seamless)
    if grid is None:
        return inner
    rows = latents[0] * (2 if inner.guided else 1)
    return TiledDenoiser(inner, grid, tile_batch(tile, grid, rows, unet, device), unet, seamless)
