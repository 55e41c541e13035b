"""The SD1.5 architecture as diffusers configs (published config values), and random-weight models built from them.

Used by the slow full-size checks and the benchmarks: a random SD1.5-size checkpoint written by sd_core in the
original single-file layout, loadable offline by diffusers' `from_single_file` with the local config folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
}
VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
}
SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
}
PARAMS = {"unet": 859.52e6, "vae": 83.65e6, "text_encoder": 123.06e6}


def write_config_folder(folder: Path) -> Path:
    """A diffusers folder with configs and tokenizer but no weights: what `from_single_file(config=...)` needs."""
    from model_fixtures import write_clip_tokenizer_files

    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    configs = {
        "model_index.json": index,
        "unet/config.json": {"_class_name": "UNet2DConditionModel", **UNET},
        "vae/config.json": {"_class_name": "AutoencoderKL", **VAE},
        "text_encoder/config.json": TEXT,
        "scheduler/scheduler_config.json": SCHEDULER,
        "tokenizer/tokenizer_config.json": {
            "model_max_length": 77,
            "pad_token": "<|endoftext|>",
            "tokenizer_class": "CLIPTokenizer",
        },
    }
    for name, cfg in configs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(cfg, indent=1))
    write_clip_tokenizer_files(folder / "tokenizer")
    return folder


def random_sd15_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random SD1.5-size weights in diffusers' component layout, as {"unet": sd, "vae": sd, "text_encoder": sd}.

    diffusers' own init, then norms and biases perturbed so that a wrong key mapping shows up.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    models = {
        "unet": UNet2DConditionModel(**UNET),
        "vae": AutoencoderKL(**{k: v for k, v in VAE.items()}),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TEXT.items() if k != "architectures"})),
    }
    out = {}
    for name, model in models.items():
        with torch.no_grad():
            for key, p in model.named_parameters():
                if key.endswith("bias") or "norm" in key:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        out[name] = model.state_dict()
    return out
