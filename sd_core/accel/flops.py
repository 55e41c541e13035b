"""FLOP counts of the networks, for achieved FLOP/s next to a device's peak (`benchmarks/bench.py`)."""

from __future__ import annotations

import torch


def unet_flops(
    config: dict,
    batch: int,
    height: int,
    width: int,
    context_tokens: int = 77,
    contexts_per_row: int = 1,
    text_once: bool = False,
) -> int:
    """FLOPs of one UNet call on [batch, C, height/8, width/8] latents (convs, matmuls, attention), counted by
    torch's FLOP counter on the meta device (nothing is computed). A CFG step is one call with batch = 2 x images;
    `contexts_per_row=2` counts it as sd_core runs it (batch/2 latent rows under `batch` contexts, the layers before
    the first cross-attention once per row); `text_once` counts a step after the first of a sampling run, whose text
    K/V projections were computed at the first (`UNetModel.reusing_text_projections`)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..models.unet import UNetModel

    with torch.device("meta"), torch.no_grad():
        unet = UNetModel(config)
        x = torch.zeros(batch // contexts_per_row, unet.config["in_channels"], height // 8, width // 8)
        t = torch.zeros(batch // contexts_per_row)
        context = torch.zeros(batch, context_tokens, unet.config["context_dim"])
        adm = unet.config["adm_in_channels"]
        extra = [torch.zeros(batch, adm)] if adm else []  # SDXL's vector
        with unet.reusing_text_projections():  # the first call inside projects the text, as any call outside
            if text_once:
                unet(x, t, context, *extra)  # the run's first step
            with FlopCounterMode(display=False) as counter:
                unet(x, t, context, *extra)
    return int(counter.get_total_flops())


def vae_decode_flops(config: dict, batch: int, height: int, width: int) -> int:
    """FLOPs of one VAE decode to [batch, 3, height, width], counted like `unet_flops`."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..models.vae import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(config)
        z = torch.zeros(batch, vae.config["z_channels"], height // 8, width // 8)
        with FlopCounterMode(display=False) as counter:
            vae.decode(z)
    return int(counter.get_total_flops())
