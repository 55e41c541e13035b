"""Cheap live previews: latents -> small RGB image by a fixed linear map, no VAE call.

The 4x3 matrix is the widely used least-squares fit of SD1/SD2 VAE latents to RGB ("approx cheap" previews).
"""

from __future__ import annotations

import torch
from PIL import Image

LATENT_RGB = torch.tensor(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
)


def latents_to_preview(latents: torch.Tensor, index: int = 0) -> Image.Image:
    """One image of a [B,4,h,w] latent batch (k-space or VP; previews need no exact scale) as an RGB PIL image."""
    z = latents[index].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", z[:4], LATENT_RGB)
    arr = ((rgb + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")
