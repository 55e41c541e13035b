"""Tiny random-weight SDXL models in the real layouts (base, refiner, 9-channel inpaint), for the engine's tests.

Built as diffusers components (the oracle) and saved as a diffusers folder; the single file in the original layout
(`conditioner.embedders.0.transformer.*` CLIP-L in HF names, `conditioner.embedders.1.model.*` bigG in OpenCLIP names,
with the int64 `position_ids` and float `logit_scale` real files carry) is written from it by sd_core's own reader and
writer. Kept from the real architecture, because no tensor shape carries them: 64-wide attention heads in the UNet and
both towers, 32 GroupNorm groups, 3 UNet levels (no attention at the first), 256-wide size embeddings, GELU in bigG
and quick-GELU in CLIP-L. Norms and biases are perturbed so that a key-mapping error cannot hide.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import cache
from pathlib import Path

import torch
from model_fixtures import _perturb, clip_tokenizer

L_WIDTH, G_WIDTH = 64, 128  # 1 and 2 heads of 64
TIME_DIM = 256  # SDXL's addition_time_embed_dim
SDXL_FIXTURE_VERSION = 4


def tiny_sdxl_components(seed: int = 0, *, refiner: bool = False, inpainting: bool = False, tmp: Path) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    context = G_WIDTH if refiner else L_WIDTH + G_WIDTH
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9 if inpainting else 4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(1, 1, 2),  # diffusers' name for the head count: 64-wide heads
        use_linear_projection=True,
        cross_attention_dim=context,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=G_WIDTH + (5 if refiner else 6) * TIME_DIM,
    )
    torch.manual_seed(seed + 2)  # one VAE for the base, refiner and inpainting models, as the released ones share it
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
        scaling_factor=0.13025,
    )

    def clip(width: int, act: str, pad: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=49408,
            hidden_size=width,
            intermediate_size=width * 4,
            num_hidden_layers=3,
            num_attention_heads=width // 64,
            max_position_embeddings=77,
            hidden_act=act,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=pad,
            projection_dim=width,
        )

    text_2 = CLIPTextModelWithProjection(clip(G_WIDTH, "gelu", 0))
    text_1 = None if refiner else CLIPTextModel(clip(L_WIDTH, "quick_gelu", 49407))
    _perturb(vae, torch.Generator().manual_seed(seed + 3)).eval()
    for m in (unet, text_1, text_2):
        if m is not None:
            _perturb(m, g).eval()
    with torch.no_grad():  # not square-symmetric by accident: a missed transpose must show
        text_2.text_projection.weight.normal_(0, G_WIDTH**-0.5, generator=g)
        # the vector's pull on the image as in a trained model: with the default init the size numbers would change
        # a tiny model's image by less than the parity tests' tolerance, which would then prove nothing about them
        unet.add_embedding.linear_1.weight.mul_(6.0)
    scheduler = DDIMScheduler(  # SDXL's betas and offset; the tests swap in other schedulers from this config
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_1,
        "text_encoder_2": text_2,
        "tokenizer": None if refiner else clip_tokenizer(tmp / "sd_core_tok_sdxl_l"),
        "tokenizer_2": clip_tokenizer(tmp / "sd_core_tok_sdxl_g", sd2=True),
        "scheduler": scheduler,
    }


def tiny_sdxl_pipeline(seed: int = 0, *, refiner: bool = False, inpainting: bool = False, tmp: Path):
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

    parts = tiny_sdxl_components(seed, refiner=refiner, inpainting=inpainting, tmp=tmp)
    if refiner:
        return StableDiffusionXLImg2ImgPipeline(
            **parts, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, add_watermarker=False
        )
    cls = StableDiffusionXLInpaintPipeline if inpainting else StableDiffusionXLPipeline
    return cls(**parts, add_watermarker=False)


def _name(seed: int, refiner: bool, inpainting: bool) -> str:
    kind = "refiner" if refiner else "inpaint" if inpainting else "base"
    return f"sdxl-v{SDXL_FIXTURE_VERSION}-seed{seed}-{kind}"


@cache
def sdxl_folder(seed: int = 0, *, refiner: bool = False, inpainting: bool = False) -> Path:
    """The tiny SDXL diffusers folder, built once per machine (scratch folder renamed into place)."""
    root = Path(tempfile.gettempdir()) / "sd_core_tiny"
    final = root / _name(seed, refiner, inpainting)
    if (final / "model_index.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    tiny_sdxl_pipeline(seed, refiner=refiner, inpainting=inpainting, tmp=scratch).save_pretrained(scratch / "model")
    try:
        (scratch / "model").rename(final)
    except OSError:  # another process got there first
        pass
    shutil.rmtree(scratch, ignore_errors=True)
    return final


def write_sdxl_checkpoint(
    path: str | Path,
    seed: int = 0,
    *,
    refiner: bool = False,
    inpainting: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """A single-file `.safetensors` in SDXL's original layout, written by sd_core from the tiny folder."""
    from sd_core.checkpoint import read_state_dict

    state_dict = read_state_dict(sdxl_folder(seed, refiner=refiner, inpainting=inpainting), dtype=dtype)
    return write_sdxl_single_file(path, state_dict)


def write_sdxl_single_file(path: str | Path, state_dict: dict[str, torch.Tensor]) -> Path:
    """`state_dict` in sd_core's LDM layout (towers in HF names under `conditioner.embedders.N.transformer.`) written
    as the original single file: the last tower (bigG) in OpenCLIP names under `.model.`, `position_ids` and
    `logit_scale` added as in the released files."""
    from sd_core.checkpoint import write_safetensors
    from sd_core.models.text_encoder import hf_to_openclip

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    towers = sorted({int(k.split(".")[2]) for k in state_dict if k.startswith("conditioner.embedders.")})
    last = towers[-1]
    hf_prefix, oc_prefix = f"conditioner.embedders.{last}.transformer.", f"conditioner.embedders.{last}.model."
    tower = {k[len(hf_prefix) :]: v for k, v in state_dict.items() if k.startswith(hf_prefix)}
    out = {k: v for k, v in state_dict.items() if not k.startswith(hf_prefix)}
    out.update({oc_prefix + k: v for k, v in hf_to_openclip(tower).items()})
    out[oc_prefix + "logit_scale"] = torch.tensor(4.6052, dtype=torch.float32)
    if len(towers) == 2:
        out["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    write_safetensors(path, {k: v.contiguous() for k, v in out.items()})
    return path
