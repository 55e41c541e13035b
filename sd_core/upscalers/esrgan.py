"""ESRGAN-family upscaler models: the RRDBNet network, its two key layouts, and a tiled run on [0, 1] RGB.

The network follows its published description: ESRGAN (Wang et al., "ESRGAN: Enhanced Super-Resolution Generative
Adversarial Networks", 2018) and Real-ESRGAN (Wang et al., "Real-ESRGAN: Training Real-World Blind Super-Resolution
with Pure Synthetic Data", 2021).

- A residual dense block: five 3x3 convolutions, each fed the block's input and every earlier output concatenated
  (the first four `growth` channels wide, each followed by LeakyReLU 0.2; the fifth back to `features`); the block
  returns input + 0.2 * the fifth's output. An RRDB chains three of them and again returns input + 0.2 * their result.
- The network: a first convolution to `features`; the trunk (`blocks` RRDBs and one convolution) added to it; per 2x
  upsampling a nearest-neighbour doubling, a convolution and LeakyReLU; an HR convolution with LeakyReLU; a last
  convolution to RGB.
- Real-ESRGAN's x2 and x1 models take the image pixel-unshuffled by 2 or 4 (12 or 48 input channels) and upsample 4x.

Two key layouts are read, with everything else (scale, blocks, feature width, growth channels, unshuffle factor)
inferred from the tensor shapes alone:

- the original ESRGAN layout ("ESRGAN"): `model.0` (first conv), `model.1.sub.N.RDBj.convk.0` (RRDB N, dense block
  j of 1-3, conv k of 1-5), `model.1.sub.{blocks}` (the trunk conv), then the other top-level `model.i` convs in
  index order: the upsampling convs, the HR conv and the last conv (the two highest indices);
- the BasicSR / Real-ESRGAN layout ("RealESRGAN"): `conv_first`, `body.N.rdbj.convk`, `conv_body`, `conv_up1` ..
  `conv_upK`, `conv_hr`, `conv_last`; Real-ESRGAN's `.pth` files wrap it in `params_ema` (used when present) or
  `params` (`sd_core.checkpoint` unwraps both). A `module.` prefix (a model saved from DataParallel) is dropped.

Files are `.safetensors` or pickles (`.pth`, `.pt`) read by `sd_core.checkpoint`: pickles only through
`torch.load(weights_only=True)`, so a pickle that would run code is refused, naming the file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..checkpoint import read_shapes, read_state_dict
from . import BASICSR, ORIGINAL

TILE, OVERLAP = 192, 8  # A1111's ESRGAN_tile and ESRGAN_tile_overlap defaults
SLOPE = 0.2  # LeakyReLU's negative slope
RESIDUAL = 0.2  # the residual scaling of dense blocks and RRDBs


class UpscalerError(ValueError):
    """A file that is not a usable ESRGAN-family model; the message starts with the file's path."""


@dataclass(frozen=True)
class RRDBConfig:
    """An RRDBNet's hyperparameters, as inferred from a file's shapes."""

    channels: int = 3  # colour channels in and out
    features: int = 64
    growth: int = 32
    blocks: int = 23
    upsamples: int = 2  # 2x nearest-neighbour upsamplings
    unshuffle: int = 1  # pixel-unshuffle factor of the input (Real-ESRGAN x2: 2, x1: 4)

    @property
    def scale(self) -> int:
        return 2**self.upsamples // self.unshuffle


class DenseBlock(nn.Module):
    """A residual dense block: `conv1`..`conv5`."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        for k in range(1, 6):
            out = growth if k < 5 else features
            setattr(self, f"conv{k}", nn.Conv2d(features + (k - 1) * growth, out, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = [x]
        for k in range(1, 5):
            seen.append(F.leaky_relu(getattr(self, f"conv{k}")(torch.cat(seen, 1)), SLOPE))
        return x + RESIDUAL * self.conv5(torch.cat(seen, 1))


class RRDB(nn.Module):
    """Residual in residual dense block: `rdb1`..`rdb3`."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (DenseBlock(features, growth) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """The ESRGAN generator in the BasicSR key layout; [B, 3, H, W] in [0, 1] -> [B, 3, H * scale, W * scale]."""

    def __init__(self, config: RRDBConfig) -> None:
        super().__init__()
        c, f = config, config.features
        self.config = config
        self.conv_first = nn.Conv2d(c.channels * c.unshuffle**2, f, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(f, c.growth) for _ in range(c.blocks)))
        self.conv_body = nn.Conv2d(f, f, 3, padding=1)
        for k in range(1, c.upsamples + 1):
            setattr(self, f"conv_up{k}", nn.Conv2d(f, f, 3, padding=1))
        self.conv_hr = nn.Conv2d(f, f, 3, padding=1)
        self.conv_last = nn.Conv2d(f, c.channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.config.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for k in range(1, self.config.upsamples + 1):
            up = F.interpolate(feat, scale_factor=2, mode="nearest")
            feat = F.leaky_relu(getattr(self, f"conv_up{k}")(up), SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), SLOPE))


# --- key layouts and shapes --------------------------------------------------------------------------------------

_OLD_DENSE = re.compile(r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)")
_OLD_TRUNK = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)")
_OLD_TOP = re.compile(r"model\.(\d+)\.(weight|bias)")


def _original_names(keys: Iterable[str]) -> dict[str, str]:
    """Original ESRGAN key -> BasicSR key (keys that fit neither pattern are left as they are, and refused later)."""
    keys = list(keys)
    names: dict[str, str] = {}
    top = sorted({int(m.group(1)) for k in keys if (m := _OLD_TOP.fullmatch(k)) and m.group(1) != "1"})
    roles = {i: f"conv_up{n}" for n, i in enumerate(top[1:-2], start=1)}
    if len(top) >= 3:
        roles.update({top[0]: "conv_first", top[-2]: "conv_hr", top[-1]: "conv_last"})
    for key in keys:
        if m := _OLD_DENSE.fullmatch(key):
            names[key] = f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"
        elif m := _OLD_TRUNK.fullmatch(key):
            names[key] = f"conv_body.{m.group(2)}"
        elif (m := _OLD_TOP.fullmatch(key)) and int(m.group(1)) in roles:
            names[key] = f"{roles[int(m.group(1))]}.{m.group(2)}"
        else:
            names[key] = key
    return names


def layout_names(path: Path, keys: Iterable[str]) -> tuple[str, dict[str, str]]:
    """(layout, file key -> BasicSR key) of an ESRGAN-family file, or an `UpscalerError` naming it."""
    keys = [k.removeprefix("module.") for k in keys]
    if "conv_first.weight" in keys:
        return BASICSR, {k: k for k in keys}
    if "model.0.weight" in keys and any(_OLD_DENSE.fullmatch(k) for k in keys):
        return ORIGINAL, _original_names(keys)
    shown = ", ".join(sorted(keys)[:4]) + (", ..." if len(keys) > 4 else "")
    raise UpscalerError(
        f"{path}: not an ESRGAN-family model (RRDBNet): it has neither 'conv_first.weight' (BasicSR / Real-ESRGAN "
        f"layout) nor 'model.0.weight' with 'model.1.sub.N.RDBj...' blocks (original ESRGAN layout); its keys: {shown}"
    )


def _count(shapes: Mapping[str, tuple[int, ...]], pattern: str, start: int) -> int:
    n = start
    while pattern.format(n) in shapes:
        n += 1
    return n - start


def infer_config(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> RRDBConfig:
    """The network's hyperparameters from BasicSR-keyed shapes, checked against the network they describe."""
    try:
        first, last = shapes["conv_first.weight"], shapes["conv_last.weight"]
        blocks = _count(shapes, "body.{}.rdb1.conv1.weight", 0)
        growth = shapes["body.0.rdb1.conv1.weight"][0] if blocks else 32
        channels, unshuffle_sq = last[0], first[1] // max(last[0], 1)
        unshuffle = math.isqrt(unshuffle_sq)
        config = RRDBConfig(channels, first[0], growth, blocks, _count(shapes, "conv_up{}.weight", 1), unshuffle)
    except (KeyError, IndexError) as exc:
        raise UpscalerError(f"{path}: not an ESRGAN-family model (RRDBNet): no tensor {exc}") from None
    if channels != 3 or unshuffle * unshuffle * channels != first[1] or unshuffle not in (1, 2, 4):
        raise UpscalerError(
            f"{path}: an RRDBNet with {first[1]} input and {channels} output channels; only RGB models (3 channels "
            "out; 3, 12 or 48 in) are supported"
        )
    if 2**config.upsamples % unshuffle or config.scale < 1:
        raise UpscalerError(f"{path}: {config.upsamples} 2x upsamplings of an input unshuffled by {unshuffle}")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in RRDBNet(config).state_dict().items()}
    for key in sorted(set(expected) | set(shapes)):
        have, need = shapes.get(key), expected.get(key)
        if have != need:
            why = (
                f"{key} is missing"
                if have is None
                else f"{key} is not part of it"
                if need is None
                else f"{key} has the shape {have}, where it needs {need}"
            )
            raise UpscalerError(f"{path}: not an ESRGAN-family model its shapes agree on ({config}): {why}")
    return config


def read_config(path: str | Path) -> tuple[str, RRDBConfig]:
    """(layout, config) of a model file, from its shapes only (no tensor data read where the format allows)."""
    path = Path(path)
    shapes = read_shapes(path)
    layout, names = layout_names(path, shapes)
    return layout, infer_config(path, {names[k.removeprefix("module.")]: tuple(v) for k, v in shapes.items()})


def load(path: str | Path, device: str | torch.device = "cpu") -> RRDBNet:
    """The network of a model file, float32 on `device`, in eval mode."""
    path = Path(path)
    state = read_state_dict(path, dtype=torch.float32, device=device)
    _, names = layout_names(path, state)
    state = {names[k.removeprefix("module.")]: v for k, v in state.items()}
    config = infer_config(path, {k: tuple(v.shape) for k, v in state.items()})
    with torch.device("meta"):
        net = RRDBNet(config)
    net.load_state_dict(state, assign=True)
    return net.eval().requires_grad_(False)


# --- running ------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def upscale(net: RRDBNet, img: Image.Image, tile: int = TILE, overlap: int = OVERLAP) -> Image.Image:
    """`img` (RGB) enlarged by the network's scale, in tiles of `tile` x `tile` input pixels (0: one piece) each run
    with `overlap` pixels of the image around it as context, cropped away after the run; so memory stays bounded by
    the tile, and a tile's result equals the untiled one wherever the context covers the network's reach.
    Sizes the pixel-unshuffle cannot divide are padded by repeating the edge, and the padding cropped away."""
    u, s = net.config.unshuffle, net.config.scale
    device = next(net.parameters()).device
    arr = np.array(img.convert("RGB"))
    h, w = arr.shape[:2]
    if h % u or w % u:
        arr = np.pad(arr, ((0, -h % u), (0, -w % u), (0, 0)), mode="edge")
    height, width = arr.shape[:2]
    step = max(tile // u * u, u) if tile > 0 else max(height, width)
    margin = -(-max(overlap, 0) // u) * u
    out = np.empty((height * s, width * s, 3), np.uint8)
    for y0 in range(0, height, step):
        for x0 in range(0, width, step):
            y1, x1 = min(y0 + step, height), min(x0 + step, width)
            cy, cx = max(y0 - margin, 0), max(x0 - margin, 0)
            piece = torch.from_numpy(arr[cy : min(y1 + margin, height), cx : min(x1 + margin, width)])
            x = piece.permute(2, 0, 1)[None].to(device=device, dtype=torch.float32).div_(255)
            y = net(x)[0, :, (y0 - cy) * s : (y1 - cy) * s, (x0 - cx) * s : (x1 - cx) * s]
            out[y0 * s : y1 * s, x0 * s : x1 * s] = (
                y.clamp_(0, 1).mul_(255).round_().byte().permute(1, 2, 0).cpu().numpy()
            )
    return Image.fromarray(out[: h * s, : w * s])
