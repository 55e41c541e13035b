"""Training: the autoencoder (reconstruction + KL), then the UNet with the DDPM objective, the text encoder trained
with it from scratch (or frozen), caption dropout for classifier-free guidance, EMA, checkpoint/resume, progress.

Two uses, one code path:
- the built-in model: procedural textures (`sd_core.training.data`), every network from scratch, small SD1-layout
  configs (`PRESETS`) so the ordinary loader recognises the exported file;
- fine-tuning: `init` = an existing checkpoint, `data` = a folder of images with `.txt` captions; the VAE (and by
  default the text encoder) stay frozen and only the UNet learns.

Each stage keeps a resumable state file in the output folder (`vae_state.pt`, `unet_state.pt`: weights, EMA,
optimizer, step and every random state), written atomically every `save_every` steps, so a stopped run continues
where it stopped and ends with the same weights as an uninterrupted one. The result is `model.safetensors`, a
single-file LDM checkpoint (EMA weights, float16 by default).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoint, tiling
from ..loader import build_models
from ..model_config import infer_config
from ..models.text_encoder import CLIPTextEncoder
from ..models.unet import UNetModel
from ..models.vae import AutoencoderKL
from ..prompt import tokenize_prompt
from ..schedules import NoiseSchedule
from ..settings import CFG_SCALE_KEY, RESOLUTION_KEY
from ..tokenizer import CLIPTokenizer
from .data import (
    CAPTION_VARIANTS,
    FolderDataset,
    TextureDataset,
    TextureSpec,
    parse_caption_mix,
    parse_pattern_weights,
    random_caption,
    render,
    to_tensor,
)

LATENT_SCALE = 0.18215
"""The SD1 latent scale the loader assumes; the trained VAE is rescaled so that scaled latents have unit std."""
SD1_PAD = 49407

PRESETS: dict[str, dict[str, dict]] = {
    # The built-in model: 64 px textures -> 8x8x4 latents. The UNet keeps SD1's 8 heads and conv proj_in, and the
    # text width is neither 768 nor 1024, so `infer_config` reads it as SD1. Every GroupNorm has 32 groups: with 32
    # channels each group is one channel, normalised over space, which erases its mean (the colour of a flat area)
    # and made the autoencoder learn colours very slowly; 64+ channels before the output layers (2+ per group) keep
    # colour as ratios within each group.
    "default": {
        "vae": {"ch": 64, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "z_channels": 4, "embed_dim": 4},
        "unet": {
            "in_channels": 4, "out_channels": 4, "model_channels": 64, "channel_mult": [2, 2, 2],
            "num_res_blocks": [1, 1, 1], "transformer_depth": [0, 1, 1], "transformer_depth_middle": 1,
            "num_heads": 8, "num_head_channels": -1, "context_dim": 64, "use_linear_in_transformer": False,
        },
        "text": {"vocab_size": 49408, "hidden_size": 64, "num_layers": 2, "num_heads": 1, "intermediate_size": 256,
                 "max_positions": 77, "act": "quick_gelu"},
    },
    # CI scale: seconds per stage.
    "tiny": {
        "vae": {"ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "z_channels": 4, "embed_dim": 4},
        "unet": {
            "in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 1],
            "num_res_blocks": [1, 1], "transformer_depth": [0, 1], "transformer_depth_middle": 0,
            "num_heads": 8, "num_head_channels": -1, "context_dim": 32, "use_linear_in_transformer": False,
        },
        "text": {"vocab_size": 49408, "hidden_size": 32, "num_layers": 1, "num_heads": 1, "intermediate_size": 64,
                 "max_positions": 77, "act": "quick_gelu"},
    },
}  # fmt: skip


@dataclass
class TrainConfig:
    """Every setting of a run; stored in the state files and the exported model's metadata."""

    out: str = "train_out"
    seed: int = 0
    preset: str = "default"
    size: int = 64
    init: str | None = None  # existing checkpoint to fine-tune (skips the VAE stage)
    data: str | None = None  # folder of images + .txt captions (default: procedural textures)
    vae_steps: int = 1500
    vae_batch: int = 16
    vae_crop: int = 24  # the VAE is fully convolutional and textures are stationary: train on crops ...
    vae_full_steps: int = 600  # ... except the last steps, on whole images (crops alone leave a gap at full size)
    vae_full_batch: int = 4
    vae_lr: float = 2e-3
    kl_weight: float = 1e-4
    decoder_steps: int = 0  # > 0: fine-tune the VAE decoder alone (encoder frozen: latents and UNet stay valid)
    decoder_batch: int = 8
    decoder_lr: float = 5e-4
    unet_steps: int = 3000
    unet_batch: int = 32
    unet_lr: float = 5e-4
    warmup: int = 100
    lr_schedule: str = "cosine"  # UNet stage: "cosine" (to a tenth) or "constant" after the warm-up
    snr_gamma: float = 0.0  # > 0: Min-SNR loss weighting
    timestep_bias: float = 0.0  # > 0: draw noisy timesteps more often (density ~ t ** bias)
    text_lr_scale: float = 1.0  # text encoder learning rate = unet_lr * this
    text: str = "train"  # "train" (jointly with the UNet) or "frozen"
    uncond_prob: float = 0.1
    caption_mix: str = (
        ""  # UNet stage caption variants, e.g. "full=0.4,pattern=0.15,one=0.15,colours=0.3" ("": default)
    )
    pattern_weights: str = ""  # procedural textures: some patterns drawn more often, e.g. "dots=3" ("": all alike)
    ema_decay: float = 0.999
    seamless_prob: float = 0.0  # UNet and decoder stages: share of batches run with circular padding (tiling="xy")
    default_cfg_scale: float = 0.0  # > 0: the exported model's own default CFG scale (metadata sd_core.cfg_scale)
    pool_size: int = 8192  # textures encoded once for the UNet stage (0: encode every batch)
    save_every: int = 200
    log_every: int = 50
    threads: int = 0  # torch threads (0: leave torch's default)
    export_dtype: str = "fp16"
    extra: dict[str, Any] = field(default_factory=dict)


# --- small utilities ----------------------------------------------------------------------------------------------


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary name, then rename: a stop mid-write never corrupts the last good state."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_state(path: Path, init: str | None = None) -> dict | None:
    """The saved state at `path`, if any. `init`: the run's starting checkpoint, which must be the one the state was
    made from (a state left in `--out` by a run from another checkpoint would silently replace the new start)."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state.get("config", {}).get("init")
    if saved != init:
        raise ValueError(f"{path} was saved by a run that started from {saved!r}, not {init!r}: use a new --out")
    return state


def rng_state() -> dict:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])


def _snapshot(part: Any) -> Any:
    if isinstance(part, torch.Generator):
        return part.get_state()
    return part.state_dict() if hasattr(part, "state_dict") else part.state()


def _restore(part: Any, value: Any) -> None:
    if isinstance(part, torch.Generator):
        part.set_state(value)
    elif hasattr(part, "load_state_dict"):
        part.load_state_dict(value)
    else:
        part.load_state(value)


class Stage:
    """One resumable training stage: its state file (`out/<name>_state.pt`), progress, periodic saves.

    `kept` parts (the trained weights, and what later stages read on, like the data stream) are restored even from a
    finished stage's file; `running` parts (optimiser, generators) and the global torch RNG only to continue it.
    Parts are modules, optimisers, EMAs (`state_dict`), data sources (`state`) or `torch.Generator`s."""

    def __init__(
        self,
        name: str,
        out: Path,
        cfg: TrainConfig,
        total: int,
        kept: dict[str, Any],
        running: dict[str, Any],
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.path = out / f"{name}_state.pt"
        self.cfg, self.total, self.kept, self.running, self.on_step = cfg, total, kept, running, on_step
        self.label = name[:4].ljust(4)
        self.step = 0

    def resume(self) -> bool:
        """Restore the saved state, if any; True when the stage had already finished."""
        state = load_state(self.path, self.cfg.init)
        if state is not None:
            for key, part in self.kept.items():
                _restore(part, state[key])
            if state.get("done"):
                return True
            for key, part in self.running.items():
                _restore(part, state[key])
            set_rng_state(state["rng"])
            self.step = state["step"]
        self.progress = Progress(self.label, self.total, self.step, self.cfg.log_every)
        return False

    def save(self, done: bool = False) -> None:
        parts = {key: _snapshot(part) for key, part in {**self.kept, **self.running}.items()}
        atomic_save(
            {"step": self.step, **parts, "rng": rng_state(), "done": done, "config": asdict(self.cfg)}, self.path
        )

    def advance(self, loss: float) -> None:
        """One optimiser step done: count it, report it, save every `save_every` steps."""
        self.step += 1
        self.progress.update(self.step, loss)
        if self.on_step is not None:
            self.on_step(self.step, loss)
        if self.step % self.cfg.save_every == 0 and self.step < self.total:
            self.save()


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


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, one line every `log_every` steps otherwise
    (so a `nohup` log stays readable). Shows the running mean loss, seconds per step and the time left."""

    def __init__(self, label: str, total: int, start: int, log_every: int, stream: Any = None) -> None:
        self.label, self.total, self.start, self.log_every = label, total, start, max(1, log_every)
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()
        self.losses: list[float] = []

    def update(self, step: int, loss: float) -> None:
        self.losses.append(loss)
        tty = getattr(self.stream, "isatty", lambda: False)()
        if not (tty or step % self.log_every == 0 or step == self.total):
            return
        done = step - self.start
        rate = (time.monotonic() - self.t0) / max(done, 1)
        left = rate * (self.total - step)
        recent = self.losses[-self.log_every :]
        filled = int(25 * step / max(self.total, 1))
        line = (
            f"{self.label} [{'#' * filled}{'.' * (25 - filled)}] {step}/{self.total} "
            f"loss {sum(recent) / len(recent):.4f} {rate:.2f}s/it eta {int(left // 60)}:{int(left % 60):02d}"
        )
        self.stream.write(("\r" + line if tty else line + "\n") + ("\n" if tty and step == self.total else ""))
        self.stream.flush()


def lr_at(step: int, total: int, base: float, warmup: int, shape: str = "cosine") -> float:
    """Linear warm-up, then cosine decay to a tenth of the base rate, or constant (`shape="constant"`: a run can
    then be extended by resuming with more steps and match a longer run from the start)."""
    if step < warmup:
        return base * (step + 1) / warmup
    if shape == "constant":
        return base
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# --- the autoencoder stage ------------------------------------------------------------------------------------------


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
    cfg: TrainConfig,
    vae: AutoencoderKL,
    dataset: TextureDataset | FolderDataset,
    out: Path,
    on_step: Callable[[int, float], None] | None = None,
) -> AutoencoderKL:
    """Train the autoencoder, resuming from `out/vae_state.pt`; fold the latent scale in when done."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    crop_gen = torch.Generator().manual_seed(cfg.seed + 1)
    kept, running = {"vae": vae, "data": dataset}, {"opt": opt, "crop_gen": crop_gen}
    stage = Stage("vae", out, cfg, cfg.vae_steps, kept, running, on_step)
    if stage.resume():
        return vae.eval()
    vae.train()
    while stage.step < cfg.vae_steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(stage.step, cfg.vae_steps, cfg.vae_lr, cfg.warmup)
        if stage.step < cfg.vae_steps - cfg.vae_full_steps:
            x = random_crops(dataset.batch(cfg.vae_batch)[0], cfg.vae_crop, crop_gen)
        else:
            x = dataset.batch(cfg.vae_full_batch)[0]
        loss, rec = vae_loss(vae, x, cfg.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stage.advance(float(rec.detach()))
    vae.eval()
    fold_latent_scale(vae, latent_std(vae, dataset, 256))
    stage.save(done=True)
    return vae


def train_decoder(
    cfg: TrainConfig,
    vae: AutoencoderKL,
    dataset: TextureDataset | FolderDataset,
    out: Path,
    on_step: Callable[[int, float], None] | None = None,
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
    for m in trained:
        m.requires_grad_(True).train()
    while stage.step < cfg.decoder_steps:
        warmup = min(cfg.warmup, cfg.decoder_steps // 10)
        for group in opt.param_groups:
            group["lr"] = lr_at(stage.step, cfg.decoder_steps, cfg.decoder_lr, warmup)
        x = dataset.batch(cfg.decoder_batch)[0]
        with torch.no_grad():
            z = posterior_sample(*vae.encode(x))
        with tiling.seamless([vae], draw_seamless_axes(cfg.seamless_prob, gen)):
            loss = reconstruction_loss(vae.decode(z), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stage.advance(float(loss.detach()))
    vae.eval().requires_grad_(False)
    stage.save(done=True)
    return vae


@torch.no_grad()
def latent_std(vae: AutoencoderKL, dataset: TextureDataset | FolderDataset, n: int) -> float:
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


# --- the UNet (+ text encoder) stage --------------------------------------------------------------------------------


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
        return z, [random_caption(self.specs[i], self.rng, self.caption_mix) for i in idx]

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

    def __init__(self, vae: AutoencoderKL, dataset: TextureDataset | FolderDataset, scale: float) -> None:
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


def draw_seamless_axes(prob: float, gen: torch.Generator) -> str | None:
    """ "xy" for a share `prob` of training batches, else None (no draw at all when `prob` is 0, so runs without
    the option stay bit-identical). Why: a network trained only with zero padding learns to lean on the image border
    (at 64 px, with 8x8 latents, most positions are near one); with circular padding (`tiling="xy"`) such a model
    draws the right patterns in the wrong colours. Procedural textures wrap, so they can be learned both ways."""
    if prob <= 0:
        return None
    return "xy" if float(torch.rand((), generator=gen)) < prob else None


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


def train_unet(
    cfg: TrainConfig,
    unet: UNetModel,
    text: CLIPTextEncoder,
    source: LatentPool | EncodedBatches,
    out: Path,
    on_step: Callable[[int, float], None] | None = None,
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
    unet.train()
    text.train(train_text)
    while stage.step < cfg.unet_steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(stage.step, cfg.unet_steps, cfg.unet_lr, cfg.warmup, cfg.lr_schedule) * group["scale"]
        latents, captions = source.batch(cfg.unet_batch)
        drop = torch.rand(len(captions), generator=gen) < cfg.uncond_prob
        captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
        t = sample_timesteps(len(captions), schedule.num_timesteps, cfg.timestep_bias, gen)
        noise = torch.randn(latents.shape, generator=gen)
        with tiling.seamless([unet], draw_seamless_axes(cfg.seamless_prob, gen)):
            loss = diffusion_loss(unet, text, schedule, latents, tokens_of(captions), t, noise, cfg.snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(modules)
        stage.advance(float(loss.detach()))
    stage.save(done=True)
    return ema


# --- building, exporting, running -----------------------------------------------------------------------------------


def export(
    path: Path,
    unet: nn.Module,
    vae: nn.Module,
    text: nn.Module,
    metadata: dict[str, str],
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write the single-file LDM checkpoint the ordinary loader reads (`sd_core.load`)."""

    def cast(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in sd.items()}

    checkpoint.save_checkpoint(
        path, cast(unet.state_dict()), cast(vae.state_dict()), cast(text.state_dict()), metadata=metadata
    )
    return path


def init_text_embeddings(text: CLIPTextEncoder, seed: int) -> None:
    """CLIP-like small initial token/position embeddings (nn.Embedding's N(0, 1) would swamp the layer norms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = text.text_model.embeddings
        emb.token_embedding.weight.copy_(torch.randn(emb.token_embedding.weight.shape, generator=g) * 0.02)
        emb.position_embedding.weight.copy_(torch.randn(emb.position_embedding.weight.shape, generator=g) * 0.01)


def fresh_models(preset: str, seed: int) -> tuple[UNetModel, AutoencoderKL, CLIPTextEncoder]:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    torch.manual_seed(seed)
    p = PRESETS[preset]
    unet, vae, text = UNetModel(p["unet"]), AutoencoderKL(p["vae"]), CLIPTextEncoder(p["text"])
    init_text_embeddings(text, seed)
    return unet, vae, text


def models_from_checkpoint(path: str) -> tuple[UNetModel, AutoencoderKL, CLIPTextEncoder, float]:
    """Fine-tuning start: the three networks of an existing SD1/SD2 checkpoint in float32, and its latent scale."""
    config = infer_config(checkpoint.read_shapes(path))
    unet, vae, text = build_models(config, checkpoint.read_state_dict(path, dtype=torch.float32), path)
    return unet, vae, text, config.latent_scale


def run(cfg: TrainConfig, on_step: Callable[[str, int, float], None] | None = None) -> Path:
    """The whole training: VAE stage (from scratch only), UNet stage, export to `out/model.safetensors`."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.text not in ("train", "frozen"):
        raise ValueError(f"text must be 'train' or 'frozen', not {cfg.text!r}")
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n", encoding="utf-8")
    dataset = (
        FolderDataset(cfg.data, cfg.size, cfg.seed)
        if cfg.data
        else TextureDataset(
            cfg.size, cfg.seed, parse_pattern_weights(cfg.pattern_weights), parse_caption_mix(cfg.caption_mix)
        )
    )

    def hook(stage: str) -> Callable[[int, float], None] | None:
        return None if on_step is None else (lambda step, loss: on_step(stage, step, loss))

    if cfg.init:
        unet, vae, text, scale = models_from_checkpoint(cfg.init)
        vae.eval().requires_grad_(False)
    else:
        unet, vae, text = fresh_models(cfg.preset, cfg.seed)
        torch.manual_seed(cfg.seed)
        vae = train_vae(cfg, vae, dataset, out, hook("vae"))
        vae.requires_grad_(False)
        scale = LATENT_SCALE
    if cfg.decoder_steps > 0:
        torch.manual_seed(cfg.seed + 5)  # posterior samples (a resumed run restores its saved state instead)
        vae = train_decoder(cfg, vae, dataset, out, hook("decoder"))

    source: LatentPool | EncodedBatches
    if isinstance(dataset, TextureDataset) and cfg.pool_size > 0:
        pool_path = out / "latent_pool.pt"
        saved = load_state(pool_path)
        if saved is None:
            pool = LatentPool(vae, dataset, cfg.pool_size, scale, cfg.seed + 3)
            atomic_save(pool.tensors(), pool_path)
        else:
            pool = LatentPool.from_tensors(saved, cfg.seed + 3)
        pool.caption_mix = dataset.caption_mix  # the pool draws captions for its stored textures
        source = pool
    else:
        source = EncodedBatches(vae, dataset, scale)

    torch.manual_seed(cfg.seed + 4)
    ema = train_unet(cfg, unet, text, source, out, hook("unet"))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[cfg.export_dtype]
    meta = {
        "sd_core.training": json.dumps(asdict(cfg)),
        "sd_core.steps": f"vae={cfg.vae_steps},unet={cfg.unet_steps},decoder={cfg.decoder_steps}",
        RESOLUTION_KEY: str(cfg.size),  # the size it was trained at: its native size (`sd_core.loader.model_defaults`)
    }
    if cfg.default_cfg_scale > 0:
        meta[CFG_SCALE_KEY] = f"{cfg.default_cfg_scale:g}"
    return export(out / "model.safetensors", ema.shadow["unet"], vae, ema.shadow["text"], meta, dtype)


# --- `sd-core train` ------------------------------------------------------------------------------------------------


def add_arguments(parser: Any) -> None:
    """Options of `sd-core train` (an argparse parser); defaults are `TrainConfig`'s."""
    d = TrainConfig()
    parser.add_argument("--out", default=d.out, help="folder for state files and model.safetensors (resumes there)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--preset", default=d.preset, choices=sorted(PRESETS), help="network sizes (from scratch)")
    parser.add_argument("--size", type=int, default=d.size, help="training image size (multiple of 8)")
    parser.add_argument("--init", default=None, help="checkpoint to fine-tune (the VAE stays frozen)")
    parser.add_argument(
        "--data", default=None, help="folder of images with same-name .txt captions (default: procedural textures)"
    )
    parser.add_argument(
        "--text",
        default=None,
        choices=("train", "frozen"),
        help="text encoder: trained with the UNet (default from scratch) or frozen (default with --init)",
    )
    parser.add_argument(
        "--caption-mix",
        default=d.caption_mix,
        help='caption variants of procedural textures, e.g. "full=0.4,pattern=0.15,one=0.15,colours=0.3" '
        "(default: full=0.7,pattern=0.1,one=0.1,colours=0.1)",
    )
    parser.add_argument(
        "--pattern-weights",
        default=d.pattern_weights,
        help='procedural textures: draw some patterns more often, e.g. "dots=3" (others weigh 1; default: all alike)',
    )
    for name in (
        "vae_steps",
        "vae_batch",
        "vae_crop",
        "vae_full_steps",
        "vae_full_batch",
        "unet_steps",
        "unet_batch",
        "warmup",
        "pool_size",
        "decoder_steps",
        "decoder_batch",
        "save_every",
        "log_every",
        "threads",
    ):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in (
        "vae_lr",
        "kl_weight",
        "decoder_lr",
        "unet_lr",
        "uncond_prob",
        "ema_decay",
        "snr_gamma",
        "text_lr_scale",
        "timestep_bias",
        "default_cfg_scale",
        "seamless_prob",
    ):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    parser.add_argument("--lr-schedule", default=d.lr_schedule, choices=("cosine", "constant"))
    parser.add_argument("--export-dtype", default=d.export_dtype, choices=("fp16", "bf16", "fp32"))


def config_from_args(args: Any) -> TrainConfig:
    names = {f for f in TrainConfig.__dataclass_fields__ if f != "extra"}
    values = {k: v for k, v in vars(args).items() if k in names}
    if values.get("text") is None:
        values["text"] = "frozen" if values.get("init") else "train"
    return TrainConfig(**values)


def main(args: Any) -> int:
    path = run(config_from_args(args))
    print(path)
    return 0
