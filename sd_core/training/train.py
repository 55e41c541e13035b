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

This module builds the networks, runs the stages in order, exports, and is `sd-core train`. The stages live in
`autoencoder` and `diffusion`, the resumable-stage machinery in `stage`, the settings in `config`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import checkpoint, limits
from ..loader import build_models
from ..model_config import infer_config
from ..models.text_encoder import CLIPTextEncoder
from ..models.unet import UNetModel
from ..models.vae import AutoencoderKL
from ..settings import CFG_SCALE_KEY, RESOLUTION_KEY
from . import lora
from .autoencoder import LATENT_SCALE, train_decoder, train_vae
from .config import PRESETS, TrainConfig
from .data import FolderDataset, TextureDataset, parse_caption_mix, parse_pattern_weights
from .diffusion import EncodedBatches, LatentPool, train_unet
from .phrasing import training_caption
from .stage import StepHook, atomic_save, load_state

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
    """The whole training: VAE stage (from scratch only), UNet stage, export to `out/model.safetensors`; with
    `cfg.lora`, a LoRA of the `init` model (the built-in one by default) instead, exported to `out/lora.safetensors`
    (`sd_core.training.lora`)."""
    if cfg.lora and not cfg.init:
        from ..loader import builtin_model

        cfg = replace(cfg, init=str(builtin_model()))
    if cfg.lora < 0:
        raise ValueError(f"--lora must be a positive rank, got {cfg.lora}")
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
            cfg.size,
            cfg.seed,
            parse_pattern_weights(cfg.pattern_weights),
            parse_caption_mix(cfg.caption_mix),
            training_caption,
        )
    )

    def hook(stage: str) -> StepHook | None:
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
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[cfg.export_dtype]
    if cfg.lora:
        factors = lora.train_lora(cfg, unet, text, source, out, hook("lora"))
        return lora.export_lora(out / "lora.safetensors", factors, cfg, dtype)
    ema = train_unet(cfg, unet, text, source, out, hook("unet"))
    meta = {
        "sd_core.training": json.dumps(asdict(cfg)),
        "sd_core.steps": f"vae={cfg.vae_steps},unet={cfg.unet_steps},decoder={cfg.decoder_steps}",
        # The size it was trained at: its native size (`sd_core.loader.model_defaults`), never below the smallest size
        # the engine draws (`limits.MIN_SIDE`), which the loader would refuse.
        RESOLUTION_KEY: str(max(cfg.size, limits.MIN_SIDE)),
    }
    if cfg.default_cfg_scale > 0:
        meta[CFG_SCALE_KEY] = f"{cfg.default_cfg_scale:g}"
    return export(out / "model.safetensors", ema.shadow["unet"], vae, ema.shadow["text"], meta, dtype)


# --- `sd-core train` ------------------------------------------------------------------------------------------------


def add_arguments(parser: Any) -> None:
    """Options of `sd-core train` (an argparse parser); defaults are `TrainConfig`'s."""
    d = TrainConfig()
    parser.add_argument(
        "--out", default=d.out, help="folder for state files and model.safetensors or lora.safetensors (resumes there)"
    )
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
        help='caption variants of procedural textures, e.g. "full=0.4,pattern=0.15,one=0.15,colours=0.3"; '
        '"phrasing" draws the phrasings people type (sd_core.training.phrasing), e.g. "phrasing=0.8,full=0.2" '
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
    lora_group = parser.add_argument_group("LoRA (instead of training the model: a kohya-format lora.safetensors)")
    lora_group.add_argument(
        "--lora",
        type=int,
        default=d.lora,
        metavar="RANK",
        help="train a LoRA of this rank on --init (default: the built-in model) with --unet-steps, --unet-batch, "
        "--unet-lr; the model stays as it is",
    )
    lora_group.add_argument("--lora-alpha", type=float, default=d.lora_alpha, help="the LoRA's alpha (0: the rank)")
    lora_group.add_argument("--lora-text", action="store_true", help="the LoRA also adapts the text encoder")


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
