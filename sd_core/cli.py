"""The `sd-core` command: txt2img, img2img, inpaint, outpaint, upscale, info, serve, train.

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
from sd_core import limits

MODEL_DEFAULT = "the model's own"


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
    _add_a1111_options(parser)
    out = parser.add_argument_group("model and output")
    out.add_argument(
        "--model", help="checkpoint (.safetensors/.ckpt) or diffusers folder (default: the built-in model)"
    )
    out.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    out.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: the best for the device)")
    out.add_argument("--low-vram", choices=("off", "on", "sequential"), default="off", help="GPU weight offloading")
    out.add_argument("--outdir", default="outputs", help="folder for the PNGs (each carries its A1111 parameters)")


def _size(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT -> (width, height)."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 512x512, got {text!r}")
    return int(width), int(height)


def _add_a1111_options(parser: argparse.ArgumentParser) -> None:
    """A1111's sampler options and variation seeds (`GenerationSettings`)."""
    from sd_core import samplers

    g = parser.add_argument_group("sampler options and variation seeds (A1111's)")
    takes = {name: ", ".join(samplers.samplers_taking(name)) for name in samplers.SAMPLER_OPTIONS}
    g.add_argument("--eta", type=float, default=None, help=f"noise of {takes['eta']} (default: the sampler's own)")
    churn = "churn (Karras et al.) of " + takes["s_churn"]
    g.add_argument("--s-churn", type=float, default=0.0, help=f"stochastic {churn}; 0 is off")
    g.add_argument("--s-tmin", type=float, default=0.0, help="churn only at sigmas of at least this")
    g.add_argument("--s-tmax", type=float, default=None, help="churn only at sigmas of at most this (default: all)")
    g.add_argument("--s-noise", type=float, default=1.0, help=f"scale of the fresh noise of {takes['s_noise']}")
    g.add_argument("--subseed", type=int, default=-1, help="variation seed; -1 picks a random one")
    g.add_argument(
        "--subseed-strength", type=float, default=0.0, help="how far toward the variation seed's noise, 0 to 1"
    )
    g.add_argument(
        "--seed-resize-from", type=_size, default=None, metavar="WxH", help="draw the seed's noise at this size"
    )


def _add_image_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resize-mode",
        choices=limits.RESIZE_MODES,
        default="resize",
        help="fitting the image to --width/--height: stretch, cover and crop, fit and fill (A1111's modes 0-2), or "
        "(latent, img2img only) encode it at its own size and resize the latents (A1111's latent upscale)",
    )
    parser.add_argument(
        "--initial-noise-multiplier", type=float, default=1.0, help="scale of the start noise (A1111's)"
    )


def _add_strength(parser: argparse.ArgumentParser, default: float | None) -> None:
    shown = f"{default:g}" if default is not None else "1 for inpainting models, 0.9 for others"
    parser.add_argument(
        "--strength", type=float, default=default, help=f"how much to change, in (0, 1] (default: {shown})"
    )
    parser.add_argument(
        "--fixed-steps",
        action="store_true",
        help="run exactly --steps steps, the last of a longer schedule (A1111's img2img_fix_steps; default: "
        "int(steps * strength) of --steps)",
    )


def _add_hires_options(parser: argparse.ArgumentParser) -> None:
    from sd_core.upscalers import REGISTRY, latent

    defaults = sd_core.HiresOptions()
    names = ", ".join([*latent.LATENT_MODES, *REGISTRY])
    g = parser.add_argument_group(
        "hires fix: a second, img2img pass at a larger size (with --hires or any --hires-* option)"
    )
    g.add_argument("--hires", action="store_true", help="hires fix with the defaults of the options below")
    g.add_argument("--hires-scale", type=float, help=f"upscale factor (default: {defaults.scale:g})")
    g.add_argument("--hires-width", type=int, help="target width (default: from the scale, or from --hires-height)")
    g.add_argument("--hires-height", type=int, help="target height (both given: upscaled to cover, centre-cropped)")
    g.add_argument(
        "--hires-upscaler",
        help=f"one of: {names}, a model in --upscaler-dir (its file name without suffix) or a model file's path "
        f"(default: {defaults.upscaler})",
    )
    g.add_argument(
        "--upscaler-dir",
        type=Path,
        action="append",
        help="a folder of ESRGAN-family models (.pth, .pt, .safetensors; A1111's models/ESRGAN); repeatable",
    )
    g.add_argument("--hires-steps", type=int, help="second-pass steps (default: --steps)")
    g.add_argument("--hires-strength", type=float, help=f"second-pass strength (default: {defaults.strength:g})")
    g.add_argument("--hires-prompt", help="second-pass prompt (default: --prompt)")
    g.add_argument("--hires-negative-prompt", help="second-pass negative prompt (default: --negative-prompt)")
    g.add_argument("--hires-sampler", help="second-pass sampler (default: --sampler)")
    g.add_argument("--hires-schedule", help="second-pass schedule (default: --schedule, or the sampler's own)")


def _upscaler(name: str, dirs: Any, device: str | None, setting: str, **tiling: int) -> Any:
    """An upscaler by NAME|PATH: a model file's path, else a pixel upscaler or a model in the folders `dirs`."""
    from sd_core import upscalers

    if Path(name).suffix.lower() in upscalers.MODEL_SUFFIXES and Path(name).is_file():
        return upscalers.model_upscaler(name, device, **tiling)
    return upscalers.Upscalers(dirs or (), device, **tiling).find(name, setting)


def _hires(args: argparse.Namespace, device: str | None) -> sd_core.HiresOptions | None:
    """The `--hires-*` options given, as `HiresOptions` (None: no hires fix); a model upscaler runs on `device`."""
    from sd_core.upscalers import REGISTRY, latent

    given = {}
    for name in sd_core.HiresOptions.__dataclass_fields__:
        value = getattr(args, f"hires_{name}", None)
        if value is not None:
            given[name] = value
    upscaler = given.get("upscaler")
    if upscaler is not None and not latent.is_latent(upscaler) and upscaler not in REGISTRY:  # a model's name or path
        given["upscaler"] = _upscaler(upscaler, args.upscaler_dir, device, "hires_upscaler")
    return sd_core.HiresOptions(**given) if given or getattr(args, "hires", False) else None


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
    """The parsed options that are settings: each option's name is its setting's (`--cfg-scale` -> cfg_scale)."""
    names = set(sd_core.GenerationSettings.__dataclass_fields__) | set(sd_core.InpaintOptions.__dataclass_fields__)
    skipped = {"prompt", "choice", "inpaint", "hires"}  # hires: built from the --hires-* options (`_hires`)
    return {name: getattr(args, name) for name in names - skipped if hasattr(args, name)}


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
    mask = _open_image(args.mask, "--mask") if args.command == "inpaint" else None
    hires = _hires(args, args.device) if args.command == "txt2img" else None  # a bad option: before loading
    # a one-shot process owns its heap: freed memory may stay mapped between sampling steps (`sd_core.accel.heap`)
    pipe = sd_core.load(args.model, device=args.device, dtype=args.dtype, low_vram=low_vram, keep_freed_memory=True)
    settings = dict(_settings(args), callback=ProgressBar(args.command))
    if args.command == "txt2img":
        if hires is not None and not isinstance(hires.upscaler, str):  # a model upscaler: on the model's device
            hires = _hires(args, str(pipe.device))
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
    upscaler = _upscaler(args.upscaler, args.upscaler_dir, args.device, "upscaler", **tiling)
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
    parser.add_argument(
        "--upscaler-dir",
        type=Path,
        action="append",
        help="a folder of ESRGAN-family models (.pth, .pt, .safetensors; A1111's models/ESRGAN); repeatable",
    )
    parser.add_argument("--device", default="cpu", help="where a model runs (cpu, cuda, mps)")
    parser.add_argument("--tile", type=int, default=192, help="a model runs in tiles this many pixels wide (0: whole)")
    parser.add_argument("--tile-overlap", type=int, default=8, help="pixels of context around each tile")
    parser.add_argument("--outdir", default="outputs", help="folder for the PNG (it keeps the input's parameters)")
    parser.set_defaults(func=cmd_upscale)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-core", description="Local Stable Diffusion engine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    txt2img = _generation_parser(sub, "txt2img", "generate images from a prompt")
    _add_hires_options(txt2img)
    img2img = _generation_parser(sub, "img2img", "restyle an image")
    _add_strength(img2img, 0.75)
    _add_image_options(img2img)
    inpaint = _generation_parser(sub, "inpaint", "repaint where a mask is white")
    inpaint.add_argument("--mask", required=True, help="white = repaint, black = keep (the image's size)")
    _add_strength(inpaint, 1.0)
    _add_image_options(inpaint)
    _add_inpaint_options(inpaint)
    outpaint = _generation_parser(sub, "outpaint", "extend the canvas and fill the new area")
    for side in ("left", "top", "right", "bottom"):
        outpaint.add_argument(f"--{side}", type=int, default=0, help=f"pixels to add on the {side}")
    outpaint.add_argument("--prefill", choices=limits.PREFILLS, default="edge_noise", help="how the new area starts")
    _add_strength(outpaint, None)
    _add_inpaint_options(outpaint)

    _upscale_parser(sub)

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
