"""The diffusion stage: the UNet with the DDPM objective, the text encoder trained with it (or frozen), caption
dropout for classifier-free guidance, EMA weights, and where its latents come from (a pool of textures encoded once,
or a folder encoded batch by batch)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import tiling
from ..models.text_encoder import CLIPTextEncoder
from ..models.unet import UNetModel
from ..models.vae import AutoencoderKL
from ..prompt import tokenize_prompt
from ..schedules import NoiseSchedule
from ..tokenizer import CLIPTokenizer
from .autoencoder import posterior_sample
from .config import TrainConfig
from .data import CAPTION_VARIANTS, ImageData, TextureDataset, TextureSpec, random_caption, render, to_tensor
from .phrasing import training_caption
from .stage import Stage, StepHook, draw_seamless_axes, lr_at

SD1_PAD = 49407


class EMA:
    """Exponential moving average of parameters, with the usual warm-up (decay (1 + n) / (10 + n) early on)."""

    def __init__(self, modules: dict[str, nn.Module], decay: float) -> None:
        self.decay = decay
        self.shadow = {name: copy.deepcopy(m).eval().requires_grad_(False) for name, m in modules.items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, modules: dict[str, nn.Module]) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, m in modules.items():
            for ema_p, p in zip(self.shadow[name].parameters(), m.parameters(), strict=True):
                ema_p.lerp_(p.detach(), 1 - d)

    def state_dict(self) -> dict:
        return {"updates": self.updates, **{n: m.state_dict() for n, m in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        for n, m in self.shadow.items():
            m.load_state_dict(state[n])


class LatentPool:
    """Training textures encoded once (posterior mean and log-variance, scaled); a batch samples the posterior and
    draws fresh caption variants, so the UNet stage costs no VAE passes."""

    caption_mix = CAPTION_VARIANTS

    def __init__(self, vae: AutoencoderKL, dataset: TextureDataset, n: int, scale: float, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.specs: list[TextureSpec] = []
        means, logvars = [], []

        with torch.no_grad():
            for start in range(0, n, 64):
                specs = [dataset.spec() for _ in range(min(64, n - start))]
                mean, logvar = vae.encode(to_tensor([render(s, dataset.size, dataset.rng) for s in specs]))
                means.append(mean.float() * scale)
                logvars.append(logvar.float() + 2 * math.log(scale))
                self.specs += specs
        self.mean, self.logvar = torch.cat(means), torch.cat(logvars)

    def batch(self, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        idx = self.rng.integers(len(self.specs), size=batch_size)
        t = torch.from_numpy(idx)
        z = posterior_sample(self.mean[t], self.logvar[t])
        return z, [random_caption(self.specs[i], self.rng, self.caption_mix, training_caption) for i in idx]

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def tensors(self) -> dict:
        return {"mean": self.mean, "logvar": self.logvar, "specs": [asdict(s) for s in self.specs]}

    @classmethod
    def from_tensors(cls, saved: dict, seed: int) -> LatentPool:
        pool = cls.__new__(cls)
        pool.mean, pool.logvar = saved["mean"], saved["logvar"]
        pool.specs = [TextureSpec(**s) for s in saved["specs"]]
        pool.rng = np.random.default_rng(seed)
        return pool


class EncodedBatches:
    """Latents encoded batch by batch (fine-tuning on a folder: crops and flips change every time)."""

    def __init__(self, vae: AutoencoderKL, dataset: ImageData, scale: float) -> None:
        self.vae, self.dataset, self.scale = vae, dataset, scale

    @torch.no_grad()
    def batch(self, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        x, captions = self.dataset.batch(batch_size)
        mean, logvar = self.vae.encode(x)
        z = posterior_sample(mean.float(), logvar.float())
        return z * self.scale, captions

    def state(self) -> dict:
        return self.dataset.state()

    def load_state(self, state: dict) -> None:
        self.dataset.load_state(state)


class CaptionTokens:
    """Caption -> [77] token ids (SD1 layout: BOS, tokens, EOS, EOS padding), cached: captions repeat a lot."""

    def __init__(self) -> None:
        self.tokenizer = CLIPTokenizer()
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        rows = []
        for c in captions:
            if c not in self.cache:
                self.cache[c] = tokenize_prompt(c, self.tokenizer, pad_token=SD1_PAD)[0][0]
            rows.append(self.cache[c])
        return torch.stack(rows)


def sample_timesteps(n: int, num_timesteps: int, bias: float, gen: torch.Generator) -> torch.Tensor:
    """Training timesteps: uniform for `bias` 0 (plain DDPM); otherwise t = T * u ** (1 / (1 + bias)), density
    growing as t ** bias, so noisier steps (where colours and layout get decided, and the noise-prediction error says
    least about them) are drawn more often."""
    if bias <= 0:
        return torch.randint(0, num_timesteps, (n,), generator=gen)
    u = torch.rand(n, generator=gen)
    return (num_timesteps * u ** (1.0 / (1.0 + bias))).long().clamp(max=num_timesteps - 1)


def diffusion_loss(
    unet: UNetModel,
    text: CLIPTextEncoder,
    schedule: NoiseSchedule,
    latents: torch.Tensor,
    tokens: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    snr_gamma: float = 0.0,
) -> torch.Tensor:
    """The DDPM objective: noise the latents to timestep t, predict the noise, mean squared error.

    `snr_gamma` > 0 weights each sample by min(SNR, gamma) / SNR (Min-SNR, Hang et al. 2023): the many nearly clean
    timesteps, whose noise is easy to see, count less, and the noisy ones that decide colours and layout count fully.
    """
    ac = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    noisy = ac.sqrt() * latents + (1 - ac).sqrt() * noise
    err = (unet(noisy, t, text(tokens)).float() - noise).pow(2).mean(dim=(1, 2, 3))
    if snr_gamma > 0:
        snr = (ac / (1 - ac)).reshape(-1)
        err = err * snr.clamp(max=snr_gamma) / snr
    return err.mean()


def batch_loss(
    cfg: TrainConfig,
    unet: UNetModel,
    text: CLIPTextEncoder,
    source: LatentPool | EncodedBatches,
    schedule: NoiseSchedule,
    tokens_of: CaptionTokens,
    gen: torch.Generator,
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """One optimiser step's loss, as `Stage.train` takes it: a batch with captions dropped at `uncond_prob`, biased
    timesteps, noise and the seamless axes, all drawn from `gen` in that order (the UNet and LoRA stages share it)."""

    def step_loss(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        latents, captions = source.batch(cfg.unet_batch)
        drop = torch.rand(len(captions), generator=gen) < cfg.uncond_prob
        captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
        t = sample_timesteps(len(captions), schedule.num_timesteps, cfg.timestep_bias, gen)
        noise = torch.randn(latents.shape, generator=gen)
        with tiling.seamless([unet], draw_seamless_axes(cfg.seamless_prob, gen)):
            loss = diffusion_loss(unet, text, schedule, latents, tokens_of(captions), t, noise, cfg.snr_gamma)
        return loss, loss

    return step_loss


def train_unet(
    cfg: TrainConfig,
    unet: UNetModel,
    text: CLIPTextEncoder,
    source: LatentPool | EncodedBatches,
    out: Path,
    on_step: StepHook | None = None,
) -> EMA:
    """Train the UNet (and the text encoder unless frozen), resuming from `out/unet_state.pt`. Returns the EMA."""
    train_text = cfg.text == "train"
    text.requires_grad_(train_text)
    groups = [{"params": list(unet.parameters()), "scale": 1.0}]
    if train_text:
        groups.append({"params": list(text.parameters()), "scale": cfg.text_lr_scale})
    opt = torch.optim.AdamW(groups, lr=cfg.unet_lr, weight_decay=0.0)
    modules = {"unet": unet, "text": text}
    ema = EMA(modules, cfg.ema_decay)
    schedule = NoiseSchedule()
    tokens_of = CaptionTokens()
    gen = torch.Generator().manual_seed(cfg.seed + 2)  # timesteps, noise and caption dropout
    kept, running = {**modules, "ema": ema}, {"opt": opt, "data": source, "gen": gen}
    stage = Stage("unet", out, cfg, cfg.unet_steps, kept, running, on_step)
    if stage.resume():
        return ema

    step_loss = batch_loss(cfg, unet, text, source, schedule, tokens_of, gen)
    unet.train()
    text.train(train_text)
    stage.train(
        opt,
        lambda step: lr_at(step, cfg.unet_steps, cfg.unet_lr, cfg.warmup, cfg.lr_schedule),
        step_loss,
        after_step=lambda: ema.update(modules),
    )
    stage.save(done=True)
    return ema
