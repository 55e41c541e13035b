"""A1111's latent upscale modes: latents resized by interpolation (hires fix's "Latent" upscalers, img2img's
"Just resize (latent upscale)"), no VAE round trip."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..limits import SettingError

# A1111 name -> (torch interpolation mode, antialias): "Latent" is bilinear; a suffix names another mode
LATENT_MODES: dict[str, tuple[str, bool]] = {
    f"Latent ({suffix})" if suffix else "Latent": (mode, antialias)
    for suffix, mode, antialias in (
        ("", "bilinear", False),
        ("antialiased", "bilinear", True),
        ("bicubic", "bicubic", False),
        ("bicubic antialiased", "bicubic", True),
        ("nearest", "nearest", False),
        ("nearest-exact", "nearest-exact", False),
    )
}


def is_latent(name: str | None) -> bool:
    return name in LATENT_MODES


def upscale_latents(latents: torch.Tensor, height: int, width: int, mode: str = "Latent") -> torch.Tensor:
    """Latents [B, C, h, w] resized to [B, C, height, width] (latent units) by the A1111 mode `mode`."""
    if mode not in LATENT_MODES:
        raise SettingError("upscaler", f"unknown latent upscale mode {mode!r}; modes: {', '.join(LATENT_MODES)}")
    method, antialias = LATENT_MODES[mode]
    size = (int(height), int(width))
    if method in ("nearest", "nearest-exact"):
        return F.interpolate(latents, size=size, mode=method)
    return F.interpolate(latents, size=size, mode=method, antialias=antialias, align_corners=False)
