"""SDXL's text conditioning networks as one module: `embedders.N` are the towers of the checkpoint's
`conditioner.embedders.N` (base and inpaint: 0 = CLIP ViT-L, 1 = OpenCLIP ViT-bigG; refiner: 0 = bigG alone), in HF
CLIP names (`sd_core.models.text_encoder`). The cross-attention context is the towers' hidden states side by side
(768 + 1280 = 2048 for the base); the UNet's vector `y` is the last tower's pooled output followed by the size (and
refiner: aesthetic score) numbers, each as a 256-wide sinusoid (`size_vector`)."""

from __future__ import annotations

import torch
from torch import nn

from .attention import timestep_embedding
from .text_encoder import CLIPTextEncoder


class SDXLConditioner(nn.Module):
    """The towers, in checkpoint order; the last one has the `text_projection` the pooled output needs."""

    def __init__(self, configs: list[dict]):
        super().__init__()
        self.embedders = nn.ModuleList(CLIPTextEncoder(config) for config in configs)


def size_vector(pooled: torch.Tensor, numbers: torch.Tensor, dim: int) -> torch.Tensor:
    """SDXL's `y`: `pooled` [B, P] followed by each of `numbers` [B, k] (sizes, crop, aesthetic score) as a
    `dim`-wide timestep embedding (cosines first, as the original `ConcatTimestepEmbedderND`): [B, P + k * dim]."""
    b, k = numbers.shape
    embedded = timestep_embedding(numbers.reshape(-1).float(), dim).reshape(b, k * dim)
    return torch.cat([pooled.float(), embedded.to(pooled.device)], dim=1)
