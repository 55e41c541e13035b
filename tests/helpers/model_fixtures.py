"""Tiny random-weight Stable Diffusion models in the real layouts, for tests of the engine, server and plugins.

Built as diffusers components (the oracle), saved as a diffusers folder, and converted to the original single-file
layout by sd_core's own reader and writer. Norm weights and biases are perturbed so a key-mapping error can't hide.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from importlib import resources
from pathlib import Path

import torch

TEXT_WIDTH = 128  # head dim 64 with 2 heads, the CLIP convention sd_core infers


def write_clip_tokenizer_files(folder: Path) -> Path:
    """vocab.json + merges.txt built from the vocabulary sd_core ships, for transformers' CLIPTokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = (resources.files("sd_core") / "data" / "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    merges = gzip.decompress(raw).decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte -> printable character map, in CLIP's order (printable bytes first: the vocabulary's order)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    for extra, b in enumerate(b for b in range(256) if b not in mapping):
        mapping[b] = chr(256 + extra)
    return mapping


def clip_tokenizer(folder: Path, *, sd2: bool = False):
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(folder)
    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=77,
        pad_token="!" if sd2 else "<|endoftext|>",
    )


def _perturb(module: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return module


def tiny_vae(scaling_factor: float = 0.18215):
    """The tiny AutoencoderKL every test family shares (4 levels, 32 GroupNorm groups); SDXL's scale is 0.13025."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def tiny_components(seed: int = 0, *, sd2: bool = False, inpainting: bool = False, tmp: Path | None = None) -> dict:
    """UNet, VAE, text encoder, tokenizer and a DDIM scheduler with SD1.5 settings, as diffusers objects."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    channels = (64, 128) if sd2 else (32, 64)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9 if inpainting else 4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=(1, 2) if sd2 else 8,
        use_linear_projection=sd2,
    )
    vae = tiny_vae()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=TEXT_WIDTH,
            intermediate_size=256,
            num_hidden_layers=3,
            num_attention_heads=2,
            max_position_embeddings=77,
            hidden_act="gelu" if sd2 else "quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0 if sd2 else 49407,
            projection_dim=TEXT_WIDTH,
        )
    )
    for m in (unet, vae, text_encoder):
        _perturb(m, g).eval()
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if sd2 else "epsilon",
    )
    tokenizer = clip_tokenizer((tmp or Path("/tmp")) / f"sd_core_tok_{'sd2' if sd2 else 'sd1'}", sd2=sd2)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def tiny_pipeline(seed: int = 0, *, sd2: bool = False, inpainting: bool = False, tmp: Path | None = None):
    """A diffusers pipeline (StableDiffusionPipeline or StableDiffusionInpaintPipeline) over tiny components."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    cls = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    parts = tiny_components(seed, sd2=sd2, inpainting=inpainting, tmp=tmp)
    return cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def write_tiny_folder(path: Path, seed: int = 0, **kw) -> Path:
    """A diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    tiny_pipeline(seed, tmp=path.parent, **kw).save_pretrained(path)
    return path


def write_tiny_checkpoint(path: str | Path, seed: int = 0, *, sd2: bool = False, inpainting: bool = False) -> Path:
    """A single-file `.safetensors` in the original LDM layout (SD2: OpenCLIP text keys), written by sd_core."""
    from sd_core.checkpoint import read_state_dict, write_safetensors

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = _cached_folder(seed, sd2, inpainting)
    state_dict = read_state_dict(folder)
    if sd2:
        from sd_core.models.text_encoder import hf_to_openclip

        hf_prefix, oc_prefix = "cond_stage_model.transformer.", "cond_stage_model.model."
        text = {k[len(hf_prefix) :]: v for k, v in state_dict.items() if k.startswith(hf_prefix)}
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(hf_prefix)}
        state_dict.update({oc_prefix + k: v for k, v in hf_to_openclip(text).items()})
    write_safetensors(path, {k: v.contiguous() for k, v in state_dict.items()})
    return path


FIXTURE_VERSION = 1  # bump when the tiny models change, so stale cached folders are not reused


@cache
def _cached_folder(seed: int, sd2: bool, inpainting: bool) -> Path:
    """The tiny diffusers folder for these settings, built once per machine (shared by test processes: built in a
    scratch folder and renamed into place, so a concurrent builder never sees half a folder)."""
    import shutil
    import tempfile

    root = Path(tempfile.gettempdir()) / "sd_core_tiny"
    final = root / f"v{FIXTURE_VERSION}-seed{seed}-{'sd2' if sd2 else 'sd1'}{'-inpaint' if inpainting else ''}"
    if (final / "model_index.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    write_tiny_folder(scratch / "model", seed, sd2=sd2, inpainting=inpainting)
    try:
        (scratch / "model").rename(final)
    except OSError:  # another process got there first
        pass
    shutil.rmtree(scratch, ignore_errors=True)
    return final
