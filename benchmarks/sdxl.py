"""sd_core vs diffusers on the same random-weight SDXL base-size checkpoint (2.57B-parameter UNet, both text towers,
the VAE: 3.47B parameters), same dtype, same sampler and sigmas, in one run.

    python benchmarks/sdxl.py                 # bfloat16, 512x512, 4 steps, 3 runs of each engine (~15 min, 2 cores)
    python benchmarks/sdxl.py --dtype fp32 --size 1024 --steps 20 --reps 1 --json run.json

Each run is one engine in a fresh process (two SDXL pipelines in one process would need twice the memory: bf16
weights are 6.5 GiB per engine), alternating sd_core, diffusers, diffusers, sd_core, ... Each process: loads the
single file (sd_core.load vs StableDiffusionXLPipeline.from_single_file with the local config folder; load time and
peak RSS), makes a one-step image at the size (sd_core packs its weights for the shape on its first call; that call
is reported as the warm-up), then the timed image: txt2img, Euler with the same sigma list (diffusers'
EulerDiscreteScheduler given sd_core's sigmas), CFG 7.5, same prompt, no negative prompt (zeros in both engines:
diffusers' `force_zeros_for_empty_prompt`, sd_core's A1111 rule), same seed. Reported: seconds per image (prompt,
steps and VAE decode), seconds per UNet step (between step callbacks), both also as the process's CPU time (all
threads: on a shared machine the wall-clock times move with what else runs, the CPU time much less), the UNet's
GFLOP/s, peak RSS of the whole process (load and generation, the high-water mark), load time, the ratios sd_core /
diffusers (medians over runs) and the mean absolute pixel difference of the two engines' images (0-255).

The checkpoint is written once to the temp folder (`sdxl_checkpoint`, bf16, 6.9 GB) by the test helpers' writer
(`tests/helpers/sdxl_fixtures.py`), with the config folder diffusers needs offline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench import (  # noqa: E402
    CFG,
    DTYPES,
    PROMPT,
    SEED,
    SdCore,
    euler_sigmas,
    load_average,
    machine_info,
    peak_rss_mb,
    rss_mb,
    warm_page_cache,
)

DEFAULT_DIR = Path(tempfile.gettempdir()) / "sd_core_bench"


def sdxl_checkpoint(directory: Path = DEFAULT_DIR) -> tuple[Path, Path]:
    """(single file, diffusers config folder) of the random SDXL base, bf16; written on first use, reused after."""
    from sdxl_fixtures import write_random_sdxl, write_sdxl_config_folder

    single, config = directory / "sdxl-base-random-bf16.safetensors", directory / "sdxl-config"
    if not (config / "model_index.json").exists():
        write_sdxl_config_folder(config)
    if not single.exists():
        directory.mkdir(parents=True, exist_ok=True)
        write_random_sdxl(single.with_suffix(".tmp"), seed=0, dtype=torch.bfloat16)
        single.with_suffix(".tmp").rename(single)
        os.sync()  # on disk before any load is timed
        from sd_core.accel.heap import release_free_heap

        release_free_heap()  # the 7 GB of random weights: not held while the engines run
    return single, config


# --- one engine in this process ---------------------------------------------------------------------------------


def _sd_core(path: Path, dtype: torch.dtype):
    engine = SdCore(path, dtype, "cpu")  # bench.py's engine: the same load options and txt2img call

    def generate(size: int, steps: int, on_step) -> np.ndarray:
        return engine.generate(size, 1, steps, on_step)[0]

    return generate, {"vae_dtype": str(engine.vae_dtype).removeprefix("torch."), "family": engine.pipe.family}


def _diffusers(path: Path, config: Path, dtype: torch.dtype):
    import diffusers

    pipe = diffusers.StableDiffusionXLPipeline.from_single_file(
        str(path), config=str(config), local_files_only=True, torch_dtype=dtype, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")

    def generate(size: int, steps: int, on_step) -> np.ndarray:
        def callback(_pipe, _i, _t, kwargs):
            on_step()
            return kwargs

        out = pipe(
            PROMPT,
            height=size,
            width=size,
            guidance_scale=CFG,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="np",
            sigmas=euler_sigmas(steps),
            callback_on_step_end=callback,
        )
        return (out.images[0] * 255).round().astype(np.float32)

    # the VAE decodes in float32: the SDXL config's force_upcast, diffusers' own rule for this VAE
    return generate, {"vae_dtype": "float32" if pipe.vae.config.force_upcast else str(dtype), "family": "sdxl"}


def child(args) -> None:
    """Load one engine, a warm-up image, the timed image; print JSON (the image goes to `args.image`)."""
    import diffusers  # noqa: F401  (both libraries imported by every child: the same baseline)

    import sd_core  # noqa: F401

    dtype = DTYPES[args.dtype]
    base = rss_mb()
    t0 = time.perf_counter()
    if args.engine == "sd_core":
        generate, info = _sd_core(args.path, dtype)
    else:
        generate, info = _diffusers(args.path, args.config, dtype)
    out = {"load_s": time.perf_counter() - t0, "peak_load_mb": peak_rss_mb(), "base_mb": base, **info}
    with torch.inference_mode():
        t0 = time.perf_counter()
        generate(args.size, 1, lambda: None)
        out["warmup_s"] = time.perf_counter() - t0
        marks: list[tuple[float, float]] = []
        t0, c0 = time.perf_counter(), time.process_time()
        image = generate(args.size, args.steps, lambda: marks.append((time.perf_counter(), time.process_time())))
        out["image_s"], out["cpu_image_s"] = time.perf_counter() - t0, time.process_time() - c0
    for n, key in enumerate(("step_s", "cpu_step_s")):
        out[key] = statistics.median(np.diff([m[n] for m in marks])) if len(marks) > 1 else float("nan")
    out["peak_mb"] = peak_rss_mb()
    np.save(args.image, image)
    print(json.dumps(out))


def run_child(engine: str, args, image: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--image", str(image), "--path", str(args.path)]
    cmd += ["--config", str(args.config), "--dtype", args.dtype, "--size", str(args.size), "--steps", str(args.steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"{engine} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the comparison ---------------------------------------------------------------------------------------------


def compare(args, log) -> dict:
    from sd_core.accel.flops import unet_flops
    from sd_core.checkpoint import read_shapes
    from sd_core.model_config import infer_config

    warm_page_cache(args.path)
    unet_cfg = infer_config(read_shapes(args.path)).unet
    gflop = unet_flops(unet_cfg, 2, args.size, args.size) / 1e9  # one CFG step: [uncond; cond]
    runs: dict[str, list[dict]] = {"sd_core": [], "diffusers": []}
    images: dict[str, np.ndarray] = {}
    scratch = Path(tempfile.mkdtemp(prefix="sdxl-bench-"))
    for rep in range(args.reps):
        for engine in ("sd_core", "diffusers") if rep % 2 == 0 else ("diffusers", "sd_core"):
            r = run_child(engine, args, scratch / f"{engine}.npy")
            images[engine] = np.load(scratch / f"{engine}.npy")
            runs[engine].append(r)
            log(
                f"[{args.dtype} {args.size}px {args.steps} steps] run {rep + 1}/{args.reps} {engine:<9} "
                f"load {r['load_s']:5.1f} s, warm-up {r['warmup_s']:5.1f} s, image {r['image_s']:6.1f} s "
                f"({r['step_s']:.2f} s/step), peak RSS {r['peak_mb']:6.0f} MiB (load {r['peak_load_mb']:.0f}), "
                f"load avg {load_average()}"
            )
    row: dict = {"dtype": args.dtype, "size": args.size, "steps": args.steps, "reps": args.reps}
    row["unet_gflop_per_step"] = gflop
    for name, rs in runs.items():
        for key in ("image_s", "step_s", "cpu_image_s", "cpu_step_s", "load_s", "warmup_s"):
            row[f"{name}_{key}"] = statistics.median(r[key] for r in rs)
        for key in ("peak_mb", "peak_load_mb"):
            row[f"{name}_{key}"] = max(r[key] for r in rs)
        row[f"{name}_vae_dtype"] = rs[0]["vae_dtype"]
        row[f"{name}_unet_gflops"] = gflop / row[f"{name}_step_s"]
    for name, rs in runs.items():
        row[f"{name}_ready_s"] = statistics.median(r["load_s"] + r["warmup_s"] for r in rs)
    for key in ("image_s", "step_s", "cpu_image_s", "cpu_step_s", "load_s", "ready_s", "peak_mb"):
        row[f"ratio_{key}"] = row[f"sd_core_{key}"] / row[f"diffusers_{key}"]
    row["px_diff_engines"] = float(np.abs(images["sd_core"] - images["diffusers"]).mean())
    return {"runs": runs, "row": row}


def report(row: dict, log) -> None:
    log(
        f"\nSDXL base size (random weights, 2.57B UNet), {row['dtype']}, {row['size']}x{row['size']}, "
        f"{row['steps']} Euler steps, CFG {CFG}; medians of {row['reps']} run(s) per engine, each in a fresh process"
    )
    log(f"{'':<22}{'sd_core':>10}{'diffusers':>11}{'ratio':>8}")
    lines = [
        ("s/image", "image_s", 1),
        ("s/UNet step", "step_s", 2),
        ("CPU s/image", "cpu_image_s", 1),
        ("CPU s/UNet step", "cpu_step_s", 2),
        ("peak RSS (MiB)", "peak_mb", 0),
        ("load (s)", "load_s", 1),
        ("load + 1-step image", "ready_s", 1),
    ]
    for label, key, digits in lines:
        a, b = row[f"sd_core_{key}"], row[f"diffusers_{key}"]
        log(f"{label:<22}{a:>10.{digits}f}{b:>11.{digits}f}{a / b:>8.2f}")
    log(
        f"{'UNet GFLOP/s':<22}{row['sd_core_unet_gflops']:>10.0f}{row['diffusers_unet_gflops']:>11.0f}"
        f"   ({row['unet_gflop_per_step']:.0f} GFLOP per CFG step)"
    )
    log(f"VAE dtype: sd_core {row['sd_core_vae_dtype']}, diffusers {row['diffusers_vae_dtype']}")
    log("CPU s: the process's CPU time (all threads): on a shared machine it counts what each engine ran, not the")
    log("  time other processes held the cores (wall-clock times there move by up to 3x between runs)")
    log(f"mean |pixel difference| between the engines' images: {row['px_diff_engines']:.2f} / 255")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3, help="runs per engine, alternating which goes first")
    parser.add_argument("--json", type=Path, default=None, help="write all numbers here")
    parser.add_argument("--child", choices=("sd_core", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.engine = args.child
        child(args)
        return

    def log(msg: str) -> None:
        print(msg, flush=True)

    t0 = time.perf_counter()
    args.path, args.config = sdxl_checkpoint()
    info = machine_info()
    log(f"checkpoint {args.path} ({args.path.stat().st_size / 2**30:.1f} GiB); machine {info}")
    results = {"machine": info, **compare(args, log)}
    report(results["row"], log)
    log(f"load average at the end: {load_average()}; {time.perf_counter() - t0:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
