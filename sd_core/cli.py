"""The `sd-core` command: txt2img, img2img, inpaint, outpaint, upscale, info, serve, train, batch.

The generation commands take every `GenerationSettings` field as an option and build the settings once; options left
out take the model's own defaults (CFG scale, native size) or the engine's, as in the Python API. txt2img's hires fix
options are `--hires-*` (`HiresOptions` fields: `--hires-scale` is `HiresOptions.scale`); any of them, or `--hires`,
turns it on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import sd_core
from sd_core import cli_options, limits


class ProgressBar:
    """A one-line progress bar on stderr (a line per sampling phase: hires fix's two passes); no dependency, quiet
    when stderr is not a terminal except at the end of each."""

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label, self.stream, self.start = label, stream or sys.stderr, time.monotonic()
        self.phase = 1

    def __call__(self, info: sd_core.StepInfo) -> None:
        step, total = info.step, info.total
        if info.phase != self.phase:
            self.phase, self.start = info.phase, time.monotonic()
        label = self.label if info.phases == 1 else f"{self.label} pass {info.phase}/{info.phases}"
        elapsed = time.monotonic() - self.start
        rate = elapsed / step if step else 0.0
        filled = int(30 * step / max(total, 1))
        line = f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {step}/{total} {rate:.2f}s/it"
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
        upscaler = cli_options.find_upscaler(args.upscaler, args.upscaler_dir, args.device, "upscaler")
        image = sd_core.sd_upscale.upscale(image.convert("RGB"), args.upscale, upscaler, args.tiling)
    mask = _open_image(args.mask, "--mask") if args.command == "inpaint" else None
    hires = cli_options.hires_options(args, args.device) if args.command == "txt2img" else None  # checked early
    # a one-shot process owns its heap: freed memory may stay mapped between sampling steps (`sd_core.accel.heap`)
    pipe = sd_core.load(
        args.model,
        device=args.device,
        dtype=args.dtype,
        low_vram=low_vram,
        keep_freed_memory=True,
        lora_dirs=args.lora_dir,
        embedding_dirs=args.embeddings_dir,
    )
    settings = dict(cli_options.settings_from(args), callback=ProgressBar(args.command))
    if args.refiner is not None:  # SDXL's refiner: a second model, loaded like the first
        settings["refiner"] = sd_core.load(args.refiner, device=args.device, dtype=args.dtype, low_vram=low_vram)
    if args.command == "txt2img":
        if hires is not None and not isinstance(hires.upscaler, str):  # a model upscaler: on the model's device
            hires = cli_options.hires_options(args, str(pipe.device))
        imgs = pipe.txt2img(args.prompt, hires=hires, **settings)
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


def cmd_upscale(args: argparse.Namespace) -> int:
    """One image through an upscaler (a pixel one, a model of --upscaler-dir, or a model file's path), by --scale or
    to --width x --height (scaled to cover, centre-cropped); the PNG keeps the input's text chunks (its A1111
    `parameters`) and gets A1111's `postprocessing` text."""
    from PIL import PngImagePlugin

    from sd_core import upscalers

    for option, value in (("--scale", args.scale), ("--width", args.width), ("--height", args.height)):
        if value is not None and not value > 0:
            raise ValueError(f"{option} must be positive, got {value}")
    if args.tile < 0 or args.tile_overlap < 0:
        raise ValueError("--tile and --tile-overlap cannot be negative")
    original = _open_image(args.image, "--image")
    image = original.convert("RGB")
    tiling = {"tile": args.tile, "overlap": args.tile_overlap}
    upscaler = cli_options.find_upscaler(args.upscaler, args.upscaler_dir, args.device, "upscaler", **tiling)
    if args.width is None and args.height is None:
        info = f"Postprocess upscale by: {args.scale:g}"
        result = upscaler.upscale(image, args.scale)
    else:
        ratio = image.width / image.height
        width = args.width or max(1, round(args.height * ratio))
        height = args.height or max(1, round(args.width / ratio))
        info = f"Postprocess upscale to: {width}x{height}"
        by = max(width / image.width, height / image.height)  # cover the size, then crop the overflow
        cover = (max(width, round(image.width * by)), max(height, round(image.height * by)))
        result = upscalers.resize(image, *cover, upscaler)
        left, top = (cover[0] - width) // 2, (cover[1] - height) // 2
        result = result.crop((left, top, left + width, top + height))
    text = PngImagePlugin.PngInfo()
    for key, value in original.info.items():
        if isinstance(key, str) and isinstance(value, str) and key != "postprocessing":
            text.add_text(key, value)
    text.add_text("postprocessing", f"{info}, Postprocess upscaler: {upscaler.name}")
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in upscaler.name)
    path = outdir / f"{next_index(outdir):05d}-{safe}.png"
    result.save(path, pnginfo=text)
    print(path)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = sd_core.inspect_model(args.path)
    dtypes = ", ".join(f"{d} ({n})" for d, n in sorted(info.dtypes.items(), key=lambda kv: -kv[1]))
    print(f"file:       {info.path}")
    print(f"family:     {info.family}{' (inpainting)' if info.inpainting else ''}")
    print("prediction: eps or v (SD2 v-prediction is probed at load; override with prediction=)")
    print(f"defaults:   CFG scale {info.defaults.cfg_scale:g}, size {info.defaults.width}x{info.defaults.height}")
    print(f"sizes:      {', '.join(f'{w}x{h}' for w, h in info.defaults.sizes)}")
    print(f"dtype:      {dtypes}")
    print(f"keys:       {info.keys}")
    for group, (count, params) in sorted(info.groups.items()):
        print(f"  {group:<20} {count:>5} keys {params / 1e6:>9.1f}M params")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from sd_core.server.main import serve

    return serve(args)


def cmd_batch(args: argparse.Namespace) -> int:
    from sd_core.batch.command import main as batch_main

    return batch_main(args)


def cmd_train(args: argparse.Namespace) -> int:
    from sd_core.training.train import main as train_main

    return train_main(args)


def _generation_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, formatter_class=HelpFormatter)
    cli_options.add_settings(parser)
    if name != "txt2img":
        parser.add_argument("--image", required=True, help="the input image (PNG, JPEG, ...)")
    parser.set_defaults(func=cmd_generate)
    return parser


def _upscale_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "upscale", help="enlarge an image (Lanczos, Nearest or an ESRGAN model)", formatter_class=HelpFormatter
    )
    parser.add_argument("--image", required=True, help="the input image (PNG, JPEG, ...)")
    parser.add_argument(
        "--upscaler",
        default="Lanczos",
        help="Lanczos, Nearest, the file name (without suffix) of a model in --upscaler-dir, or a model file's path",
    )
    parser.add_argument("--scale", type=float, default=2.0, help="the factor (the size is floored to a multiple of 8)")
    parser.add_argument("--width", type=int, default=None, help="with or instead of --height: upscale to this size")
    parser.add_argument("--height", type=int, default=None, help="with or instead of --width: upscale to this size")
    cli_options.add_upscaler_dir(parser)
    parser.add_argument("--device", default="cpu", help="where a model runs (cpu, cuda, mps)")
    parser.add_argument("--tile", type=int, default=192, help="a model runs in tiles this many pixels wide (0: whole)")
    parser.add_argument("--tile-overlap", type=int, default=8, help="pixels of context around each tile")
    parser.add_argument("--outdir", default="outputs", help="folder for the PNG (it keeps the input's parameters)")
    parser.set_defaults(func=cmd_upscale)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-core", description="Local Stable Diffusion engine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    txt2img = _generation_parser(sub, "txt2img", "generate images from a prompt")
    cli_options.add_hires_options(txt2img)
    img2img = _generation_parser(sub, "img2img", "restyle an image")
    cli_options.add_strength(img2img, 0.75)
    cli_options.add_image_options(img2img)
    cli_options.add_sd_upscale_options(img2img)
    inpaint = _generation_parser(sub, "inpaint", "repaint where a mask is white")
    inpaint.add_argument("--mask", required=True, help="white = repaint, black = keep (the image's size)")
    cli_options.add_strength(inpaint, 1.0)
    cli_options.add_image_options(inpaint)
    cli_options.add_inpaint_options(inpaint)
    outpaint = _generation_parser(sub, "outpaint", "extend the canvas and fill the new area")
    for side in ("left", "top", "right", "bottom"):
        outpaint.add_argument(f"--{side}", type=int, default=0, help=f"pixels to add on the {side}")
    outpaint.add_argument("--prefill", choices=limits.PREFILLS, default="edge_noise", help="how the new area starts")
    cli_options.add_strength(outpaint, None)
    cli_options.add_inpaint_options(outpaint)

    _upscale_parser(sub)

    info = sub.add_parser("info", help="describe a checkpoint: family, defaults, sizes, dtypes, key counts")
    info.add_argument("path")
    info.set_defaults(func=cmd_info)

    from sd_core.batch.command import add_arguments as add_batch_arguments
    from sd_core.server.settings import add_arguments as add_serve_arguments
    from sd_core.training.train import add_arguments as add_train_arguments

    commands = (
        ("serve", "serve the AUTOMATIC1111 API (/sdapi/v1) on 127.0.0.1 (needs sd-core[server])", add_serve_arguments),
        ("train", "train the built-in texture model, or fine-tune a checkpoint on a folder", add_train_arguments),
        (
            "batch",
            "many images from a file of A1111 requests or prompts, resumable, locally or on Ray",
            add_batch_arguments,
        ),
    )
    functions = {"serve": cmd_serve, "train": cmd_train, "batch": cmd_batch}
    for name, help_text, add_arguments in commands:
        command = sub.add_parser(name, help=help_text, formatter_class=HelpFormatter)
        add_arguments(command)
        command.set_defaults(func=functions[name])
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
