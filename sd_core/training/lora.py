"""LoRA fine-tuning (`sd-core train --lora RANK`): low-rank factors trained on a frozen model, written in kohya's
format, which A1111, ComfyUI, diffusers and sd_core itself load.

The factors reach the layers as weight parametrizations (`torch.nn.utils.parametrize`): each targeted Linear or
1x1 Conv2d computes with W + alpha/rank · up @ down, the model code untouched, and only `down` and `up` learn (`up`
starts at zero, so training starts from the model itself). The targets are kohya's defaults: every layer of the
UNet's transformer blocks and their projections (`proj_in`, attention `to_q/k/v/out`, feed-forward), and with
`lora_text` the text encoder's attention and MLP layers. Keys are the ones kohya writes (`sd_core.lora.keys`: the
diffusers names of the LDM layers), so the file goes wherever a kohya LoRA goes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import checkpoint
from ..lora.keys import ldm_to_diffusers_unet, patchable_layers
from ..models.text_encoder import CLIPTextEncoder
from ..models.unet import UNetModel
from ..schedules import NoiseSchedule
from .config import TrainConfig
from .diffusion import CaptionTokens, EncodedBatches, LatentPool, batch_loss
from .stage import Stage, StepHook, lr_at

UNET_TARGETS = (".proj_in", ".proj_out", ".to_q", ".to_k", ".to_v", ".to_out.0", ".ff.net.0.proj", ".ff.net.2")
TEXT_TARGETS = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")


class LowRank(nn.Module):
    """The parametrization W -> W + scale · up @ down (reshaped to W: a 1x1 conv's [out, in, 1, 1])."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        fan_in = math.prod(weight.shape[1:])
        self.down = nn.Parameter(torch.randn(rank, fan_in, generator=generator) / math.sqrt(fan_in))
        self.up = nn.Parameter(torch.zeros(weight.shape[0], rank))
        self.rank, self.alpha = rank, alpha

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.alpha / self.rank * (self.up @ self.down)).reshape(weight.shape).to(weight.dtype)


def kohya_name(component: str, path: str, unet: UNetModel) -> str | None:
    """The kohya key stem of a layer (`lora_unet_down_blocks_0_attentions_0_proj_in`, `lora_te_text_model_...`)."""
    if component == "unet":
        name = ldm_to_diffusers_unet(path, unet.config)
        return None if name is None else "lora_unet_" + name.replace(".", "_")
    return "lora_te_" + path.replace(".", "_")


def attach(
    unet: UNetModel, text: CLIPTextEncoder, rank: int, alpha: float, with_text: bool, seed: int
) -> dict[str, tuple[nn.Module, LowRank]]:
    """Put a trainable `LowRank` on every target layer; returns {kohya key stem: (layer, its LowRank)}."""
    generator = torch.Generator().manual_seed(seed)
    parts = [("unet", unet, UNET_TARGETS)] + ([("text", text, TEXT_TARGETS)] if with_text else [])
    out: dict[str, tuple[nn.Module, LowRank]] = {}
    for component, network, endings in parts:
        for path, layer in patchable_layers(network):
            if not path.endswith(endings) or (isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1)):
                continue
            name = kohya_name(component, path, unet)
            if name is None:
                continue
            low_rank = LowRank(layer.weight, rank, alpha, generator)
            parametrize.register_parametrization(layer, "weight", low_rank)
            out[name] = (layer, low_rank)
    return out


def detach(factors: dict[str, tuple[nn.Module, LowRank]]) -> None:
    """Take the parametrizations off again: the layers compute with their own weights."""
    for layer, _ in factors.values():
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)


def kohya_tensors(factors: dict[str, tuple[nn.Module, LowRank]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """kohya's keys: `.lora_down.weight` [r, in] ([r, in, 1, 1] for a conv), `.lora_up.weight` [out, r] ([out, r,
    1, 1]), `.alpha`."""
    out = {}
    for name, (layer, low_rank) in factors.items():
        conv = isinstance(layer, nn.Conv2d)
        down, up = low_rank.down.detach(), low_rank.up.detach()
        out[f"{name}.lora_down.weight"] = (down[:, :, None, None] if conv else down).to(dtype).contiguous()
        out[f"{name}.lora_up.weight"] = (up[:, :, None, None] if conv else up).to(dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(low_rank.alpha, dtype=dtype)
    return out


def train_lora(
    cfg: TrainConfig,
    unet: UNetModel,
    text: CLIPTextEncoder,
    source: LatentPool | EncodedBatches,
    out: Path,
    on_step: StepHook | None = None,
) -> dict[str, tuple[nn.Module, LowRank]]:
    """Train the factors with the DDPM objective on the frozen model (steps, batch, learning rate, warm-up and
    schedule of the UNet stage), resuming from `out/lora_state.pt`. Returns the factors, still attached."""
    unet.requires_grad_(False)
    text.requires_grad_(False)
    alpha = cfg.lora_alpha or float(cfg.lora)
    factors = attach(unet, text, cfg.lora, alpha, cfg.lora_text, cfg.seed + 6)
    params = nn.ModuleDict({name.replace(".", "_"): low_rank for name, (_, low_rank) in factors.items()})
    opt = torch.optim.AdamW(params.parameters(), lr=cfg.unet_lr, weight_decay=0.0)
    schedule, tokens_of = NoiseSchedule(), CaptionTokens()
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    stage = Stage("lora", out, cfg, cfg.unet_steps, {"lora": params}, {"opt": opt, "data": source, "gen": gen}, on_step)
    if stage.resume():
        return factors

    step_loss = batch_loss(cfg, unet, text, source, schedule, tokens_of, gen)
    unet.train()
    text.train(cfg.lora_text)
    stage.train(opt, lambda step: lr_at(step, cfg.unet_steps, cfg.unet_lr, cfg.warmup, cfg.lr_schedule), step_loss)
    stage.save(done=True)
    return factors


Factors = dict[str, tuple[nn.Module, LowRank]]


def export_lora(path: Path, factors: Factors, cfg: TrainConfig, dtype: torch.dtype) -> Path:
    """The kohya-format file, with kohya's training metadata keys that tools read (`ss_network_dim`, ...)."""
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(cfg.lora),
        "ss_network_alpha": f"{cfg.lora_alpha or cfg.lora:g}",
        "ss_steps": str(cfg.unet_steps),
        "sd_core.training": json.dumps(asdict(cfg)),
    }
    checkpoint.write_safetensors(path, kohya_tensors(factors, dtype), metadata)
    return path
