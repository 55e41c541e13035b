"""Server settings and the command-line options that set them (shared by `sd-core serve` and `python -m
sd_core.server`).

The caps exist so that one request cannot take the machine down: a body, an image or a batch too large to handle is
refused up front with a clear message instead of failing minutes later with an out-of-memory error.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

TOKEN_ENV = "SD_CORE_TOKEN"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class ServerSettings:
    """Everything the app factory needs; defaults are the safe ones."""

    model: Path | None = None
    models_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    token: str | None = None
    max_body_mb: float = 64.0
    max_pixels: int = 4 * 1024 * 1024  # width * height * batch_size of one engine call
    max_steps: int = 150
    max_batch: int = 16
    max_n_iter: int = 100
    max_input_pixels: int = 4096 * 4096  # decoded init images and masks
    device: str | None = None
    dtype: str | None = None
    styles: Path | None = None  # an A1111 styles.csv
    upscaler_dirs: tuple[Path, ...] = ()  # folders of ESRGAN-family upscaler models (A1111's models/ESRGAN)
    lora_dirs: tuple[Path, ...] = ()  # folders of LoRA files, named in prompts by `<lora:name:weight>`
    embedding_dirs: tuple[Path, ...] = ()  # folders of textual-inversion embeddings, used by name in prompts
    controlnet_dir: Path | None = None  # the ControlNets requests may name (A1111's models/ControlNet)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: addresses other machines cannot reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve` options, added to an existing parser."""
    d = ServerSettings()
    parser.add_argument(
        "--model",
        type=Path,
        help="checkpoint to load first (default: the first in --models-dir, else the built-in model)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="folder of checkpoints that clients may switch between (default: the --model's folder)",
    )
    parser.add_argument("--host", default=d.host, help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=d.port)
    parser.add_argument(
        "--token", default=None, help=f"require 'Authorization: Bearer TOKEN' on every request (or set {TOKEN_ENV})"
    )
    parser.add_argument("--max-body-mb", type=_positive_float, default=d.max_body_mb, help="largest request body")
    parser.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=d.max_pixels,
        help="largest width*height*batch_size of one generation",
    )
    parser.add_argument("--max-steps", type=_positive_int, default=d.max_steps)
    parser.add_argument("--max-batch", type=_positive_int, default=d.max_batch, help="largest batch_size")
    parser.add_argument("--max-n-iter", type=_positive_int, default=d.max_n_iter, help="largest n_iter")
    parser.add_argument(
        "--styles", type=Path, help="an A1111 styles.csv (name,prompt,negative_prompt) for `styles` in requests"
    )
    parser.add_argument(
        "--upscaler-dir",
        type=Path,
        action="append",
        help="a folder of ESRGAN-family upscaler models (.pth, .pt, .safetensors; A1111's models/ESRGAN), each "
        "listed by its file name; repeatable (default: none, only the Lanczos and Nearest upscalers)",
    )
    parser.add_argument(
        "--lora-dir",
        type=Path,
        action="append",
        help="a folder of LoRA files (.safetensors, .pt, .ckpt; subfolders too; A1111's models/Lora) that prompts "
        "name with <lora:name:weight>; repeatable (default: none)",
    )
    parser.add_argument(
        "--embeddings-dir",
        type=Path,
        action="append",
        help="a folder of textual-inversion embeddings (.pt, .safetensors, .bin), used in prompts by file name; "
        "repeatable (default: none)",
    )
    parser.add_argument(
        "--controlnet-dir",
        type=Path,
        help="a folder of ControlNet models (.safetensors, .pth; diffusers folders) that requests name in "
        "alwayson_scripts.controlnet (A1111's models/ControlNet; default: none)",
    )
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: best for the device)")


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Checked settings: a usable model source, a token from the environment, no open port without a token."""
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.model is None and args.models_dir is None:
        from sd_core import builtin_model

        args.model = builtin_model()  # the small texture model shipped with the package
    if args.models_dir is not None and not args.models_dir.is_dir():
        raise ValueError(f"--models-dir {args.models_dir} is not a folder")
    if args.model is not None and not args.model.exists():
        raise FileNotFoundError(f"model not found: {args.model}")
    if args.styles is not None and not args.styles.is_file():
        raise FileNotFoundError(f"--styles file not found: {args.styles}")
    for option, folders in (
        ("--upscaler-dir", args.upscaler_dir),
        ("--lora-dir", getattr(args, "lora_dir", None)),
        ("--embeddings-dir", getattr(args, "embeddings_dir", None)),
        ("--controlnet-dir", [args.controlnet_dir] if getattr(args, "controlnet_dir", None) else None),
    ):
        for folder in folders or ():
            if not folder.is_dir():
                raise ValueError(f"{option} {folder} is not a folder")
    if not is_loopback(args.host) and not token:
        raise ValueError(f"refusing to serve on {args.host} without --token: anyone on the network could use it")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be from 0 to 65535, got {args.port}")
    return ServerSettings(
        model=args.model,
        models_dir=args.models_dir,
        host=args.host,
        port=args.port,
        token=token,
        max_body_mb=args.max_body_mb,
        max_pixels=args.max_pixels,
        max_steps=args.max_steps,
        max_batch=args.max_batch,
        max_n_iter=args.max_n_iter,
        device=args.device,
        dtype=args.dtype,
        styles=args.styles,
        upscaler_dirs=tuple(args.upscaler_dir or ()),
        lora_dirs=tuple(getattr(args, "lora_dir", None) or ()),
        embedding_dirs=tuple(getattr(args, "embeddings_dir", None) or ()),
        controlnet_dir=getattr(args, "controlnet_dir", None),
    )
