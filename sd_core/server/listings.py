"""The discovery endpoints A1111 clients call, in A1111's response shapes.

Where the concept does not exist here the list is empty: no separate VAEs or hypernetworks are loaded, no face
restoration model ships, and no extension is installed; their refresh endpoint is accepted and does nothing. LoRAs
(`/loras`, A1111's `[{name, alias, path, metadata}]`) are the files of `--lora-dir`, embeddings (`/embeddings`,
`{loaded, skipped}` by the current model's text towers) those of `--embeddings-dir`; their refresh endpoints read the
folders again. The upscalers are the pixel ones and the ESRGAN-family files of
`--upscaler-dir`, read afresh at each listing; `/realesrgan-models` lists those in the Real-ESRGAN (BasicSR) key
layout. The latent upscale modes are the engine's (`sd_core.upscalers.latent`: hires fix's "Latent" upscalers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import ConfigDict, Field

from sd_core.upscalers.latent import LATENT_MODES

from . import refusals, upscalers
from .a1111_flags import FLAG_DEFAULTS
from .schemas import ApiModel
from .settings import is_loopback


class UpscalerItem(ApiModel):
    model_config = ConfigDict(protected_namespaces=())
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class NameItem(ApiModel):
    name: str


class PromptStyleItem(ApiModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class SDVaeItem(ApiModel):
    model_config = ConfigDict(protected_namespaces=())
    model_name: str
    filename: str


class PathItem(ApiModel):
    name: str
    path: str | None = None


class FaceRestorerItem(ApiModel):
    name: str
    cmd_dir: str | None = None


class RealesrganItem(ApiModel):
    name: str
    path: str | None = None
    scale: int | None = None


class LoraItem(ApiModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class EmbeddingsResponse(ApiModel):
    loaded: dict[str, Any] = Field(description="the embeddings of --embeddings-dir the current model can use")
    skipped: dict[str, Any] = Field(description="those of another text width (another model family)")


class MemoryResponse(ApiModel):
    ram: dict[str, Any] = Field(description="free, used (this process), total bytes; or error")
    cuda: dict[str, Any] = Field(description="system, active, allocated, reserved, inactive, events; or error")


def cmd_flags(sd: Any) -> dict[str, Any]:
    """A1111's flags, with the ones `sd-core serve` has an equivalent of set from its own options."""
    s = sd.settings
    return {
        **FLAG_DEFAULTS,
        "ckpt": None if s.model is None else str(s.model),
        "ckpt_dir": str(sd.directory.root),
        "port": s.port,
        "listen": not is_loopback(s.host),
        "server_name": s.host,
        "styles_file": None if s.styles is None else str(s.styles),
        "api_auth": None,  # a token is never shown
        "max_batch_count": s.max_n_iter,
        "esrgan_models_path": str(s.upscaler_dirs[0]) if s.upscaler_dirs else None,
        "realesrgan_models_path": str(s.upscaler_dirs[0]) if s.upscaler_dirs else None,
        "lora_dir": str(s.lora_dirs[0]) if s.lora_dirs else FLAG_DEFAULTS["lora_dir"],
        "embeddings_dir": str(s.embedding_dirs[0]) if s.embedding_dirs else FLAG_DEFAULTS["embeddings_dir"],
    }


def _decoded(metadata: dict[str, str]) -> dict[str, Any]:
    """Safetensors metadata with the values that hold JSON objects or lists decoded (A1111's LoRA metadata)."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        out[key] = value
        if value[:1] in ("{", "["):
            try:
                out[key] = json.loads(value)
            except ValueError:
                pass
    return out


def ram() -> dict[str, Any]:
    """A1111's `ram`: this process's resident memory as `used`, the machine's as `total`, `free` = total - used."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        used = int(Path("/proc/self/statm").read_text().split()[1]) * page
    except (OSError, ValueError, IndexError, AttributeError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"free": total - used, "used": used, "total": total}


def cuda_stats(free_total: tuple[int, int], stats: dict[str, Any]) -> dict[str, Any]:
    """A1111's `cuda` object from `torch.cuda.mem_get_info()` and `torch.cuda.memory_stats()`."""

    def pair(key: str) -> dict[str, Any]:
        return {"current": stats.get(f"{key}.all.current", 0), "peak": stats.get(f"{key}.all.peak", 0)}

    free, total = free_total
    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": pair("active_bytes"),
        "allocated": pair("allocated_bytes"),
        "reserved": pair("reserved_bytes"),
        "inactive": pair("inactive_split_bytes"),
        "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
    }


def cuda() -> dict[str, Any]:
    try:
        import torch

        if not torch.cuda.is_available():
            return {"error": "unavailable"}
        return cuda_stats(torch.cuda.mem_get_info(), dict(torch.cuda.memory_stats()))
    except Exception as exc:  # a broken driver must not make /memory fail
        return {"error": f"{type(exc).__name__}: {exc}"}


def create_router(sd: Any, errors: dict[int | str, dict[str, Any]]) -> APIRouter:
    """The listing routes over the server's state (`app.ServerState`)."""
    r = APIRouter()

    def empty(path: str, model: Any) -> None:
        r.add_api_route(path, lambda: [], methods=["GET"], response_model=list[model], responses=errors)

    r.add_api_route("/sdapi/v1/refresh-vae", lambda: None, methods=["POST"], responses=errors)

    @r.post("/sdapi/v1/refresh-loras", responses=errors)
    def refresh_loras() -> None:
        """Read the LoRA folders again (generations find new files by themselves)."""
        sd.loras.refresh()

    @r.post("/sdapi/v1/refresh-embeddings", responses=errors)
    def refresh_embeddings() -> None:
        sd.embeddings.refresh(force=True)

    @r.get("/sdapi/v1/loras", response_model=list[LoraItem], responses=errors)
    def get_loras() -> list[dict[str, Any]]:
        """The LoRA files of `--lora-dir` (A1111's shape; metadata values that hold JSON decoded, as A1111 does)."""
        return [
            {"name": e.name, "alias": e.alias, "path": str(e.path), "metadata": _decoded(e.metadata)}
            for e in sd.loras.entries()
        ]

    @r.get("/sdapi/v1/latent-upscale-modes", response_model=list[NameItem], responses=errors)
    def get_latent_upscale_modes() -> list[dict[str, str]]:
        """The latent modes `hr_upscaler` can name (A1111's list)."""
        return [{"name": name} for name in LATENT_MODES]

    empty("/sdapi/v1/sd-vae", SDVaeItem)
    empty("/sdapi/v1/hypernetworks", PathItem)
    empty("/sdapi/v1/face-restorers", FaceRestorerItem)
    empty("/sdapi/v1/script-info", NameItem)
    empty("/sdapi/v1/extensions", NameItem)

    @r.get("/sdapi/v1/cmd-flags", response_model=dict[str, Any], responses=errors)
    def get_cmd_flags() -> dict[str, Any]:
        return cmd_flags(sd)

    @r.get("/sdapi/v1/upscalers", response_model=list[UpscalerItem], responses=errors)
    def get_upscalers() -> list[dict[str, Any]]:
        """The upscalers extras and init-image resizing can use: the pixel ones, then the models of the upscaler
        folders (files that are not ESRGAN-family models are left out, with a warning in the server's log)."""
        return upscalers.items(upscalers.available(sd.settings))

    @r.get("/sdapi/v1/realesrgan-models", response_model=list[RealesrganItem], responses=errors)
    def get_realesrgan_models() -> list[dict[str, Any]]:
        """The model upscalers in the Real-ESRGAN (BasicSR) key layout."""
        return upscalers.realesrgan_items(upscalers.available(sd.settings))

    @r.get("/sdapi/v1/prompt-styles", response_model=list[PromptStyleItem], responses=errors)
    def get_prompt_styles() -> list[dict[str, Any]]:
        """The styles of `--styles` (empty without one)."""
        return sd.styles.items()

    @r.get("/sdapi/v1/embeddings", response_model=EmbeddingsResponse, responses=errors)
    def get_embeddings() -> dict[str, Any]:
        """The embeddings of `--embeddings-dir`: loaded (made for the current model's text towers: SDXL's
        `clip_l`/`clip_g` ones on SDXL) and skipped (another model's)."""
        widths = sd.models.text_widths() if sd.settings.embedding_dirs else ()
        out: dict[str, dict[str, Any]] = {"loaded": {}, "skipped": {}}
        for name, emb in sd.embeddings.embeddings().items():
            out["loaded" if emb.widths == widths else "skipped"][name] = {
                "step": emb.step,
                "sd_checkpoint": emb.checkpoint,
                "sd_checkpoint_name": emb.checkpoint_name,
                "shape": emb.width,
                "vectors": emb.count,
            }
        return out

    @r.get("/sdapi/v1/memory", response_model=MemoryResponse, responses=errors)
    def get_memory() -> dict[str, Any]:
        return {"ram": ram(), "cuda": cuda()}

    @r.get("/sdapi/v1/scripts", responses=errors)
    def get_scripts() -> dict[str, list[str]]:
        """The scripts a request may name in `script_name` or `alwayson_scripts` (none yet)."""
        return refusals.scripts_list()

    return r
