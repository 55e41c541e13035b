"""The seamless-tiling check the SD1 and SDXL mode tests share: a wrap-around image rolls with its noise."""

from __future__ import annotations

import numpy as np
import torch

import sd_core


def rolled_pair(pipe, axes: str | None, shift: int) -> list[np.ndarray]:
    """The same generation from noise, and from the same noise rolled by `shift` latents along x."""
    noise = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(9))
    text = pipe.encode_prompt("stripes")
    settings = sd_core.GenerationSettings(prompt="stripes", steps=4, cfg_scale=7.5, tiling=axes)
    out = []
    for n in (noise, torch.roll(noise, shift, dims=-1)):
        with sd_core.tiling.seamless([pipe.unet, pipe.vae], axes):
            lat = pipe.denoise(settings, n, text, torch.Generator().manual_seed(0))
            out.append(np.asarray(pipe.decode_latents(lat, seamless=axes)[0]).astype(float))
    return out
