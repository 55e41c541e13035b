"""sd_core: a local Stable Diffusion engine.

    import sd_core
    pipe = sd_core.load("model.safetensors")
    image = pipe.txt2img("a red brick wall", seed=1)[0]

    settings = sd_core.GenerationSettings(prompt="a red brick wall", steps=20, sampler="DPM++ 2M Karras")
    images = pipe.generate(settings)

The public API is what this module exports: `load`, `StableDiffusion`, `GenerationSettings`, `InpaintOptions`,
`HiresOptions`, `TileOptions`, `ModelDefaults`, `StepInfo`, `Cancelled`, `inspect_model`, `builtin_model`,
`LoraError`, `EmbeddingError`, `load_controlnet`, `Control`, and the modules `limits`, `samplers`, `schedules`,
`pnginfo`, `preview`, `upscalers`, `resize`, `sd_upscale`, `lora` (LoRA files, folders and prompt tags),
`embeddings` (textual inversion) and `controlnet` (ControlNet files, units and preprocessors).
Attributes are imported lazily so that torch-free parts (the stdlib HTTP client the plugins ship, `limits`) import
without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = [
    "Cancelled",
    "EmbeddingError",
    "LoraError",
    "GenerationSettings",
    "HiresOptions",
    "InpaintOptions",
    "Interrupted",
    "ModelDefaults",
    "StableDiffusion",
    "StepInfo",
    "TileOptions",
    "ModelInfo",
    "__version__",
    "builtin_model",
    "Control",
    "controlnet",
    "load_controlnet",
    "inspect_model",
    "embeddings",
    "limits",
    "load",
    "lora",
    "pnginfo",
    "preview",
    "resize",
    "samplers",
    "schedules",
    "sd_upscale",
    "upscalers",
]

_LAZY = {
    "load": "loader",
    "builtin_model": "loader",
    "inspect_model": "loader",
    "ModelInfo": "loader",
    "StableDiffusion": "pipeline",
    "Cancelled": "errors",
    "Interrupted": "errors",
    "GenerationSettings": "settings",
    "InpaintOptions": "settings",
    "HiresOptions": "settings",
    "ModelDefaults": "settings",
    "TileOptions": "settings",
    "StepInfo": "progress",
    "LoraError": "lora.errors",
    "EmbeddingError": "embeddings",
    "load_controlnet": "controlnet",
    "Control": "controlnet",
}
_MODULES = (
    "limits",
    "samplers",
    "schedules",
    "pnginfo",
    "preview",
    "upscalers",
    "resize",
    "sd_upscale",
    "lora",
    "embeddings",
    "controlnet",
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sd_core' has no attribute {name!r}")
