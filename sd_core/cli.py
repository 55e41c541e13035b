"""The `sd-core` command: txt2img, info (and serve/train where those modules exist)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

SUBCOMMANDS_HELP = (
    "txt2img: generate images; info: describe a checkpoint; serve: A1111-compatible HTTP server; train: train or "
    "fine-tune a model"
)


class ProgressBar:
    """A one-line progress bar on stderr; no dependency, quiet when stderr is not a terminal except at the end."""

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label, self.stream, self.start = label, stream or sys.stderr, time.monotonic()

    def __call__(self, info: dict[str, Any]) -> None:
        step, total = info["step"], info["total"]
        elapsed = time.monotonic() - self.start
        rate = elapsed / step if step else 0.0
        filled = int(30 * step / max(total, 1))
        line = f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {step}/{total} {rate:.2f}s/it"
        if self.stream.isatty() or step == total:
            self.stream.write(line + ("\n" if step == total else ""))
            self.stream.flush()


def next_index(outdir: Path) -> int:
    """A1111-style numbering: one more than the largest `NNNNN-` prefix in the folder."""
    numbers = [int(p.name[:5]) for p in outdir.glob("*.png") if p.name[:5].isdigit()]
    return max(numbers, default=-1) + 1


def cmd_txt2img(args: argparse.Namespace) -> int:
    import sd_core
    from sd_core.pnginfo import pnginfo_for

    pipe = sd_core.load(args.model, device=args.device, dtype=args.dtype)  # no --model: the built-in model
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    index = next_index(outdir)
    imgs = pipe.txt2img(
        args.prompt,
        negative_prompt=args.negative_prompt,
        width=args.width,
        height=args.height,
        steps=args.steps,
        sampler=args.sampler,
        schedule=args.schedule,
        cfg_scale=args.cfg_scale,
        seed=args.seed,
        batch_size=args.n_samples,
        clip_skip=args.clip_skip,
        callback=ProgressBar("txt2img"),
    )
    for img in imgs:
        path = outdir / f"{index:05d}-{img.info['seed']}.png"
        img.save(path, pnginfo=pnginfo_for(img.info["parameters"]))
        print(path)
        index += 1
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from sd_core.checkpoint import read_shapes
    from sd_core.model_config import infer_config

    shapes = read_shapes(args.path)
    config = infer_config(shapes)
    dtypes = _dtype_summary(args.path)
    groups: dict[str, tuple[int, int]] = {}
    for key, shape in shapes.items():
        group = key.split(".")[0]
        count, params = groups.get(group, (0, 0))
        numel = 1
        for d in shape:
            numel *= d
        groups[group] = (count + 1, params + numel)
    print(f"file:       {args.path}")
    print(f"family:     {config.family}{' (inpainting)' if config.inpainting else ''}")
    print(f"prediction: {config.prediction} (SD2 v-prediction is probed at load; override with prediction=)")
    print(f"dtype:      {dtypes}")
    print(f"keys:       {len(shapes)}")
    for group, (count, params) in sorted(groups.items()):
        print(f"  {group:<20} {count:>5} keys {params / 1e6:>9.1f}M params")
    return 0


def _dtype_summary(path: str) -> str:
    from sd_core.checkpoint import read_dtypes

    counts: dict[str, int] = {}
    for dtype in read_dtypes(path).values():
        counts[dtype] = counts.get(dtype, 0) + 1
    return ", ".join(f"{d} ({n})" for d, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def cmd_serve(args: argparse.Namespace) -> int:
    from sd_core.server.main import serve

    return serve(args)


def cmd_train(args: argparse.Namespace) -> int:
    from sd_core.training.train import main as train_main

    return train_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-core", description="Local Stable Diffusion engine.")
    sub = parser.add_subparsers(dest="command", required=True, help=SUBCOMMANDS_HELP)

    t2i = sub.add_parser("txt2img", help="generate images from a prompt")
    t2i.add_argument("--model", help="checkpoint (.safetensors/.ckpt) or diffusers folder; default: built-in model")
    t2i.add_argument("--prompt", required=True)
    t2i.add_argument("--negative-prompt", default="")
    t2i.add_argument("--steps", type=int, default=20)
    t2i.add_argument("--sampler", default="euler", help="e.g. euler, 'Euler a', dpmpp_2m, 'DPM++ 2M Karras', ddim")
    t2i.add_argument("--schedule", default=None, help="normal, karras, exponential, sgm_uniform, simple")
    t2i.add_argument(
        "--cfg-scale", type=float, default=None, help="default: the model's own (7.5 unless its file names one)"
    )
    t2i.add_argument("--seed", type=int, default=None, help="default: random")
    t2i.add_argument("--width", type=int, default=512)
    t2i.add_argument("--height", type=int, default=512)
    t2i.add_argument("--n-samples", type=int, default=1, help="images in one batch")
    t2i.add_argument("--clip-skip", type=int, default=1)
    t2i.add_argument("--outdir", default="outputs")
    t2i.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    t2i.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: best for the device)")
    t2i.set_defaults(func=cmd_txt2img)

    info = sub.add_parser("info", help="describe a checkpoint: family, sizes, dtypes, key counts")
    info.add_argument("path")
    info.set_defaults(func=cmd_info)

    from sd_core.server.settings import add_arguments as add_serve_arguments

    srv = sub.add_parser("serve", help="serve the AUTOMATIC1111 API (/sdapi/v1) on 127.0.0.1 (needs sd-core[server])")
    add_serve_arguments(srv)
    srv.set_defaults(func=cmd_serve)

    from sd_core.training.train import add_arguments as add_train_arguments

    trn = sub.add_parser("train", help="train the built-in texture model, or fine-tune a checkpoint on a folder")
    add_train_arguments(trn)
    trn.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # CheckpointError is a ValueError
        print(f"sd-core: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
