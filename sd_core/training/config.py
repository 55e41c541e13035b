"""What a training run is: every setting (`TrainConfig`, also what `sd-core train` offers and what the state files
and the exported model record) and the network sizes of the from-scratch presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    lora: int = 0  # > 0: train a LoRA of this rank on the `init` model (default: the built-in one), not the model
    lora_alpha: float = 0.0  # the LoRA's alpha (0: the rank, so alpha / rank = 1)
    lora_text: bool = False  # the LoRA also adapts the text encoder
    extra: dict[str, Any] = field(default_factory=dict)
