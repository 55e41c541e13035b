"""`load(path)`: a checkpoint file or diffusers folder -> a ready `StableDiffusion`.

The networks are built on the meta device and take the checkpoint's tensors with `load_state_dict(assign=True)`,
so the weights exist once in memory (memory-mapped when the file's dtype is the target dtype).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import accel, checkpoint, limits, sdxl
from .devices import pick_device, pick_dtype, pick_vae_dtype
from .model_config import SDXL_TEXT_PREFIX, ModelConfig, infer_config
from .models.conditioner import SDXLConditioner
from .models.text_encoder import CLIPTextEncoder, normalize_hf_keys, openclip_to_hf
from .models.unet import UNetModel
from .models.vae import AutoencoderKL
from .pipeline import StableDiffusion
from .settings import CFG_SCALE_KEY, DEFAULT_CFG_SCALE, RESOLUTION_KEY, ModelDefaults

BUILTIN_MODEL = Path(__file__).parent / "data" / "default_model.safetensors"

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_HF_PREFIX = "cond_stage_model.transformer."
CLIP_OPENCLIP_PREFIX = "cond_stage_model.model."


def _sdxl_text(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`conditioner.embedders.N.{transformer,model}.*` -> `SDXLConditioner` keys (`embedders.N.*`, HF names)."""
    towers: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if key.startswith(SDXL_TEXT_PREFIX):
            n, kind, rest = key[len(SDXL_TEXT_PREFIX) :].split(".", 2)
            towers.setdefault((int(n), kind), {})[rest] = tensor
    out = {}
    for (n, kind), sd in towers.items():
        hf = openclip_to_hf(sd, projection=True) if kind == "model" else normalize_hf_keys(sd)
        out.update({f"embedders.{n}.{k}": v for k, v in hf.items()})
    return out


def split_components(state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """LDM single-file keys -> (unet, vae, text encoder) dicts with component-local keys, HF names for text (SDXL:
    the `SDXLConditioner`'s)."""
    unet, vae, text, openclip = {}, {}, {}, {}
    if any(key.startswith(SDXL_TEXT_PREFIX) for key in state_dict):
        text = _sdxl_text(state_dict)
    for key, tensor in state_dict.items():
        if key.startswith(UNET_PREFIX):
            unet[key[len(UNET_PREFIX) :]] = tensor
        elif key.startswith(VAE_PREFIX):
            vae[key[len(VAE_PREFIX) :]] = tensor
        elif key.startswith(CLIP_HF_PREFIX):
            text[key[len(CLIP_HF_PREFIX) :]] = tensor
        elif key.startswith(CLIP_OPENCLIP_PREFIX):
            openclip[key[len(CLIP_OPENCLIP_PREFIX) :]] = tensor
    if openclip:
        text.update(openclip_to_hf(openclip))
    return unet, vae, text if any(k.startswith("embedders.") for k in text) else normalize_hf_keys(text)


def _listing(kind: str, keys: list[str]) -> str:
    more = " ..." if len(keys) > 10 else ""
    return f"{len(keys)} {kind} keys: {', '.join(keys[:10])}{more}"


def key_problems(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> list[str]:
    """What keeps `state_dict` from loading strictly into `module`: missing, unexpected and mis-shaped tensors."""
    expected = module.state_dict()
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and tuple(v.shape) != tuple(state_dict[k].shape)
    ]
    problems = [
        _listing(kind, keys)
        for kind, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes))
        if keys
    ]
    return [f"{what}: {'; '.join(problems)}"] if problems else []


@torch.inference_mode()
def probe_v_prediction(unet: torch.nn.Module, context_dim: int) -> bool:
    """A1111's test for SD2 v-prediction models, which carry no marker: at t=999 on a constant input an eps model
    predicts roughly the input, a v model roughly its negative. SDXL models get the same constant as their vector."""
    param = next(unet.parameters())
    x = torch.full((1, unet.config["in_channels"], 8, 8), 0.5, dtype=param.dtype, device=param.device)
    context = torch.full((1, 2, context_dim), 0.5, dtype=param.dtype, device=param.device)
    t = torch.tensor([999.0], device=param.device)  # float32: bf16 cannot hold 999
    adm = unet.config.get("adm_in_channels", 0)
    y = torch.full((1, adm), 0.5, dtype=param.dtype, device=param.device) if adm else None
    out = unet(x, t, context, y).float() if adm else unet(x, t, context).float()
    return bool((out - x.float())[:, :4].mean() < -1)


def build_models(
    config: ModelConfig, state_dict: dict[str, torch.Tensor], path: str | os.PathLike
) -> tuple[UNetModel, AutoencoderKL, CLIPTextEncoder | SDXLConditioner]:
    """Meta-device networks filled with the checkpoint's tensors."""
    unet_sd, vae_sd, text_sd = split_components(state_dict)
    with torch.device("meta"):
        unet, vae = UNetModel(config.unet), AutoencoderKL(config.vae)
        text = SDXLConditioner(config.text_encoders) if config.sdxl else CLIPTextEncoder(config.text)
    parts = [
        (unet, unet_sd, "UNet"),
        (vae, AutoencoderKL.prepare_state_dict(vae_sd), "VAE"),
        (text, text_sd, "text encoder"),
    ]
    problems = [p for module, sd, what in parts for p in key_problems(module, sd, what)]
    if problems:
        raise checkpoint.CheckpointError(
            f"{path}: weights do not match the inferred architecture: " + " | ".join(problems)
        )
    for module, sd, _ in parts:
        module.load_state_dict(sd, strict=True, assign=True)
    return unet, vae, text


def model_defaults(path: Path, config: ModelConfig) -> ModelDefaults:
    """A model's own defaults: what its `.safetensors` metadata names (`sd_core.cfg_scale`, `sd_core.resolution`),
    else the family's: CFG 7.5, 512 px (768 for SD2 v-prediction models, trained at 768; 1024 for SDXL). A value that
    does not parse is an error naming the file and key: a typo must not go unnoticed."""
    native = 1024 if config.sdxl else 768 if config.family == "sd2" and config.prediction == "v" else 512
    meta = {}
    if path.is_file() and path.suffix.lower() == ".safetensors":
        meta = checkpoint.read_metadata(path)
    cfg_text = meta.get(CFG_SCALE_KEY)
    cfg_scale = DEFAULT_CFG_SCALE
    if cfg_text is not None:
        try:
            cfg_scale = float(cfg_text)
        except ValueError:
            cfg_scale = float("nan")
        if not 0 < cfg_scale <= limits.MAX_CFG_SCALE:
            raise checkpoint.CheckpointError(
                f"{path}: metadata {CFG_SCALE_KEY}={cfg_text!r} is not a positive number up to {limits.MAX_CFG_SCALE:g}"
            )
    width = height = native
    size_text = meta.get(RESOLUTION_KEY)
    if size_text is not None:
        try:
            parts = [int(p) for p in size_text.lower().split("x")]
            width, height = (parts[0], parts[0]) if len(parts) == 1 else parts
            limits.check_side("width", width)
            limits.check_side("height", height)
        except ValueError as exc:
            raise checkpoint.CheckpointError(
                f"{path}: metadata {RESOLUTION_KEY}={size_text!r} is not a size like '512' or '768x512' ({exc})"
            ) from None
    return ModelDefaults(cfg_scale=cfg_scale, width=width, height=height, sizes=size_choices(config, width, height))


def size_choices(config: ModelConfig, width: int, height: int) -> tuple[tuple[int, int], ...]:
    """The (width, height) choices a UI offers for a model: its native size first, then SDXL's training sizes (the
    SDXL families) or the 3:2 landscape and portrait sizes of the native width and height (others: 512 -> 768x512,
    512x768; multiples of 8)."""
    others = sdxl.SIZES if config.sdxl else ((width * 3 // 2 // 8 * 8, height), (width, height * 3 // 2 // 8 * 8))
    return tuple(dict.fromkeys(((width, height), *others)))


def _not_a_model(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """What a file that is not a whole model probably is, from its keys: a LoRA or a ControlNet."""
    if any(".lora_" in k or k.startswith("lora_") or ".lora_A." in k for k in shapes):
        return "a LoRA (lora_* keys), which modifies a model: load a Stable Diffusion checkpoint and apply it to that"
    if any(k.startswith(("control_model.", "input_hint_block.", "controlnet_cond_embedding.")) for k in shapes):
        return "a ControlNet, which guides a model: load a Stable Diffusion checkpoint"
    return None


def read_config(path: Path) -> ModelConfig:
    """The model's config from its tensor shapes; anything that is not a Stable Diffusion model is a
    `CheckpointError` naming the file (and what it looks like instead: a LoRA, a ControlNet)."""
    shapes = checkpoint.read_shapes(path)
    try:
        return infer_config(shapes)
    except checkpoint.CheckpointError:
        raise
    except ValueError as e:
        what = _not_a_model(shapes)
        raise checkpoint.CheckpointError(f"{path}: " + (f"this is {what}" if what else str(e))) from None


def builtin_model() -> Path:
    """The small texture model that ships with the package (see sd_core/data/MODEL_CARD.md): the default when no
    model is given."""
    if not BUILTIN_MODEL.is_file():
        raise FileNotFoundError(f"no model given and the built-in model is missing ({BUILTIN_MODEL})")
    return BUILTIN_MODEL


def load(
    path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    prediction: str | None = None,
    optimize: bool = True,
    low_vram: bool | str = False,
    vae_dtype: str | torch.dtype | None = None,
    keep_freed_memory: bool = False,
    lora_dirs: Iterable[str | os.PathLike] = (),
    embedding_dirs: Iterable[str | os.PathLike] = (),
) -> StableDiffusion:
    """Load a `.safetensors`/`.ckpt` single file or a diffusers folder; with no path, the built-in model.

    `device`/`dtype` default to the best available (see `sd_core.devices`); `vae_dtype` defaults to `dtype`, but
    float32 for a half-precision pipeline on a CPU where that is slow (`devices.pick_vae_dtype`). `prediction` ("eps" or
    "v") overrides the detection: a diffusers folder's scheduler config, else A1111's probe for SD2-family models.
    `optimize` applies the device's default speed levers (`sd_core.accel.optimize`: prepacked oneDNN weights on the
    CPU, channels_last and CUDA graphs on GPUs); `optimize=False` gives the plain modules. `low_vram=True` keeps one
    model (text encoder, UNet, VAE) on the GPU at a time, `low_vram="sequential"` the UNet block by block (on a GPU;
    on the CPU the weights are in CPU memory already; `accel.LowVRAM`). `keep_freed_memory=True` keeps freed memory
    mapped while sampling on the CPU (a few percent faster; it changes glibc's malloc settings for the whole process
    during each run, so it is for processes that run one generation at a time: `accel.heap`). `lora_dirs`: the
    folders whose LoRA files prompts name with `<lora:name:weight>` (`sd_core.extra_networks`); `embedding_dirs`: those
    whose textual-inversion embeddings prompts use by file name (`sd_core.embeddings`).
    """
    path = builtin_model() if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if prediction not in (None, "eps", "v"):
        raise ValueError(f"prediction must be 'eps', 'v' or None, not {prediction!r}")
    if low_vram not in (False, True, "sequential"):
        raise ValueError(f"low_vram must be False, True or 'sequential', not {low_vram!r}")
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    offload = bool(low_vram) and dev.type != "cpu"
    config = read_config(path)
    vae_dt = pick_vae_dtype(dev, dt, vae_dtype, overflows_in_fp16=config.sdxl)
    state_dict = checkpoint.read_state_dict(path, dtype=dt, vae_dtype=vae_dt, device="cpu" if offload else dev)
    unet, vae, text = build_models(config, state_dict, path)
    del state_dict
    if prediction is None and path.is_dir():
        prediction = checkpoint.read_folder_hints(path).get("prediction")
    if prediction is None and config.sdxl and config.prediction == "v":
        prediction = "v"  # the file's `v_pred` marker key (ComfyUI's)
    if prediction is None and config.family in ("sd2", "sdxl", "sdxl-refiner"):
        prediction = "v" if probe_v_prediction(unet, config.unet["context_dim"]) else "eps"
    config.prediction = prediction or "eps"
    defaults = model_defaults(path, config)
    pipe = StableDiffusion(
        unet,
        vae,
        text,
        config,
        device=dev,
        dtype=dt,
        name=path.stem,
        defaults=defaults,
        lora_dirs=tuple(lora_dirs),
        embedding_dirs=tuple(embedding_dirs),
    )
    pipe.accel.keep_freed_memory = keep_freed_memory
    if optimize:
        accel.optimize(pipe)
    if offload:
        accel.LowVRAM(dev, sequential=low_vram == "sequential").attach(pipe)
    return pipe


@dataclass(frozen=True)
class ModelInfo:
    """What a checkpoint holds, read from its header alone (no weights): `sd-core info`."""

    path: Path
    family: str
    inpainting: bool
    keys: int
    dtypes: dict[str, int]  # dtype name -> number of tensors
    groups: dict[str, tuple[int, int]]  # top-level key prefix -> (keys, parameters)
    defaults: ModelDefaults  # SD2 models count as eps-prediction here; v-prediction is probed at load
    text_width: int = 768  # the text encoder's width: the width of the textual-inversion embeddings it takes
    text_widths: tuple[int, ...] = (768,)  # each tower's (SDXL: CLIP-L's and bigG's): what an embedding is made for


def inspect_model(path: str | os.PathLike) -> ModelInfo:
    """Family, sizes, dtypes and the model's own defaults of a checkpoint file or diffusers folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    shapes = checkpoint.read_shapes(path)
    config = read_config(path)
    dtypes: dict[str, int] = {}
    for dtype in checkpoint.read_dtypes(path).values():
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
    groups: dict[str, tuple[int, int]] = {}
    for key, shape in shapes.items():
        group = key.split(".")[0]
        count, params = groups.get(group, (0, 0))
        groups[group] = (count + 1, params + math.prod(shape))
    return ModelInfo(
        path,
        config.family,
        config.inpainting,
        len(shapes),
        dtypes,
        groups,
        model_defaults(path, config),
        config.text_width,
        config.text_widths,
    )
