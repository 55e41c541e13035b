"""The autoencoder stages: training the VAE from scratch (reconstruction + KL, on crops then whole images, ending
with the latent scale folded into the network), and fine-tuning its decoder alone with the encoder frozen."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import tiling
from ..models.vae import AutoencoderKL
from .config import TrainConfig
from .data import ImageData
from .stage import Stage, StepHook, draw_seamless_axes, lr_at

LATENT_SCALE = 0.18215
"""The SD1 latent scale the loader assumes; the trained VAE is rescaled so that scaled latents have unit std."""


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) averaged over latent elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def posterior_sample(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """A draw from N(mean, exp(logvar)) (the global torch RNG)."""
    return mean + torch.randn_like(mean) * (0.5 * logvar).exp()


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + MSE on pixels in [-1, 1]."""
    return (rec - x).abs().mean() + F.mse_loss(rec, x)


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction of a posterior sample, plus the weighted KL term. Returns (total loss, reconstruction loss)."""
    mean, logvar = vae.encode(x)
    rec_loss = reconstruction_loss(vae.decode(posterior_sample(mean, logvar)), x)
    return rec_loss + kl_weight * kl_loss(mean, logvar), rec_loss


def random_crops(x: torch.Tensor, crop: int, gen: torch.Generator, align: int = 8) -> torch.Tensor:
    """Random `crop`-pixel squares at offsets that are multiples of `align` (the latent cell stays on the grid)."""
    if crop >= x.shape[-1]:
        return x
    out = []
    for img in x:
        top, left = (int(v) * align for v in torch.randint(0, (x.shape[-1] - crop) // align + 1, (2,), generator=gen))
        out.append(img[:, top : top + crop, left : left + crop])
    return torch.stack(out)


def train_vae(
    cfg: TrainConfig, vae: AutoencoderKL, dataset: ImageData, out: Path, on_step: StepHook | None = None
) -> AutoencoderKL:
    """Train the autoencoder, resuming from `out/vae_state.pt`; fold the latent scale in when done."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    crop_gen = torch.Generator().manual_seed(cfg.seed + 1)
    kept, running = {"vae": vae, "data": dataset}, {"opt": opt, "crop_gen": crop_gen}
    stage = Stage("vae", out, cfg, cfg.vae_steps, kept, running, on_step)
    if stage.resume():
        return vae.eval()

    def step_loss(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if step < cfg.vae_steps - cfg.vae_full_steps:
            x = random_crops(dataset.batch(cfg.vae_batch)[0], cfg.vae_crop, crop_gen)
        else:
            x = dataset.batch(cfg.vae_full_batch)[0]
        return vae_loss(vae, x, cfg.kl_weight)  # reports the reconstruction term

    vae.train()
    stage.train(opt, lambda step: lr_at(step, cfg.vae_steps, cfg.vae_lr, cfg.warmup), step_loss)
    vae.eval()
    fold_latent_scale(vae, latent_std(vae, dataset, 256))
    stage.save(done=True)
    return vae


def train_decoder(
    cfg: TrainConfig, vae: AutoencoderKL, dataset: ImageData, out: Path, on_step: StepHook | None = None
) -> AutoencoderKL:
    """Fine-tune `post_quant_conv` and the decoder on whole images, resuming from `out/decoder_state.pt`.

    Why: the encoder fixes the latent space the UNet was trained in; with it frozen, a sharper decoder improves
    every image without retraining anything else (the same idea as SD's fine-tuned VAE decoders)."""
    vae.requires_grad_(False)
    trained = [vae.post_quant_conv, vae.decoder]
    opt = torch.optim.AdamW([p for m in trained for p in m.parameters()], lr=cfg.decoder_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 5)  # which batches decode seamlessly
    running = {"opt": opt, "gen": gen}
    stage = Stage("decoder", out, cfg, cfg.decoder_steps, {"vae": vae, "data": dataset}, running, on_step)
    if stage.resume():
        return vae.eval()

    def step_loss(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = dataset.batch(cfg.decoder_batch)[0]
        with torch.no_grad():
            z = posterior_sample(*vae.encode(x))
        with tiling.seamless([vae], draw_seamless_axes(cfg.seamless_prob, gen)):
            loss = reconstruction_loss(vae.decode(z), x)
        return loss, loss

    for m in trained:
        m.requires_grad_(True).train()
    warmup = min(cfg.warmup, cfg.decoder_steps // 10)
    stage.train(opt, lambda step: lr_at(step, cfg.decoder_steps, cfg.decoder_lr, warmup), step_loss)
    vae.eval().requires_grad_(False)
    stage.save(done=True)
    return vae


@torch.no_grad()
def latent_std(vae: AutoencoderKL, dataset: ImageData, n: int) -> float:
    """Standard deviation of the posterior means over `n` training images."""
    means = [vae.encode(dataset.batch(min(64, n))[0])[0] for _ in range(max(1, n // 64))]
    return float(torch.cat(means).std())


@torch.no_grad()
def fold_latent_scale(vae: AutoencoderKL, raw_std: float, scale: float = LATENT_SCALE) -> None:
    """Rescale the latent space inside the network so that `latents * scale` has unit std, as the diffusion model
    expects: the mean half of `quant_conv` is multiplied by k, its log-variance shifted by 2 ln k, and
    `post_quant_conv` divided by k. The autoencoder computes exactly the same images; no config field needed."""
    k = (1.0 / scale) / raw_std
    half = vae.quant_conv.out_channels // 2
    vae.quant_conv.weight[:half] *= k
    vae.quant_conv.bias[:half] *= k
    vae.quant_conv.bias[half:] += 2 * math.log(k)
    vae.post_quant_conv.weight /= k
