"""The A1111 ControlNet extension's endpoints (`/controlnet/*`) over `controlnet.py`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .controlnet import ControlNetFolder, DetectRequest, detect, module_list


def create_router(folder: ControlNetFolder, max_pixels: int, errors: dict[int | str, dict[str, Any]]) -> APIRouter:
    r = APIRouter()

    @r.get("/controlnet/version", responses=errors)
    def version() -> dict[str, int]:
        """The extension API's version."""
        return {"version": 3}

    @r.get("/controlnet/model_list", responses=errors)
    def model_list(update: bool = True) -> dict[str, list[str]]:
        """The ControlNets of --controlnet-dir as `name [hash]` (read afresh each time)."""
        return {"model_list": folder.model_list()}

    @r.get("/controlnet/module_list", responses=errors)
    def modules(alias_names: bool = False) -> dict[str, Any]:
        """The preprocessors (all model-free) and their sliders."""
        return module_list()

    @r.get("/controlnet/settings", responses=errors)
    def cn_settings() -> dict[str, int]:
        return {"control_net_unit_count": 3}

    @r.post("/controlnet/detect", responses=errors)
    def post_detect(body: DetectRequest) -> dict[str, Any]:
        """Preprocess images with a module, as the extension's detect endpoint."""
        return detect(body, max_pixels)

    return r
