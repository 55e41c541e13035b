"""The KL autoencoder (LDM `AutoencoderKL`, f=8) that maps images in [-1, 1] to latents and back.

Attribute names are the single-file keys with `first_stage_model.` stripped. No latent scaling here: the pipeline
multiplies by `latent_scale` (0.18215) after `encode` and divides before `decode`.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention, group_norm
from .layers import add_residual, silu_, upsample_conv


def vae_config(config: dict) -> dict:
    """Complete a VAE config. Keys: in_channels (3), out_ch (3), ch (128), ch_mult ([1, 2, 4, 4]), num_res_blocks (2),
    z_channels (4), embed_dim (4). The encoder always predicts mean and logvar (2 * z_channels outputs)."""
    cfg = dict(config)
    cfg.setdefault("in_channels", 3)
    cfg.setdefault("out_ch", 3)
    cfg["ch_mult"] = [int(m) for m in cfg["ch_mult"]]
    cfg.setdefault("embed_dim", cfg["z_channels"])
    return cfg


_LINEAR_ATTN = re.compile(r"(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def _norm(channels: int) -> nn.GroupNorm:
    return group_norm(channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.nin_shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(silu_(self.norm1(x)))
        h = self.dropout(silu_(self.norm2(h)))  # rebinding h frees conv1's output before conv2 runs (peak memory)
        return add_residual(self.conv2, h, self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels. q/k/v/proj_out are 1x1 convs; files that store them as Linear
    weights [C, C] (diffusers-converted VAEs) are accepted: the load hook adds the two unit dimensions (a view)."""

    attention_dtype: torch.dtype | None = None  # compute the attention core in this dtype (None: the inputs')
    attention_chunk: int | None = None  # query rows per attention call (None: all at once)

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("q", "k", "v", "proj_out"):
            key = f"{prefix}{name}.weight"
            if key in state_dict and state_dict[key].ndim == 2:
                state_dict[key] = state_dict[key][:, :, None, None]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.norm(x)
        q, k, v = (conv(t).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))
        out = attention(q, k, v, heads=1, dtype=self.attention_dtype, chunk=self.attention_chunk)
        out = out.transpose(1, 2).reshape(b, c, h, w)
        return add_residual(self.proj_out, out, x)


class Downsample(nn.Module):
    """Stride-2 conv after padding one pixel right and bottom only (the LDM convention, padding=0 in the conv).

    `seamless` ("x", "y", "xy" or None, set by `sd_core.tiling`) makes that pad wrap around on those axes; the conv's
    own padding_mode set to circular (all axes) is honoured too.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)
        self.seamless: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = "xy" if self.conv.padding_mode == "circular" else (self.seamless or "")
        x = F.pad(x, (0, 1, 0, 0), mode="circular" if "x" in axes else "constant")
        return self.conv(F.pad(x, (0, 0, 0, 1), mode="circular" if "y" in axes else "constant"))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_conv(self.conv, x)


class Mid(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """`encoder.down.N` / `decoder.up.N`: ResnetBlocks (`block.M`), then an optional `downsample` / `upsample`."""

    def __init__(self, channels: list[int], resample: nn.Module | None, up: bool):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(a, b) for a, b in zip(channels[:-1], channels[1:], strict=True))
        self.resample_name = None if resample is None else ("upsample" if up else "downsample")
        if resample is not None:
            self.add_module(self.resample_name, resample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.resample_name is None else getattr(self, self.resample_name)(x)


class Encoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        ch, mult = cfg["ch"], cfg["ch_mult"]
        self.conv_in = nn.Conv2d(cfg["in_channels"], ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for i, m in enumerate(mult):
            out = ch * m
            last = i == len(mult) - 1
            self.down.append(
                Level([block_in] + [out] * cfg["num_res_blocks"], None if last else Downsample(out), False)
            )
            block_in = out
        self.mid = Mid(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg["z_channels"], 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(silu_(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        ch, mult = cfg["ch"], cfg["ch_mult"]
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg["z_channels"], block_in, 3, padding=1)
        self.mid = Mid(block_in)
        levels: list[Level] = []
        for i in reversed(range(len(mult))):
            out = ch * mult[i]
            levels.append(Level([block_in] + [out] * (cfg["num_res_blocks"] + 1), Upsample(out) if i else None, True))
            block_in = out
        # checkpoint index = resolution level (up.0 is the full-resolution one), run from the deepest level up
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg["out_ch"], 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(silu_(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """`encode(x) -> (mean, logvar)` of the latent posterior (logvar clamped to [-30, 20] as LDM does);
    `decode(z) -> image`. Inputs are cast to the weights' dtype; outputs are in the weights' dtype."""

    def __init__(self, config: dict):
        super().__init__()
        cfg = vae_config(config)
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg["z_channels"], 2 * cfg["embed_dim"], 1)
        self.post_quant_conv = nn.Conv2d(cfg["embed_dim"], cfg["z_channels"], 1)

    @staticmethod
    def prepare_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The same dict with Linear-shaped [C, C] mid-attention weights as [C, C, 1, 1] views, for loaders that check
        shapes before `load_state_dict` (which itself accepts both through the `AttnBlock` load hook)."""
        return {k: v[:, :, None, None] if v.ndim == 2 and _LINEAR_ATTN.match(k) else v for k, v in sd.items()}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        moments = self.quant_conv(self.encoder(x.to(self.quant_conv.weight.dtype)))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype))).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction from the posterior mean (handy for checks; the pipeline calls encode/decode)."""
        return self.decode(self.encode(x)[0])
