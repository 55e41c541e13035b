"""The ControlNet network in the original layout: a copy of the UNet's encoder (`time_embed`, `label_emb` for SDXL,
`input_blocks`, `middle_block`, built by `sd_core.models.unet.build_encoder`), the hint block that brings the control
image down to the latents' size, one 1x1 zero conv per input block and one after the middle block. Attribute names
are the checkpoint keys without `control_model.`, so a file loads with one strict `load_state_dict`.

`forward(x, t, context, hint, y)` returns the residuals the UNet adds (`UNetModel.forward(control=...)`): one per
input block, then the middle block's. Plain maths; scaling, scheduling and CFG are `sd_core.controlnet.runner`'s.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.unet import build_encoder, embedding, unet_config
from .config import ControlNetConfig


class ControlNetModel(nn.Module):
    """A ControlNet for one model family (`config.family`). x [B, 4, h, w]; context [B or k*B, T, C] (k*B: each x
    row under k contexts, as `UNetModel`); hint [1 or B, 3, 8h, 8w] in [0, 1]; y (SDXL) as the UNet's."""

    share_timestep_embedding: bool = False

    def __init__(self, config: ControlNetConfig):
        super().__init__()
        self.controlnet_config = config
        cfg = unet_config(config.unet)
        self.config = cfg
        self.family = config.family
        self.time_embed, self.label_emb, self.input_blocks, self.middle_block, channels = build_encoder(cfg)
        hint: list[nn.Module] = []
        last = len(config.hint) - 1
        for i, (c_in, c_out) in enumerate(config.hint):
            stride = 2 if 0 < i < last and i % 2 == 0 else 1
            hint.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride))
            if i != last:
                hint.append(nn.SiLU())
        self.input_hint_block = nn.Sequential(*hint)
        self.zero_convs = nn.ModuleList(nn.Sequential(nn.Conv2d(ch, ch, 1)) for ch in channels)
        self.middle_block_out = nn.Sequential(nn.Conv2d(channels[-1], channels[-1], 1))

    def embed_hint(self, hint: torch.Tensor) -> torch.Tensor:
        """The hint block's features of a control image: the same at every step, so callers may compute it once."""
        return self.input_hint_block(hint.to(self.time_embed[0].weight.dtype))

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor,
        hint: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        embedded: bool = False,
    ) -> list[torch.Tensor]:
        """The residuals, unscaled: one per input block, then the middle block's. `embedded`: `hint` is
        `embed_hint`'s output already."""
        dtype = self.time_embed[0].weight.dtype
        emb = embedding(self, x, timesteps, y)
        context = context.to(dtype)
        guided = hint if embedded else self.embed_hint(hint)
        h = x.to(dtype)
        out = []
        for n, (block, zero) in enumerate(zip(self.input_blocks, self.zero_convs, strict=True)):
            h = block(h, emb, context)
            if n == 0:
                h = h + guided.to(dtype)
            out.append(zero(h))
        if self.middle_block is not None:
            h = self.middle_block(h, emb, context)
        out.append(self.middle_block_out(h))
        return out
