"""Per-step time with one ControlNet: sd_core vs diffusers' StableDiffusionControlNetPipeline on the same random
SD1.5-size checkpoint and random SD1.5-size ControlNet (written by sd_core in the original layouts), same dtype, same
sampler and sigmas, one run of each in one process (the two engines one after the other).

    python benchmarks/controlnet.py                     # float32, 512x512, 10 steps (several minutes on 2 cores)
    python benchmarks/controlnet.py --size 256 --steps 4 --dtype bf16 --json run.json
    python benchmarks/controlnet.py --tiny              # the test suite's tiny models: checks the script, not speed

Reported per engine: seconds per UNet+ControlNet step (median time between step callbacks after the first step),
seconds per image, the same without the ControlNet (what it adds per step), peak RSS, and the mean absolute pixel
difference of the two engines' images (0-255). The checkpoint and config folder come from `sd15_checkpoint.py`; the
ControlNet is written once next to them (`control_sd15_random.safetensors`, with its diffusers config folder).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench import CFG, DTYPES, PROMPT, SEED, euler_sigmas, machine_info, peak_rss_mb  # noqa: E402
from sd15_checkpoint import DEFAULT_DIR, sd15_checkpoint  # noqa: E402


def controlnet_files(directory: Path = DEFAULT_DIR) -> tuple[Path, Path]:
    """(the ControlNet in the original layout, a diffusers config folder for it); written on first use."""
    import json as _json

    from controlnet_fixtures import HINT_CHANNELS, randomize_zero_modules_
    from diffusers import ControlNetModel
    from model_fixtures import _perturb
    from sd15_reference import UNET

    from sd_core.controlnet import read_controlnet_state_dict, save_controlnet

    single, config = directory / "control_sd15_random.safetensors", directory / "controlnet_config"
    if single.exists() and (config / "config.json").exists():
        return single, config
    cfg = {k: v for k, v in UNET.items() if k not in ("sample_size", "out_channels", "up_block_types")}
    cfg["conditioning_embedding_out_channels"] = list(HINT_CHANNELS)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    net = randomize_zero_modules_(_perturb(ControlNetModel(**cfg), g), g)
    net.save_pretrained(config)  # the folder (weights and config.json) diffusers loads
    save_controlnet(single, read_controlnet_state_dict(config))
    config.joinpath("config.json").write_text(_json.dumps({"_class_name": "ControlNetModel", **cfg}))
    return single, config


def tiny_files() -> tuple[Path, Path, Path, Path]:
    """The test suite's tiny SD1 model and ControlNet: (checkpoint, its folder, ControlNet file, its folder)."""
    import tempfile

    from controlnet_fixtures import controlnet_folder, write_controlnet_file
    from model_fixtures import _cached_folder, write_tiny_checkpoint

    root = Path(tempfile.mkdtemp(prefix="cn_bench_"))
    model = write_tiny_checkpoint(root / "tiny.safetensors")
    return model, _cached_folder(0, False, False), write_controlnet_file(root / "cn.safetensors"), controlnet_folder()


def control_image(size: int):
    """A white disc on black (a PIL image: diffusers reads a numpy array as a batch)."""
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    disc = ((x - size * 0.4) ** 2 + (y - size * 0.5) ** 2 < (size * 0.3) ** 2) * 255
    return Image.fromarray(np.stack([disc, disc, disc], -1).astype(np.uint8))


def step_times(run) -> tuple[float, float, np.ndarray]:
    """(median seconds between step callbacks after the first, seconds in all, the images) of `run(on_step)`."""
    marks: list[float] = []
    start = time.perf_counter()
    images = run(lambda: marks.append(time.perf_counter()))
    total = time.perf_counter() - start
    gaps = np.diff(marks)
    return float(statistics.median(gaps)) if len(gaps) else total, total, images


def run_sd_core(model: Path, net_path: Path, dtype, size: int, steps: int) -> dict:
    import sd_core

    pipe = sd_core.load(model, device="cpu", dtype=dtype, keep_freed_memory=True)
    net = sd_core.load_controlnet(net_path, device="cpu", dtype=pipe.dtype)
    image = control_image(size)
    kw = dict(width=size, height=size, steps=steps, sampler="euler", cfg_scale=CFG, seed=SEED)

    def go(control):
        def run(on_step):
            out = pipe.txt2img(PROMPT, control=control, callback=lambda info: on_step(), **kw)
            return np.asarray(out[0], np.float64)

        return step_times(run)

    go([sd_core.Control(net, image)])  # warm-up: packs the weights for the shape
    step, total, images = go([sd_core.Control(net, image)])
    plain_step, _, _ = go([])
    return {"step_s": step, "image_s": total, "plain_step_s": plain_step, "image": images, "peak_rss_mb": peak_rss_mb()}


def run_diffusers(folder: Path, net_folder: Path, dtype, size: int, steps: int, single: Path | None = None) -> dict:
    import diffusers

    net = diffusers.ControlNetModel.from_pretrained(str(net_folder), dtype=dtype)
    if single is not None:
        pipe = diffusers.StableDiffusionControlNetPipeline.from_single_file(
            str(single), config=str(folder), controlnet=net, local_files_only=True, dtype=dtype,
            safety_checker=None, requires_safety_checker=False,
        )  # fmt: skip
    else:
        pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
            str(folder), controlnet=net, local_files_only=True, dtype=dtype, safety_checker=None,
            requires_safety_checker=False,
        )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    image = control_image(size)

    def run(on_step):
        def callback(_pipe, i, t, kwargs):
            on_step()
            return kwargs

        out = pipe(
            PROMPT, image=image, width=size, height=size, num_inference_steps=steps, guidance_scale=CFG,
            generator=torch.Generator("cpu").manual_seed(SEED), sigmas=euler_sigmas(steps)[:-1], output_type="np",
            callback_on_step_end=callback,
        )  # fmt: skip
        return (out.images[0] * 255).round().astype(np.float64)

    run(lambda: None)  # warm-up
    step, total, images = step_times(run)
    return {"step_s": step, "image_s": total, "image": images, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="the test suite's tiny models (checks the script)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    if args.tiny:
        model, folder, net_path, net_folder = tiny_files()
        single = None
    else:
        model, folder = sd15_checkpoint()
        net_path, net_folder = controlnet_files()
        single = model
    ours = run_sd_core(model, net_path, dtype, args.size, args.steps)
    theirs = run_diffusers(folder, net_folder, dtype, args.size, args.steps, single)
    diff = float(np.abs(ours.pop("image") - theirs.pop("image")).mean())
    result = {
        "machine": machine_info(),
        "dtype": args.dtype,
        "size": args.size,
        "steps": args.steps,
        "tiny": args.tiny,
        "sd_core": ours,
        "diffusers": theirs,
        "controlnet_share_of_step": 1 - ours["plain_step_s"] / ours["step_s"],
        "step_ratio_sd_core_over_diffusers": ours["step_s"] / theirs["step_s"],
        "mean_abs_pixel_diff": diff,
    }
    print(json.dumps(result, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
