"""Cheap live previews: latents -> RGB by a small linear map (plus bias), no VAE call per step.

Every model has its own latent space: the widely used SD1/SD2 least-squares matrix (`LATENT_RGB`, "approx cheap"
previews) is right for SD1's VAE and wrong for any other, where it shows grey-blue noise while the image comes out
green and yellow. So each pipeline gets its own map (`for_pipeline`), fitted once, lazily at first use, and cached on
the pipeline:

1. Data: `fit_pictures` (2 deterministic 64 px pictures: a smooth colour field and two-colour stripes or checks)
   encoded by the model's VAE (posterior mean, scaled: the space the sampler's latents live in), plus 2 random
   latent fields (seeded: one white noise, one smooth); each of the 4 latents is decoded by the model's own decoder
   and the decoded picture, average-pooled to the latent grid (8x8 pixels a cell), is the target. Fitting to the
   decoder's output makes the preview predict what the final decode will show. 2 encoder and 4 decoder calls on 8x8
   latents: milliseconds on a GPU, about a second for SD1.5's VAE on a CPU.
2. The map: each RGB cell is a linear function of the latents in its 3x3 neighbourhood plus a bias (a 3x3
   convolution, channels -> 3, edges replicated), least squares in float64 with a small ridge term. The decoder
   draws a cell from its neighbours too; on the built-in model this neighbourhood lifts the preview's correlation
   with the final image from about 0.5 (one cell alone) to about 0.6 (SD1's fixed matrix: about 0.06).

A preview is the map applied to one image of the batch (the model's current clean estimate `StepInfo.denoised` is
the better input), upsampled (bilinear) so its shorter side is at least `MIN_SIDE` (128) px, its longer side at most
`MAX_SIDE` (512) px (large latents are pooled first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LATENT_RGB = torch.tensor(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
)
MIN_SIDE = 128  # the preview's shorter side, at least (small latents are upsampled)
MAX_SIDE = 512  # the preview's longer side, at most (large latents are pooled first)
FIT_PICTURES = 2  # encoded pictures; as many random latent fields again
FIT_SIDE = 64
FIT_SEED = 0
RIDGE = 1e-3
_CACHE_ATTRIBUTE = "_sd_core_preview_map"


@dataclass(frozen=True)
class LatentRGB:
    """A linear latent -> RGB map: `rgb = conv2d(z, weight) + bias` over each cell's 3x3 neighbourhood (edges
    replicated), rgb in [-1, 1] (the VAE's pixel range)."""

    weight: torch.Tensor  # [3, channels, 3, 3]
    bias: torch.Tensor  # [3]

    def rgb(self, latents: torch.Tensor, index: int = 0) -> torch.Tensor:
        """[h, w, 3] float RGB in [-1, 1] (unclamped) of image `index` of a [B, C, h, w] batch."""
        z = latents[index : index + 1, : self.weight.shape[1]].detach().float().cpu()
        out = F.conv2d(F.pad(z, (1, 1, 1, 1), mode="replicate"), self.weight.float(), self.bias.float())
        return out[0].permute(1, 2, 0)

    def image(self, latents: torch.Tensor, index: int = 0) -> Image.Image:
        """The preview picture of image `index`: RGB PIL, shorter side at least `MIN_SIDE`."""
        return to_image(self.rgb(_pooled(latents[index : index + 1]), 0))


def _centre_only(matrix: torch.Tensor) -> torch.Tensor:
    """A [channels, 3] per-cell matrix as a 3x3 kernel that reads the centre cell only."""
    kernel = torch.zeros(3, matrix.shape[0], 3, 3)
    kernel[:, :, 1, 1] = matrix.T
    return kernel


FIXED = LatentRGB(_centre_only(LATENT_RGB), torch.zeros(3))  # SD1/SD2's matrix: the fallback when no pipeline is known


def _pooled(latents: torch.Tensor) -> torch.Tensor:
    """Latents average-pooled so that the preview's longer side can stay within `MAX_SIDE`."""
    h, w = latents.shape[-2:]
    factor = 1
    while max(h, w) // factor > MAX_SIDE:
        factor *= 2
    return F.avg_pool2d(latents.detach().float().cpu(), factor, ceil_mode=True) if factor > 1 else latents


def to_image(rgb: torch.Tensor) -> Image.Image:
    """[h, w, 3] RGB in [-1, 1] -> PIL, upsampled (bilinear) to a shorter side of at least `MIN_SIDE` px."""
    h, w = rgb.shape[:2]
    scale = -(-MIN_SIDE // min(h, w))  # ceil
    if max(h, w) * scale > MAX_SIDE:  # a long thin image: its longer side bounds it
        scale = max(1, MAX_SIDE // max(h, w))
    x = rgb.permute(2, 0, 1)[None]
    if scale > 1:
        x = F.interpolate(x, size=(h * scale, w * scale), mode="bilinear", align_corners=False)
    arr = ((x[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def latents_to_preview(latents: torch.Tensor, index: int = 0, mapping: LatentRGB | None = None) -> Image.Image:
    """One image of a [B,C,h,w] latent batch (k-space or VP; previews need no exact scale) as an RGB PIL image of at
    least `MIN_SIDE` px, by `mapping` (a pipeline's, from `for_pipeline`) or, without one, SD1's fixed matrix."""
    return (mapping or FIXED).image(latents, index)


def fit_pictures(count: int = FIT_PICTURES, side: int = FIT_SIDE, seed: int = FIT_SEED) -> torch.Tensor:
    """Pictures the map is fitted on: [count, 3, side, side] in [-1, 1], the same for a given seed. Even ones are
    smooth colour fields (a 4x4 grid of random colours, bicubic), odd ones two random colours in stripes or checks."""
    g = torch.Generator("cpu").manual_seed(seed)
    out = []
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    for i in range(count):
        if i % 2 == 0:
            grid = torch.rand(1, 3, 4, 4, generator=g) * 2 - 1
            out.append(F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=True)[0].clamp(-1, 1))
        else:
            a, b = (torch.rand(3, 1, 1, generator=g) * 2 - 1 for _ in range(2))
            period = int(torch.randint(8, 33, (1,), generator=g))
            kind = int(torch.randint(0, 3, (1,), generator=g))
            bands = (xx // period) if kind == 0 else (yy // period) if kind == 1 else (xx // period + yy // period)
            pick = (bands % 2 == 0).float()[None]
            out.append(a * pick + b * (1 - pick))
    return torch.stack(out)


def _neighbourhoods(z: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] -> [N*h*w, C*9]: each cell's 3x3 neighbourhood (edges replicated), in conv2d's weight order."""
    cols = F.unfold(F.pad(z, (1, 1, 1, 1), mode="replicate"), 3)  # [N, C*9, h*w]
    return cols.permute(0, 2, 1).reshape(-1, cols.shape[1])


def _decoded_cells(pipe: Any, z: torch.Tensor) -> torch.Tensor:
    """What `pipe`'s decoder makes of `z` [1, C, h, w], average-pooled to the latent grid: [1, 3, h, w] in [-1, 1]."""
    decoded = pipe.decode_latents(z)[0]
    pixels = torch.from_numpy(np.asarray(decoded.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
    return F.adaptive_avg_pool2d(pixels / 127.5 - 1.0, z.shape[-2:])


def fit(pipe: Any, *, pictures: int = FIT_PICTURES, side: int = FIT_SIDE, seed: int = FIT_SEED) -> LatentRGB:
    """The least-squares latent -> RGB map of `pipe`'s VAE (module docstring), through `pipe.encode_pixels` and
    `pipe.decode_latents`. Deterministic for a model and seed."""
    latents = [pipe.encode_pixels(p[None], None).float().cpu() for p in fit_pictures(pictures, side, seed)]
    g = torch.Generator("cpu").manual_seed(seed)
    channels, cells = latents[0].shape[1], side // 8
    for i in range(pictures):  # random fields: white noise, then smooth (a 4x coarser grid, bilinear)
        coarse = torch.randn(1, channels, max(cells // 4, 1), max(cells // 4, 1), generator=g)
        noise = torch.randn(1, channels, cells, cells, generator=g)
        latents.append(noise if i % 2 == 0 else F.interpolate(coarse, size=(cells, cells), mode="bilinear"))
    x = torch.cat([_neighbourhoods(z) for z in latents]).double()
    y = torch.cat([_decoded_cells(pipe, z) for z in latents]).permute(0, 2, 3, 1).reshape(-1, 3).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    ridge = RIDGE * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
    ridge[-1, -1] = 0.0  # the bias is not shrunk
    solution = torch.linalg.solve(x.T @ x + ridge, x.T @ y)  # [C*9 + 1, 3]
    weight = solution[:-1].T.reshape(3, channels, 3, 3)
    return LatentRGB(weight.float(), solution[-1].float())


def for_pipeline(pipe: Any) -> LatentRGB:
    """`pipe`'s map, fitted at the first call and kept on the pipeline (call it where the pipeline's own work runs:
    the fit uses its VAE)."""
    cached = getattr(pipe, _CACHE_ATTRIBUTE, None)
    if cached is None:
        cached = fit(pipe)
        setattr(pipe, _CACHE_ATTRIBUTE, cached)
    return cached
