"""The generation commands' options: each `GenerationSettings` field an option of the same name (`--cfg-scale` is
`cfg_scale`), the hires fix's `--hires-*` (`HiresOptions` fields) and tiled denoising's `--tile*` (`TileOptions`), and
their conversion into the settings the engine takes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import sd_core
from sd_core import limits

MODEL_DEFAULT = "the model's own"


def add_settings(parser: argparse.ArgumentParser) -> None:
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
    _add_a1111_options(parser)
    add_sdxl_options(parser)
    out = parser.add_argument_group("model and output")
    out.add_argument(
        "--model", help="checkpoint (.safetensors/.ckpt) or diffusers folder (default: the built-in model)"
    )
    n = parser.add_argument_group("LoRAs and embeddings (A1111's <lora:name:weight> and embedding names in prompts)")
    n.add_argument(
        "--lora-dir",
        action="append",
        default=[],
        help="a folder of LoRA files the prompt's <lora:name:weight> tags name; repeatable",
    )
    n.add_argument(
        "--embeddings-dir",
        action="append",
        default=[],
        help="a folder of textual-inversion embeddings, used in prompts by file name; repeatable",
    )
    n.add_argument(
        "--lora",
        dest="loras",
        action="append",
        type=_lora,
        default=[],
        metavar="NAME[:WEIGHT[:UNET_WEIGHT]]",
        help="apply a LoRA (a name in --lora-dir or a file's path) as a prompt tag would; repeatable",
    )
    out.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    out.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: the best for the device)")
    out.add_argument("--low-vram", choices=("off", "on", "sequential"), default="off", help="GPU weight offloading")
    out.add_argument("--outdir", default="outputs", help="folder for the PNGs (each carries its A1111 parameters)")


def add_control_options(parser: argparse.ArgumentParser) -> None:
    """ControlNet units: the i-th `--control` image with the i-th `--controlnet`; strength, start, end and module
    given once apply to every unit, or once per unit."""
    from sd_core.controlnet import preprocess

    c = parser.add_argument_group("ControlNet (sd_core.Control: the image guides the composition)")
    c.add_argument(
        "--control", "--control-image", dest="control", action="append", default=[], metavar="IMAGE",
        help="a control image (depth, edges, lines, normals...), stretched to the size; repeatable",
    )  # fmt: skip
    c.add_argument(
        "--controlnet", action="append", default=[], metavar="PATH",
        help="the ControlNet for the matching --control (a file or diffusers folder); repeatable",
    )  # fmt: skip
    for name, default, what in (
        ("strength", 1.0, "how strongly the unit guides (0 to 2)"),
        ("start", 0.0, "the fraction of the steps where guidance starts"),
        ("end", 1.0, "the fraction of the steps where it ends"),
    ):
        c.add_argument(
            f"--control-{name}", type=float, action="append", default=None, metavar="F",
            help=f"{what} (default: {default}); once for every unit or once per unit",
        )  # fmt: skip
    c.add_argument(
        "--control-module", action="append", default=None, choices=list(preprocess.MODULES),
        help="preprocess the control image first (default: none, it is a control map already); once or per unit",
    )  # fmt: skip
    c.add_argument("--guess-mode", action="store_true", help="diffusers' guess mode: the ControlNet counts more")


def _per_unit(values: list | None, count: int, default: Any, option: str) -> list:
    if not values:
        return [default] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise limits.SettingError(option, f"give --{option.replace('_', '-')} once or once per --control ({count})")
    return values


def controls_from(args: argparse.Namespace, device: Any, dtype: Any) -> list[sd_core.Control]:
    """The `--control*` options as `sd_core.Control` units, their ControlNets loaded once each on the model's
    device and dtype."""
    images, paths = args.control, args.controlnet
    if not images and not paths:
        return []
    if len(images) != len(paths):
        if len(paths) == 1:
            paths = paths * len(images)
        else:
            raise limits.SettingError(
                "controlnet", f"{len(images)} --control images need as many --controlnet paths (or one for all)"
            )
    from sd_core.controlnet import preprocess

    loaded: dict[str, Any] = {}
    for path in paths:
        if path not in loaded:
            loaded[path] = sd_core.load_controlnet(path, device=device, dtype=dtype)
    n = len(images)
    strengths = _per_unit(args.control_strength, n, 1.0, "control_strength")
    starts = _per_unit(args.control_start, n, 0.0, "control_start")
    ends = _per_unit(args.control_end, n, 1.0, "control_end")
    modules = _per_unit(args.control_module, n, "none", "control_module")
    units = []
    for image, path, strength, start, end, module in zip(images, paths, strengths, starts, ends, modules, strict=True):
        picture = sd_core.controlnet.unit.control_image(image)
        if module != "none":
            picture = preprocess.run(module, picture)
        units.append(
            sd_core.Control(
                loaded[path],
                picture,
                strength=strength,
                start=start,
                end=end,
                guess_mode=args.guess_mode,
                module=module,
            )  # fmt: skip
        )
    return units


def _lora(text: str) -> tuple[str, tuple[float, float]]:
    """`--lora NAME[:TE[:UNET]]` -> (name, (te, unet)): the trailing numbers are the weights, as in a prompt tag (one
    number weighs both; a path may hold colons of its own)."""
    parts = text.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 2:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    te = numbers[0] if numbers else 1.0
    return ":".join(parts), (te, numbers[1] if len(numbers) > 1 else te)


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


def _pair(text: str) -> tuple[int, int]:
    """AxB -> (A, B): SDXL's (height, width) sizes and (top, left) crop, in diffusers' order."""
    first, sep, second = text.lower().partition("x")
    if not sep or not first.isdigit() or not second.isdigit():
        raise argparse.ArgumentTypeError(f"expected two numbers like 1024x768, got {text!r}")
    return int(first), int(second)


def add_sdxl_options(parser: argparse.ArgumentParser) -> None:
    """SDXL's size conditioning, the empty negative prompt's meaning and the refiner (`sd_core.sdxl`)."""
    g = parser.add_argument_group("SDXL (size conditioning as diffusers: sizes HEIGHTxWIDTH, crop TOPxLEFT)")
    g.add_argument("--original-size", type=_pair, default=None, metavar="HxW", help="default: the image's size")
    g.add_argument("--crops-coords-top-left", type=_pair, default=None, metavar="TOPxLEFT", help="default: 0x0")
    g.add_argument("--target-size", type=_pair, default=None, metavar="HxW", help="default: the image's size")
    g.add_argument("--aesthetic-score", type=float, default=None, help="refiner only (default 6.0)")
    g.add_argument("--negative-aesthetic-score", type=float, default=None, help="refiner only (default 2.5)")
    g.add_argument(
        "--empty-negative",
        choices=limits.EMPTY_NEGATIVE,
        default=None,
        help="an empty negative prompt as zeros or as the encoded empty text (default: zeros for SDXL, as A1111)",
    )
    g.add_argument("--refiner", default=None, metavar="MODEL", help="SDXL refiner checkpoint or folder")
    g.add_argument("--refiner-switch-at", type=float, default=None, help="fraction sampled before it (default 0.8)")


def add_image_options(parser: argparse.ArgumentParser) -> None:
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


def add_strength(parser: argparse.ArgumentParser, default: float | None) -> None:
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


def add_hires_options(parser: argparse.ArgumentParser) -> None:
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
    add_upscaler_dir(g)
    g.add_argument("--hires-steps", type=int, help="second-pass steps (default: --steps)")
    g.add_argument("--hires-strength", type=float, help=f"second-pass strength (default: {defaults.strength:g})")
    g.add_argument("--hires-prompt", help="second-pass prompt (default: --prompt)")
    g.add_argument("--hires-negative-prompt", help="second-pass negative prompt (default: --negative-prompt)")
    g.add_argument("--hires-sampler", help="second-pass sampler (default: --sampler)")
    g.add_argument("--hires-schedule", help="second-pass schedule (default: --schedule, or the sampler's own)")


def add_upscaler_dir(parser: argparse.ArgumentParser | Any) -> None:
    parser.add_argument(
        "--upscaler-dir",
        type=Path,
        action="append",
        help="a folder of ESRGAN-family models (.pth, .pt, .safetensors; A1111's models/ESRGAN); repeatable",
    )


def add_sd_upscale_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("SD upscale (A1111's script: enlarge the image, then img2img it, with --tile)")
    g.add_argument(
        "--upscale",
        type=float,
        default=None,
        help="enlarge the image by this factor first (A1111's 'SD upscale' with --tile 512 --strength 0.3; "
        "default: no enlargement)",
    )
    g.add_argument(
        "--upscaler",
        default="Lanczos",
        help="how --upscale enlarges: Lanczos, Nearest, a model in --upscaler-dir or a model file's path",
    )
    add_upscaler_dir(g)


def find_upscaler(name: str, dirs: Any, device: str | None, setting: str, **tiling: int) -> Any:
    """An upscaler by NAME|PATH: a model file's path, else a pixel upscaler or a model in the folders `dirs`."""
    from sd_core import upscalers

    if Path(name).suffix.lower() in upscalers.MODEL_SUFFIXES and Path(name).is_file():
        return upscalers.model_upscaler(name, device, **tiling)
    return upscalers.Upscalers(dirs or (), device, **tiling).find(name, setting)


def hires_options(args: argparse.Namespace, device: str | None) -> sd_core.HiresOptions | None:
    """The `--hires-*` options given, as `HiresOptions` (None: no hires fix); a model upscaler runs on `device`."""
    from sd_core.upscalers import REGISTRY, latent

    given = {}
    for name in sd_core.HiresOptions.__dataclass_fields__:
        value = getattr(args, f"hires_{name}", None)
        if value is not None:
            given[name] = value
    upscaler = given.get("upscaler")
    if upscaler is not None and not latent.is_latent(upscaler) and upscaler not in REGISTRY:  # a model's name or path
        given["upscaler"] = find_upscaler(upscaler, args.upscaler_dir, device, "hires_upscaler")
    return sd_core.HiresOptions(**given) if given or getattr(args, "hires", False) else None


def add_inpaint_options(parser: argparse.ArgumentParser) -> None:
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


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options that are settings: each option's name is its setting's (`--cfg-scale` -> cfg_scale); the
    `--tile*` options make the `tile` setting."""
    names = set(sd_core.GenerationSettings.__dataclass_fields__) | set(sd_core.InpaintOptions.__dataclass_fields__)
    skipped = {"prompt", "choice", "inpaint", "hires", "tile", "refiner", "control"}  # from --hires-*, --tile*; loaded
    chosen = {name: getattr(args, name) for name in names - skipped if hasattr(args, name)}
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
