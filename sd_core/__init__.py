"""sd_core: a local Stable Diffusion engine.

    import sd_core
    pipe = sd_core.load("model.safetensors")
    image = pipe.txt2img("a red brick wall", seed=1)[0]

Attributes are imported lazily so that torch-free parts (the stdlib HTTP client the plugins ship) import
without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "StableDiffusion", "Cancelled", "samplers", "__version__"]

_LAZY = {"load": "loader", "StableDiffusion": "pipeline", "Cancelled": "errors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name == "samplers":
        return importlib.import_module(".samplers", __name__)
    raise AttributeError(f"module 'sd_core' has no attribute {name!r}")
