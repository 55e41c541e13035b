"""The `sd-core` command: txt2img, img2img, inpaint, outpaint, info, serve, train.

The generation commands take every `GenerationSettings` field as an option and build the settings once; options left
out take the model's own defaults (CFG scale, native size) or the engine's, as in the Python API.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import sd_core
from sd_core import limits

MODEL_DEFAULT = "the model's own"


class ProgressBar:
    """A one-line progress bar on stderr; no dependency, quiet when stderr is not a terminal except at the end."""

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label, self.stream, self.start = label, stream or sys.stderr, time.monotonic()

    def __call__(self, info: sd_core.StepInfo) -> None:
        step, total = info.step, info.total
        elapsed = time.monotonic() - self.start
        rate = elapsed / step if step else 0.0
        filled = int(30 * step / max(total, 1))
        line = f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {step}/{total} {rate:.2f}s/it"
        if self.stream.isatty() or step == total:
            self.stream.write(line + ("\n" if step == total else ""))
            self.stream.flush()


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """`--help` shows every option's default: appended where the help text does not say it in its own words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or action.default in (None, "", False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def next_index(outdir: Path) -> int:
    """A1111-style numbering: one more than the largest `NNNNN-` prefix in the folder."""
    numbers = [int(p.name[:5]) for p in outdir.glob("*.png") if p.name[:5].isdigit()]
    return max(numbers, default=-1) + 1


# --- generation options ------------------------------------------------------------------------------------------


def _add_settings(parser: argparse.ArgumentParser) -> None:
    """The `GenerationSettings` fields every generation command shares."""
    from sd_core import samplers, schedules

    g = parser.add_argument_group("generation")
    g.add_argument("--prompt", required=True, help="what to draw (A1111 syntax: (word:1.2), [word], BREAK)")
    g.add_argument("--negative-prompt", default="", help="what to avoid (default: nothing)")
    g.add_argument("--width", type=int, default=None, help=f"pixels, a multiple of 8 (default: {MODEL_DEFAULT} size)")
    g.add_argument("--height", type=int, default=None, help=f"pixels, a multiple of 8 (default: {MODEL_DEFAULT} size)")
    g.add_argument("--steps", type=int, default=20, help=f"sampling steps, 1 to {limits.MAX_STEPS}")
    labels = ", ".join(samplers.resolve(name).label for name in samplers.SAMPLERS)
    g.add_argument(
        "--sampler", default="Euler", help=f"one of: {labels} (optionally with a schedule: 'DPM++ 2M Karras')"
    )
    g.add_argument(
        "--schedule", default=None, help=f"one of: {', '.join(schedules.SCHEDULES)} (default: the sampler's own)"
    )
    g.add_argument(
        "--cfg-scale", type=float, default=None, help=f"how closely to follow the prompt (default: {MODEL_DEFAULT})"
    )
    seed_help = f"0 to {limits.MAX_SEED}; -1 picks a random one; image k of a batch gets seed + k"
    g.add_argument("--seed", type=int, default=-1, help=seed_help)
    g.add_argument(
        "--batch-size", "--n-samples", type=int, default=1, help=f"images in one batch, 1 to {limits.MAX_BATCH}"
    )
    g.add_argument(
        "--clip-skip", type=int, default=1, help="1 = the model's usual text layer, 2 = one earlier (A1111's setting)"
    )
    g.add_argument(
        "--tiling", choices=limits.TILING_AXES, default=None, help="seamless on these axes (default: not seamless)"
    )
    t = parser.add_argument_group(
        "tiled denoising (large images: the UNet on overlapping tiles, sd_core.tiled_denoising)"
    )
    t.add_argument(
        "--tile",
        default=None,
        help="tile size in pixels, N or WxH, or 'native' (the model's own size); an image the tile covers is not "
        "tiled (default: no tiling)",
    )
    t.add_argument("--tile-overlap", type=int, default=None, help="pixels tiles share (default: a quarter of the tile)")
    t.add_argument("--tile-batch", type=int, default=None, help="tiles per UNet call (default: as memory allows)")
    out = parser.add_argument_group("model and output")
    out.add_argument(
        "--model", help="checkpoint (.safetensors/.ckpt) or diffusers folder (default: the built-in model)"
    )
    out.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    out.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: the best for the device)")
    out.add_argument("--low-vram", choices=("off", "on", "sequential"), default="off", help="GPU weight offloading")
    out.add_argument("--outdir", default="outputs", help="folder for the PNGs (each carries its A1111 parameters)")


def _add_strength(parser: argparse.ArgumentParser, default: float | None) -> None:
    shown = f"{default:g}" if default is not None else "1 for inpainting models, 0.9 for others"
    parser.add_argument(
        "--strength", type=float, default=default, help=f"how much to change, in (0, 1] (default: {shown})"
    )


def _add_inpaint_options(parser: argparse.ArgumentParser) -> None:
    defaults = sd_core.InpaintOptions()
    g = parser.add_argument_group("inpainting")
    g.add_argument("--mask-blur", type=float, default=defaults.mask_blur, help="blur radius of the mask in pixels")
    g.add_argument(
        "--only-masked",
        action="store_true",
        help="repaint the mask's box (plus --padding) at the working size, not the whole picture",
    )
    g.add_argument("--padding", type=int, default=defaults.padding, help="pixels around the mask with --only-masked")
    g.add_argument(
        "--fill", choices=limits.FILLS, default=defaults.fill, help="what the masked area holds before sampling"
    )
    g.add_argument("--color-match", action="store_true", help="match the new content's colours to the surroundings")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options that are settings: each option's name is its setting's (`--cfg-scale` -> cfg_scale); the
    `--tile*` options make the `tile` setting."""
    names = set(sd_core.GenerationSettings.__dataclass_fields__) | set(sd_core.InpaintOptions.__dataclass_fields__)
    chosen = {name: getattr(args, name) for name in names - {"prompt", "choice", "inpaint"} if hasattr(args, name)}
    chosen["tile"] = _tile(args.tile, args.tile_overlap, args.tile_batch)
    return chosen


def _tile(size: str | None, overlap: int | None, batch: int | None) -> sd_core.TileOptions | None:
    """`--tile` N, WxH or "native", with `--tile-overlap` and `--tile-batch` (either one alone: native tiles)."""
    if size is None and overlap is None and batch is None:
        return None
    width = height = None
    if size is not None and size != "native":
        parts = size.lower().split("x")
        if len(parts) > 2 or not all(part.strip().isdigit() for part in parts):
            raise limits.SettingError("tile", f"tile must be N, WxH or native (pixels), got {size!r}")
        width, height = int(parts[0]), int(parts[-1])
    return sd_core.TileOptions(width=width, height=height, overlap=overlap, batch=batch)


def _open_image(path: str, what: str) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ValueError(f"{what} {path} is not an image: {exc}") from None


def cmd_generate(args: argparse.Namespace) -> int:
    from sd_core.pnginfo import pnginfo_for

    low_vram = {"off": False, "on": True, "sequential": "sequential"}[args.low_vram]
    image = _open_image(args.image, "--image") if args.command != "txt2img" else None
    if getattr(args, "upscale", None) is not None:  # A1111's "SD upscale": enlarge, then img2img (in tiles)
        image = sd_core.sd_upscale.upscale(image.convert("RGB"), args.upscale, args.upscaler, args.tiling)
    mask = _open_image(args.mask, "--mask") if args.command == "inpaint" else None
    # a one-shot process owns its heap: freed memory may stay mapped between sampling steps (`sd_core.accel.heap`)
    pipe = sd_core.load(args.model, device=args.device, dtype=args.dtype, low_vram=low_vram, keep_freed_memory=True)
    settings = dict(_settings(args), callback=ProgressBar(args.command))
    if args.command == "txt2img":
        imgs = pipe.txt2img(args.prompt, **settings)
    elif args.command == "img2img":
        imgs = pipe.img2img(image, args.prompt, **settings)
    elif args.command == "inpaint":
        imgs = pipe.inpaint(image, mask, args.prompt, **settings)
    else:
        margins = dict(left=args.left, top=args.top, right=args.right, bottom=args.bottom, prefill=args.prefill)
        imgs = pipe.outpaint(image, args.prompt, **margins, **settings)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    index = next_index(outdir)
    for img in imgs:
        path = outdir / f"{index:05d}-{img.info['seed']}.png"
        img.save(path, pnginfo=pnginfo_for(img.info["parameters"]))
        print(path)
        index += 1
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = sd_core.inspect_model(args.path)
    dtypes = ", ".join(f"{d} ({n})" for d, n in sorted(info.dtypes.items(), key=lambda kv: -kv[1]))
    print(f"file:       {info.path}")
    print(f"family:     {info.family}{' (inpainting)' if info.inpainting else ''}")
    print("prediction: eps or v (SD2 v-prediction is probed at load; override with prediction=)")
    print(f"defaults:   CFG scale {info.defaults.cfg_scale:g}, size {info.defaults.width}x{info.defaults.height}")
    print(f"dtype:      {dtypes}")
    print(f"keys:       {info.keys}")
    for group, (count, params) in sorted(info.groups.items()):
        print(f"  {group:<20} {count:>5} keys {params / 1e6:>9.1f}M params")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from sd_core.server.main import serve

    return serve(args)


def cmd_train(args: argparse.Namespace) -> int:
    from sd_core.training.train import main as train_main

    return train_main(args)


def _generation_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, formatter_class=HelpFormatter)
    _add_settings(parser)
    if name != "txt2img":
        parser.add_argument("--image", required=True, help="the input image (PNG, JPEG, ...)")
    parser.set_defaults(func=cmd_generate)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-core", description="Local Stable Diffusion engine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _generation_parser(sub, "txt2img", "generate images from a prompt")
    img2img = _generation_parser(sub, "img2img", "restyle an image")
    _add_strength(img2img, 0.75)
    img2img.add_argument(
        "--upscale",
        type=float,
        default=None,
        help="enlarge the image by this factor first (A1111's 'SD upscale' with --tile 512 --strength 0.3; "
        "default: no enlargement)",
    )
    img2img.add_argument("--upscaler", default="Lanczos", help="how --upscale enlarges: Lanczos, Nearest or a model's")
    inpaint = _generation_parser(sub, "inpaint", "repaint where a mask is white")
    inpaint.add_argument("--mask", required=True, help="white = repaint, black = keep (the image's size)")
    _add_strength(inpaint, 1.0)
    _add_inpaint_options(inpaint)
    outpaint = _generation_parser(sub, "outpaint", "extend the canvas and fill the new area")
    for side in ("left", "top", "right", "bottom"):
        outpaint.add_argument(f"--{side}", type=int, default=0, help=f"pixels to add on the {side}")
    outpaint.add_argument("--prefill", choices=limits.PREFILLS, default="edge_noise", help="how the new area starts")
    _add_strength(outpaint, None)
    _add_inpaint_options(outpaint)

    info = sub.add_parser("info", help="describe a checkpoint: family, defaults, sizes, dtypes, key counts")
    info.add_argument("path")
    info.set_defaults(func=cmd_info)

    from sd_core.server.settings import add_arguments as add_serve_arguments
    from sd_core.training.train import add_arguments as add_train_arguments

    commands = (
        ("serve", "serve the AUTOMATIC1111 API (/sdapi/v1) on 127.0.0.1 (needs sd-core[server])", add_serve_arguments),
        ("train", "train the built-in texture model, or fine-tune a checkpoint on a folder", add_train_arguments),
    )
    for name, help_text, add_arguments in commands:
        command = sub.add_parser(name, help=help_text, formatter_class=HelpFormatter)
        add_arguments(command)
        command.set_defaults(func=cmd_serve if name == "serve" else cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except limits.SettingError as exc:
        print(f"sd-core: error: --{exc.setting.replace('_', '-')}: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:  # CheckpointError is a ValueError
        print(f"sd-core: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
