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
from model_fixtures import _perturb, clip_tokenizer, tiny_vae
from sd15_reference import VAE

L_WIDTH, G_WIDTH = 64, 128  # 1 and 2 heads of 64
TIME_DIM = 256  # SDXL's addition_time_embed_dim
SDXL_FIXTURE_VERSION = 4


def tiny_sdxl_components(seed: int = 0, *, refiner: bool = False, inpainting: bool = False, tmp: Path) -> dict:
    from diffusers import DDIMScheduler, UNet2DConditionModel
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
    vae = tiny_vae(scaling_factor=0.13025)

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


# --- the released sizes: random weights in the real architecture (slow tests, benchmarks) ------------------------
# The published diffusers configs of stabilityai/stable-diffusion-xl-base-1.0 and -refiner-1.0 (fields at their class
# defaults left out). The refiner's UNet is the original yaml's: 384 channels, mult 1/2/4/4, depth 4 at levels 1-2.

_SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
SDXL_BASE_UNET = {
    **_SDXL_UNET,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "projection_class_embeddings_input_dim": 2816,
}
SDXL_REFINER_UNET = {
    **_SDXL_UNET,
    "block_out_channels": [384, 768, 1536, 1536],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": 4,
    "attention_head_dim": [6, 12, 24, 24],
    "cross_attention_dim": 1280,
    "projection_class_embeddings_input_dim": 2560,
}
SDXL_VAE = {**VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}  # SD1.5's, SDXL's scale
_CLIP = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407}
CLIP_L = {
    **_CLIP,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "pad_token_id": 1,
}
OPENCLIP_BIGG = {
    **_CLIP,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
    "pad_token_id": 1,
}
# The released base's parameter counts (its UNet: the "2.6B" of the SDXL report)
SDXL_PARAMS = {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}
_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "use_karras_sigmas": False,
}


def _diffusers_models(refiner: bool, device: str = "meta") -> dict[str, torch.nn.Module]:
    """The released architecture as diffusers/transformers modules (on the meta device: shapes and names only)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device(device):
        models = {
            "unet": UNet2DConditionModel(**(SDXL_REFINER_UNET if refiner else SDXL_BASE_UNET)),
            "vae": AutoencoderKL(**SDXL_VAE),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**OPENCLIP_BIGG)),
        }
        if not refiner:
            models["text_encoder"] = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    return models


def released_parameter_counts(refiner: bool = False) -> dict[str, int]:
    return {name: sum(p.numel() for p in m.parameters()) for name, m in _diffusers_models(refiner).items()}


def write_sdxl_config_folder(folder: Path, *, refiner: bool = False) -> Path:
    """A diffusers folder of configs and tokenizers without weights: what `from_single_file(config=...)` reads."""
    import json

    from model_fixtures import write_clip_tokenizer_files

    pipeline = "StableDiffusionXLImg2ImgPipeline" if refiner else "StableDiffusionXLPipeline"
    index = {
        "_class_name": pipeline,
        "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": [None, None] if refiner else ["transformers", "CLIPTextModel"],
        "tokenizer": [None, None] if refiner else ["transformers", "CLIPTokenizer"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "force_zeros_for_empty_prompt": not refiner,
    }
    if refiner:
        index["requires_aesthetics_score"] = True
    text = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model"}
    configs = {
        "model_index.json": index,
        "unet/config.json": {
            "_class_name": "UNet2DConditionModel",
            **(SDXL_REFINER_UNET if refiner else SDXL_BASE_UNET),
        },
        "vae/config.json": {"_class_name": "AutoencoderKL", **SDXL_VAE},
        "text_encoder_2/config.json": {**OPENCLIP_BIGG, **text, "architectures": ["CLIPTextModelWithProjection"]},
        "scheduler/scheduler_config.json": _SCHEDULER,
    }
    tokenizers = {"tokenizer_2": "!"}
    if not refiner:
        configs["text_encoder/config.json"] = {**CLIP_L, **text}
        tokenizers["tokenizer"] = "<|endoftext|>"
    for name, pad in tokenizers.items():
        configs[f"{name}/tokenizer_config.json"] = {
            "model_max_length": 77,
            "pad_token": pad,
            "tokenizer_class": "CLIPTokenizer",
        }
        write_clip_tokenizer_files(folder / name)
    for name, cfg in configs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(cfg, indent=1))
    return folder


def _random_fill(name: str, shape: tuple[int, ...], index: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """One tensor of random weights, from its own generator (so tensors can be drawn in parallel, reproducibly):
    uniform with the standard deviation of a fan-in init for matrices and kernels; norm scales near 1 and biases
    near 0, but not equal to them, so that a key-mapping error cannot hide."""
    g = torch.Generator().manual_seed(seed * 100_003 + index)
    t = torch.empty(shape, dtype=dtype)
    if len(shape) >= 2:
        bound = (3 / (t.numel() // shape[0])) ** 0.5
        return t.uniform_(-bound, bound, generator=g)
    if "norm" in name or name.endswith(("ln_1.weight", "ln_2.weight", "ln_final.weight")):
        return t.uniform_(0.8, 1.2, generator=g)
    return t.uniform_(-0.1, 0.1, generator=g)


def random_sdxl_state_dict(
    seed: int = 0, *, refiner: bool = False, dtype: torch.dtype = torch.bfloat16
) -> dict[str, torch.Tensor]:
    """Random weights of the released SDXL base (or refiner) in sd_core's LDM layout (towers in HF names under
    `conditioner.embedders.N.transformer.`, as `read_state_dict` gives them): names and shapes from diffusers'
    modules on the meta device renamed by sd_core's key maps, values drawn tensor by tensor on two threads."""
    from concurrent.futures import ThreadPoolExecutor

    from sd_core import diffusers_keys

    models = _diffusers_models(refiner)
    shapes = {}
    for name, model in models.items():
        sd = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if name == "unet":
            names = diffusers_keys.unet_key_map(sd, (SDXL_REFINER_UNET if refiner else SDXL_BASE_UNET))
        elif name == "vae":
            names = diffusers_keys.vae_key_map(sd, SDXL_VAE)
        else:
            tower = 1 if name == "text_encoder_2" and not refiner else 0
            names = diffusers_keys.text_key_map(sd, f"conditioner.embedders.{tower}.transformer.")
        shapes.update({ldm: diffusers_keys.ldm_shape(ldm, sd[key]) for key, ldm in names.items()})
    keys = sorted(shapes)
    with ThreadPoolExecutor(max_workers=2) as pool:  # the draws release the GIL
        tensors = pool.map(lambda i: _random_fill(keys[i], shapes[keys[i]], i, seed, dtype), range(len(keys)))
        return dict(zip(keys, tensors, strict=True))


def write_random_sdxl(
    path: str | Path, seed: int = 0, *, refiner: bool = False, dtype: torch.dtype = torch.bfloat16
) -> Path:
    """A random-weight checkpoint of the released SDXL base (or refiner) size in the original single-file layout,
    written by sd_core's writer (in `dtype`: the released files are float16; bfloat16 keeps random weights finite
    through 42 transformer blocks just as well, and is the CPU's fast half type)."""
    return write_sdxl_single_file(path, random_sdxl_state_dict(seed, refiner=refiner, dtype=dtype))
