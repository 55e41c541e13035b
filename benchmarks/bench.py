"""sd_core vs diffusers on the same random-weight SD1.5-size checkpoint, measured side by side.

    python benchmarks/bench.py            # default cases (about 30 min on a busy 2-core CPU)
    python benchmarks/bench.py --quick    # 256x256 batch 1 only, one repetition (about 8 min)
    python benchmarks/bench.py --full     # every case (512x512 batch 4 too) in every dtype (hours on a small CPU)
    python benchmarks/bench.py --levers   # also each speed lever on its own (UNet step / VAE decode A/B)

Generation: both engines are loaded in one process and run alternately (sd_core, diffusers, sd_core, ...) with
identical settings: txt2img, Euler with the same sigmas (diffusers' EulerDiscreteScheduler given sd_core's sigma list,
which makes the two samplers identical), CFG 7.5, same prompt and seed. Reported: medians of seconds per image and
per UNet step (from the step callbacks), achieved GFLOP/s of the UNet (FLOPs counted by torch's FLOP counter,
convolutions as direct ones), the working memory of a run (peak RSS above the RSS before it; Linux clear_refs), the
ratio sd_core / diffusers, and the mean absolute pixel difference between the engines (and to the float32 image for
other dtypes).

Load and memory: each engine in a fresh process (alternating), single-file load: `sd_core.load(path)` vs
`StableDiffusionPipeline.from_single_file(path, config=<local config folder>)`: load time, peak RSS during the load
(vs the weights' size in the target dtype), then one 256x256 image: peak RSS while generating, and load + that first
image as the cold-start time (sd_core packs weights in its first call; the timed runs above are all warm).

CPU: float32 and bfloat16 (`--dtypes`), plus each engine's default (sd_core picks its dtype, diffusers float32).
CUDA (when available, `benchmarks/gpu_check.sh`): float16 it/s and seconds per image; peak VRAM of each engine alone in
a fresh process (load, generation); sd_core's CUDA graphs on/off; its low-VRAM modes; defaults vs defaults at 512x512.
A part that fails prints its traceback and the others still run (the exit status says which failed).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sd15_checkpoint import sd15_checkpoint  # noqa: E402

PROMPT = "a red brick wall covered in ivy, highly detailed"
SEED = 1234
CFG = 7.5
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (size, batch, repetitions) per dtype; each repetition runs both engines once, alternating which goes first
DEFAULT_CASES = {
    "fp32": [(256, 1, 2), (256, 4, 1), (512, 1, 1)],
    "bf16": [(256, 1, 2), (512, 1, 1)],
    "fp16": [(512, 1, 3), (512, 4, 1)],
}
FULL_CASES = [(256, 1, 3), (256, 4, 1), (512, 1, 2), (512, 4, 1)]
QUICK_CASES = [(256, 1, 1)]


# --- memory ----------------------------------------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def reset_peak_rss() -> None:
    """Start a new RSS high-water mark (Linux: writing 5 to clear_refs resets VmHWM)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


# --- machine ---------------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?"
        )
        flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
        info["isa"] = " ".join(
            f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags
        )
        mhz = [float(line.split(":")[1]) for line in cpuinfo.splitlines() if line.startswith("cpu MHz")]
        info["mhz"] = max(mhz) if mhz else None
    info["cores"] = os.cpu_count()
    with contextlib.suppress(OSError):
        info["mem_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_average(digits: int = 1) -> str:
    with contextlib.suppress(OSError, AttributeError):
        return "/".join(f"{v:.{digits}f}" for v in os.getloadavg())
    return "?"


def _best_seconds(run, reps: int = 5) -> float:
    run()  # warm-up (oneDNN packs and JIT-compiles its kernels for the shape)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def measured_peak_gflops(dtype: torch.dtype, device: str = "cpu") -> float:
    """Best throughput of the kernels a UNet runs on, at this thread count: the 'achievable peak' the UNet's GFLOP/s
    compare with. On the CPU a plain GEMM (`a @ b`) is not the fastest: oneDNN's packed linear and 3x3 convolution
    kernels go further (measured on Zen 4, bf16: 424, 451 and 496 GFLOP/s), so the best of the three is taken."""
    n = 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def gemm():
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()

    rates = [2 * n**3 / _best_seconds(gemm) / 1e9]
    from sd_core.accel import packing

    if device == "cpu" and packing.packing_available(dtype):
        linear = torch.nn.Sequential(torch.nn.Linear(n, n, bias=False).to(dtype))
        conv = torch.nn.Sequential(torch.nn.Conv2d(640, 640, 3, padding=1).to(dtype))
        packing.pack_for_cpu(linear), packing.pack_for_cpu(conv)
        packing.use_winograd(conv, False)  # oneDNN's direct convolution: every multiply-add done
        x = torch.randn(8, 640, 16, 16).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            rates.append(2 * n**3 / _best_seconds(lambda: linear(a)) / 1e9)
            rates.append(2 * 8 * 640 * 640 * 9 * 16 * 16 / _best_seconds(lambda: conv(x)) / 1e9)
    return max(rates)


# --- the two engines -------------------------------------------------------------------------------------------------


def euler_sigmas(steps: int) -> list[float]:
    """sd_core's Euler sigmas, ending in 0. Given this whole list, diffusers' EulerDiscreteScheduler runs the same
    `steps` steps (its timesteps: one per sigma but the last)."""
    import sd_core
    from sd_core.schedules import NoiseSchedule

    return sd_core.samplers.resolve("euler").sigmas(steps, NoiseSchedule()).tolist()


class SdCore:
    name = "sd_core"

    def __init__(self, path: Path, dtype: torch.dtype | None, device: str, **options):
        import sd_core

        # freed memory kept between sampling steps, as the CLI runs (`sd_core.accel.heap`; opt-in in the library)
        self.pipe = sd_core.load(path, device=device, dtype=dtype, **{"keep_freed_memory": True, **options})
        self.dtype = self.pipe.dtype
        self.vae_dtype = next(self.pipe.vae.parameters()).dtype
        upcast = {m.attention_dtype for m in self.pipe.unet.modules() if hasattr(m, "attention_dtype")}
        self.attention_dtype = upcast.pop() if len(upcast) == 1 and None not in upcast else self.dtype

    def generate(self, size: int, batch: int, steps: int, on_step) -> np.ndarray:
        images = self.pipe.txt2img(
            PROMPT,
            width=size,
            height=size,
            steps=steps,
            sampler="euler",
            cfg_scale=CFG,
            seed=SEED,
            batch_size=batch,
            callback=lambda info: on_step(),
        )
        return np.stack([np.asarray(img, dtype=np.float32) for img in images])

    def close(self) -> None:
        del self.pipe


class Diffusers:
    name = "diffusers"

    def __init__(self, path: Path, config: Path, dtype: torch.dtype | None, device: str):
        import diffusers

        kwargs = {} if dtype is None else {"torch_dtype": dtype}
        pipe = diffusers.StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(config),
            local_files_only=True,
            safety_checker=None,
            requires_safety_checker=False,
            **kwargs,
        )
        pipe.set_progress_bar_config(disable=True)
        # EulerDiscreteScheduler with sd_core's sigma list = the same sampler (tests/engine/test_txt2img_parity.py)
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="linspace"
        )
        self.pipe = pipe.to(device)
        self.dtype = pipe.unet.dtype

    def generate(self, size: int, batch: int, steps: int, on_step) -> np.ndarray:
        def callback(pipe, i, t, kwargs):
            on_step()
            return kwargs

        out = self.pipe(
            PROMPT,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=CFG,
            num_images_per_prompt=batch,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="np",
            sigmas=euler_sigmas(steps),
            callback_on_step_end=callback,
        )
        return (out.images * 255).round().astype(np.float32)

    def close(self) -> None:
        del self.pipe


def timed_run(engine, size: int, batch: int, steps: int, device: str) -> dict:
    """One image batch: seconds, per-step seconds (between step callbacks), working memory, the images."""
    marks: list[float] = []

    def on_step():
        if device != "cpu":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    reset_peak_rss()
    before = rss_mb()
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        vram_before = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    images = engine.generate(size, batch, steps, on_step)
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else float("nan")
    out = {"seconds": seconds, "step": step, "work_mb": peak_rss_mb() - before, "images": images}
    if device != "cpu":  # both engines' weights stay allocated in this process: count what the run adds
        out["work_vram_mb"] = (torch.cuda.max_memory_allocated() - vram_before) / 2**20
    return out


def run_defaults(path: Path, config: Path, size: int, device: str, log) -> dict:
    """Each engine exactly as a user gets it: `sd_core.load(path).txt2img(prompt)` (its default dtype, levers, sampler
    and steps) vs `from_single_file(path)(prompt)` (its default dtype and the checkpoint's scheduler, PNDM, 50 steps),
    same prompt and seed. Quality: both runs start from the same noise and integrate the same model's ODE, so the
    pixel difference between the two images is how far sd_core's shorter default run lands from diffusers' longer one
    (shown next to the difference between two seeds, the scale of "a different image")."""
    import diffusers

    import sd_core

    log(f"\n[defaults] {size}x{size} batch 1, each engine's own defaults (load average {load_average()})")
    ours = sd_core.load(path, device=device)
    theirs = diffusers.StableDiffusionPipeline.from_single_file(
        str(path), config=str(config), local_files_only=True, safety_checker=None, requires_safety_checker=False
    ).to(device)
    theirs.set_progress_bar_config(disable=True)
    ours_settings = sd_core.GenerationSettings()
    theirs_args = inspect.signature(theirs.__call__).parameters
    defaults = {
        "sd_core": {"dtype": str(ours.dtype).removeprefix("torch."), "sampler": ours_settings.sampler,
                    "steps": ours_settings.steps, "cfg": ours.defaults.cfg_scale},
        "diffusers": {"dtype": str(theirs.unet.dtype).removeprefix("torch."),
                      "sampler": type(theirs.scheduler).__name__, "steps": theirs_args["num_inference_steps"].default,
                      "cfg": theirs_args["guidance_scale"].default},
    }  # fmt: skip

    def run(name: str, seed: int, **steps) -> np.ndarray:
        if name == "sd_core":
            return np.asarray(ours.txt2img(PROMPT, width=size, height=size, seed=seed, **steps)[0], np.float32)
        gen = torch.Generator("cpu").manual_seed(seed)
        n = {"num_inference_steps": steps["steps"]} if steps else {}
        return np.asarray(theirs(PROMPT, height=size, width=size, generator=gen, **n).images[0], np.float32)

    for name in ("sd_core", "diffusers"):  # warm-up at this shape (sd_core packs its weights for it)
        run(name, SEED, steps=1)
    row: dict = {"size": size, "defaults": defaults}
    images = {}
    for name in ("sd_core", "diffusers"):
        t0 = time.perf_counter()
        images[name] = run(name, SEED)
        row[f"{name}_image_s"] = time.perf_counter() - t0
        log(f"[defaults] {name:<9} {row[f'{name}_image_s']:7.1f} s per image ({defaults[name]})")
    other_seed = run("sd_core", SEED + 1)
    row["px_diff_defaults"] = float(np.abs(images["sd_core"] - images["diffusers"]).mean())
    row["px_diff_other_seed"] = float(np.abs(images["sd_core"] - other_seed).mean())
    return row


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_generation(
    path: Path,
    config: Path,
    dtype_name: str | None,
    cases: list[tuple[int, int, int]],
    steps: int,
    device: str,
    flops: dict,
    references: dict,
    log,
) -> list[dict]:
    """Both engines in this process, alternating; `cases` = (size, batch, repetitions)."""
    dtype = None if dtype_name is None else DTYPES[dtype_name]
    label = "default" if dtype is None else dtype_name
    log(f"\n[{label}] loading both engines (load average {load_average()})")
    ours = SdCore(path, dtype, device)
    theirs = Diffusers(path, config, dtype, device)
    log(
        f"[{label}] sd_core dtype {str(ours.dtype).removeprefix('torch.')}, "
        f"diffusers dtype {str(theirs.dtype).removeprefix('torch.')}"
    )
    rows = []
    for size, batch, reps in cases:
        for engine in (ours, theirs):  # warm-up at this shape (sd_core packs its conv weights for it)
            timed_run(engine, size, batch, 1, device)
        runs: dict[str, list[dict]] = {"sd_core": [], "diffusers": []}
        for rep in range(reps):
            for engine in (ours, theirs) if rep % 2 == 0 else (theirs, ours):
                r = timed_run(engine, size, batch, steps, device)
                runs[engine.name].append(r)
                log(
                    f"[{label}] {size}x{size} b{batch} rep {rep + 1}/{reps} {engine.name:<9} {r['seconds']:7.1f} s "
                    f"({r['step']:.2f} s/step, load avg {load_average()})"
                )
        row = {
            "dtype": label,
            "size": size,
            "batch": batch,
            "reps": reps,
            "steps": steps,
            "sd_core_dtype": str(ours.dtype).removeprefix("torch."),
            "sd_core_vae_dtype": str(ours.vae_dtype).removeprefix("torch."),
            "sd_core_attention_dtype": str(ours.attention_dtype).removeprefix("torch."),
            "diffusers_dtype": str(theirs.dtype).removeprefix("torch."),
        }
        for name, rs in runs.items():
            row[f"{name}_image_s"] = median([r["seconds"] for r in rs]) / batch
            row[f"{name}_step_s"] = median([r["step"] for r in rs])
            row[f"{name}_work_mb"] = median([r["work_mb"] for r in rs])
            if device != "cpu":  # the table's "work" column: VRAM a run adds to the weights (peak allocated)
                row[f"{name}_work_mb"] = max(r["work_vram_mb"] for r in rs)
        row["unet_gflop_per_step"] = flops[(size, batch)] / 1e9
        row["sd_core_unet_gflop_per_step"] = flops[(size, batch, "sd_core")] / 1e9
        a, b = runs["sd_core"][-1]["images"], runs["diffusers"][-1]["images"]
        row["px_diff_engines"] = float(np.abs(a - b).mean())
        ref = references.get((size, batch))
        if label == "fp32":
            references[(size, batch)] = b  # diffusers' float32 image: the quality reference
        elif ref is not None:
            row["px_diff_sd_core_vs_fp32"] = float(np.abs(a - ref).mean())
            row["px_diff_diffusers_vs_fp32"] = float(np.abs(b - ref).mean())
        rows.append(row)
    ours.close()
    theirs.close()
    del ours, theirs
    gc.collect()
    return rows


# --- load + memory, one fresh process per engine ---------------------------------------------------------------------

CHILD = "--child"


def child(args) -> None:
    """Fresh process: load one engine, then generate one image; print JSON."""
    import diffusers  # noqa: F401  (both libraries imported by both children: the same baseline)

    import sd_core  # noqa: F401

    dtype = None if args.child_dtype == "default" else DTYPES[args.child_dtype]
    base = rss_mb()
    reset_peak_rss()
    t0 = time.perf_counter()
    device = args.child_device
    if args.child_engine == "sd_core":
        engine = SdCore(Path(args.child_path), dtype, device)
    else:
        engine = Diffusers(Path(args.child_path), Path(args.child_config), dtype, device)
    if device != "cpu":
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    peak_load = peak_rss_mb()
    weights_mb = (
        sum(
            p.numel() * p.element_size()
            for m in (engine.pipe.unet, engine.pipe.vae, engine.pipe.text_encoder)
            for p in m.parameters()
        )
        / 2**20
    )
    after_load = rss_mb()
    out = {
        "load_s": load_s,
        "base_mb": base,
        "peak_load_mb": peak_load,
        "after_load_mb": after_load,
        "weights_mb": weights_mb,
        "dtype": str(engine.dtype).removeprefix("torch."),
    }
    if device != "cpu":
        out["vram_load_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if args.child_gen_size:
        reset_peak_rss()
        t0 = time.perf_counter()
        engine.generate(args.child_gen_size, 1, args.child_gen_steps, lambda: None)
        out["first_image_s"] = time.perf_counter() - t0  # what the first call does once: sd_core packs its weights
        out["peak_gen_mb"] = peak_rss_mb()
        if device != "cpu":  # one engine in this process: absolute peaks, weights included
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            engine.generate(args.child_gen_size, 1, args.child_gen_steps, lambda: None)
            torch.cuda.synchronize()
            out["vram_gen_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["vram_gen_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    print(json.dumps(out))


def run_child(
    engine: str, dtype: str, path: Path, config: Path, gen_size: int, gen_steps: int, device: str = "cpu"
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        CHILD,
        "--child-engine",
        engine,
        "--child-dtype",
        dtype,
        "--child-path",
        str(path),
        "--child-config",
        str(config),
        "--child-gen-size",
        str(gen_size),
        "--child-gen-steps",
        str(gen_steps),
        "--child-device",
        device,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"{engine} {dtype} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def warm_page_cache(path: Path) -> None:
    """Read the checkpoint once so every timed load finds it in the page cache: otherwise whichever engine loads
    first pays for the disk (seen: the same bf16 load took 4.0 s first in a run and 1.6-2.0 s after)."""
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def run_loads(
    path: Path, config: Path, dtypes: list[str], reps: int, gen_size: int, gen_steps: int, log, device: str = "cpu"
) -> list[dict]:
    rows = []
    warm_page_cache(path)
    for dtype in dtypes:
        results: dict[str, list[dict]] = {"sd_core": [], "diffusers": []}
        for rep in range(reps):
            for engine in ("sd_core", "diffusers") if rep % 2 == 0 else ("diffusers", "sd_core"):
                r = run_child(engine, dtype, path, config, gen_size, gen_steps, device)
                results[engine].append(r)
                log(
                    f"[load {dtype}] {engine:<9} {r['load_s']:6.1f} s, peak RSS {r['peak_load_mb']:7.0f} MiB "
                    f"(weights {r['weights_mb']:.0f} MiB, base {r['base_mb']:.0f})"
                    + f", first {gen_size}px image {r['first_image_s']:.1f} s, peak {r['peak_gen_mb']:.0f} MiB"
                    + (
                        f"; VRAM peak load {r['vram_load_mb']:.0f} MiB, generating {r['vram_gen_mb']:.0f} MiB "
                        f"(reserved {r['vram_gen_reserved_mb']:.0f})"
                        if device != "cpu"
                        else ""
                    )
                )
        row = {"dtype": dtype}
        for name, rs in results.items():
            row[f"{name}_load_s"] = median([r["load_s"] for r in rs])
            row[f"{name}_peak_load_mb"] = max(r["peak_load_mb"] for r in rs)
            row[f"{name}_base_mb"] = min(r["base_mb"] for r in rs)
            row[f"{name}_weights_mb"] = rs[0]["weights_mb"]
            row[f"{name}_dtype"] = rs[0]["dtype"]
            row[f"{name}_peak_gen_mb"] = max(r["peak_gen_mb"] for r in rs)
            row[f"{name}_ready_s"] = median([r["load_s"] + r["first_image_s"] for r in rs])
            for key in ("vram_load_mb", "vram_gen_mb", "vram_gen_reserved_mb"):
                if key in rs[0]:
                    row[f"{name}_{key}"] = max(r[key] for r in rs)
        rows.append(row)
    return rows


# --- levers, one at a time -------------------------------------------------------------------------------------------


def run_levers(path: Path, size: int, reps: int, log) -> list[tuple[str, float, float]]:
    """Each lever as an A/B on one UNet call (CFG batch 2) or one VAE decode at `size`, alternating A and B."""
    import copy

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import sd_core
    from sd_core import accel
    from sd_core.accel import half_storage, heap, packing

    results = []

    def ab(name: str, fa, fb, label_a: str, label_b: str, self_timed: bool = False):
        """Median seconds of fa and fb, alternated; `self_timed`: they time their measured part and return it."""
        with torch.inference_mode():
            fa(), fb()  # warm-up (packed convs pack for this shape)
            ta, tb = [], []
            for _ in range(reps):
                for f, times in ((fa, ta), (fb, tb)):
                    t0 = time.perf_counter()
                    seconds = f()
                    times.append(seconds if self_timed else time.perf_counter() - t0)
        a, b = median(ta), median(tb)
        results.append((name, a, b))
        log(f"[lever] {name:<48} {label_a} {a:6.2f} s   {label_b} {b:6.2f} s   B/A {b / a:.2f}")

    h = size // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, h, h, generator=g)
    t = torch.tensor([500.0, 500.0])
    c = torch.randn(2, 77, 768, generator=g)
    z = torch.randn(1, 4, h, h, generator=g)

    def sdpa(backend, q):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, q, q)

    packed_unets = {}
    for dtype_name in ("fp32", "bf16"):
        dtype = DTYPES[dtype_name]
        xd, cd, zd = x.to(dtype), c.to(dtype), z.to(dtype)
        plain = sd_core.load(path, device="cpu", dtype=dtype, optimize=False, vae_dtype=dtype)
        packed = copy.deepcopy(plain.unet)
        can_pack = packing.pack_for_cpu(packed) > 0
        # no oneDNN bf16 on AVX2-only CPUs: sd_core computes those layers in float32 from the bf16 weights there
        layers = "packed" if can_pack else ("float32-computed" if half_storage.upcast_half_layers(packed) else "plain")
        if can_pack:
            ab(
                f"{dtype_name} UNet {size}px: prepacked + fused epilogues",
                lambda u=plain.unet, xd=xd, cd=cd: u(xd, t, cd),
                lambda u=packed, xd=xd, cd=cd: u(xd, t, cd),
                "plain",
                "packed",
            )
            x1 = xd[:1]  # one image under the two contexts of `cd` (uncond, cond)
            ab(
                f"{dtype_name} UNet {size}px packed: CFG halves share the text-free layers",
                lambda u=packed, x1=x1, cd=cd: u(torch.cat([x1, x1]), t, cd),
                lambda u=packed, x1=x1, cd=cd: u(x1, t[:1], cd),
                "[x; x]",
                "x once",
            )

            def reusing(u=packed, x1=x1, cd=cd):
                with u.reusing_text_projections():
                    u(x1, t[:1], cd)  # the run's first step projects the text
                    t0 = time.perf_counter()
                    u(x1, t[:1], cd)
                    return time.perf_counter() - t0

            def recomputing(u=packed, x1=x1, cd=cd):
                u(x1, t[:1], cd)
                t0 = time.perf_counter()
                u(x1, t[:1], cd)
                return time.perf_counter() - t0

            ab(
                f"{dtype_name} UNet {size}px packed: text K/V projected every step vs once",
                recomputing,
                reusing,
                "each",
                "once",
                self_timed=True,
            )
        else:
            log(f"[lever] {dtype_name}: oneDNN cannot pack {dtype_name} layers on this CPU; packing levers skipped")
        packed_unets[dtype_name] = packed
        if dtype != torch.float32:

            def attention_in(dtype_, u=packed, xd=xd, cd=cd):
                accel.set_attention_dtype(u, dtype_)
                try:
                    return u(xd, t, cd)
                finally:
                    accel.set_attention_dtype(u, None)

            ab(
                f"{dtype_name} UNet {size}px {layers}: attention in {dtype_name} vs float32",
                lambda: attention_in(None),
                lambda: attention_in(torch.float32),
                dtype_name,
                "fp32",
            )
        if can_pack:  # (plain layers of a dtype oneDNN cannot run: PyTorch's slow fallback, which sd_core avoids)
            nhwc = copy.deepcopy(plain.unet).to(memory_format=torch.channels_last)
            xcl = xd.contiguous(memory_format=torch.channels_last)
            ab(
                f"{dtype_name} UNet {size}px: channels_last alone",
                lambda u=plain.unet, xd=xd, cd=cd: u(xd, t, cd),
                lambda u=nhwc, xcl=xcl, cd=cd: u(xcl, t, cd),
                "NCHW",
                "NHWC",
            )
            del nhwc
            packed_vae = copy.deepcopy(plain.vae)
            packing.pack_for_cpu(packed_vae)
            if dtype == torch.float32:  # Winograd is float32-only
                unet_call, vae_call = (lambda u, xd=xd, cd=cd: u(xd, t, cd)), (lambda v, zd=zd: v.decode(zd))
                for what, plain_model, packed_model, call in (
                    ("UNet", plain.unet, packed, unet_call),
                    ("VAE decode", plain.vae, packed_vae, vae_call),
                ):
                    onednn = copy.deepcopy(plain_model)  # (a used packed model holds oneDNN tensors: no deepcopy)
                    packing.pack_for_cpu(onednn)
                    packing.use_winograd(onednn, False)
                    ab(
                        f"{dtype_name} {what} {size}px packed: 3x3 convs oneDNN vs Winograd",
                        lambda m=onednn, call=call: call(m),
                        lambda m=packed_model, call=call: call(m),
                        "oneDNN",
                        "Winograd",
                    )
                    del onednn
                linears = {}
                for blas in (False, True):  # whatever this CPU's default (`packing.blas_linears_pay`), both ways
                    linears[blas] = copy.deepcopy(plain.unet)
                    packing.pack_for_cpu(linears[blas])
                    packing.use_blas_linears(linears[blas], blas)
                ab(
                    f"{dtype_name} UNet {size}px packed: linears oneDNN vs BLAS",
                    lambda m=linears[False], call=unet_call: call(m),
                    lambda m=linears[True], call=unet_call: call(m),
                    "oneDNN",
                    "BLAS",
                )
                del linears

                batch4 = (xd.repeat(4, 1, 1, 1), t.repeat(4), cd.repeat(4, 1, 1))  # batch 4: more to fault in

                def steps(keep, u=packed, args=batch4):
                    with keep():  # a sampling loop's worth of UNet calls, as `pipeline` runs them
                        for _ in range(3):
                            u(*args)

                ab(
                    f"{dtype_name} UNet {size}px b4 packed, 3 calls: heap as glibc keeps it vs kept while sampling",
                    lambda: steps(contextlib.nullcontext),
                    lambda: steps(heap.freed_memory_kept),
                    "glibc",
                    "kept",
                )
            ab(
                f"{dtype_name} VAE decode {size}px: prepacked + fused",
                lambda v=plain.vae, zd=zd: v.decode(zd),
                lambda v=packed_vae, zd=zd: v.decode(zd),
                "plain",
                "packed",
            )
            no_sub_pixel = copy.deepcopy(plain.vae)
            packing.pack_for_cpu(no_sub_pixel)
            for level in no_sub_pixel.decoder.up:
                if hasattr(level, "upsample"):
                    packing.unpack_module(level.upsample.conv)  # a plain conv: upsample, then 3x3 conv
            ab(
                f"{dtype_name} VAE decode {size}px packed: sub-pixel upsampling",
                lambda v=no_sub_pixel, zd=zd: v.decode(zd),
                lambda v=packed_vae, zd=zd: v.decode(zd),
                "plain",
                "sub-px",
            )
            del packed_vae, no_sub_pixel
        if dtype != torch.float32:
            vae32 = copy.deepcopy(plain.vae).float()
            packing.pack_for_cpu(vae32)
            vae_half = copy.deepcopy(plain.vae)
            packing.pack_for_cpu(vae_half)
            half_storage.upcast_half_layers(vae_half)  # where oneDNN could not pack them, as sd_core runs them
            ab(
                f"{dtype_name} pipeline VAE decode {size}px: {dtype_name} vs float32 VAE",
                lambda v=vae_half, zd=zd: v.decode(zd),
                lambda v=vae32, zd=zd: v.decode(zd.float()),
                dtype_name,
                "fp32",
            )
            del vae32, vae_half
        q = torch.randn(2, 8, h * h, 40, generator=g).to(dtype)
        ab(
            f"{dtype_name} attention [2,8,{h * h},40]: SDPA flash vs math",
            lambda q=q: sdpa(SDPBackend.FLASH_ATTENTION, q),
            lambda q=q: sdpa(SDPBackend.MATH, q),
            "flash",
            "math",
        )
        del plain
        gc.collect()
    ab(
        f"UNet {size}px as sd_core runs it: float32 vs bfloat16",
        lambda: packed_unets["fp32"](x, t, c),
        lambda: packed_unets["bf16"](x.bfloat16(), t, c.bfloat16()),
        "fp32",
        "bf16",
    )
    # the 512px UNet's largest attention: does bf16 pay in SDPA's flash kernel? (it does not where its matrix products
    # take a BLAS path without bf16 instructions, as MKL's on AMD processors; docs/performance.md, Zen 4)
    q32 = torch.randn(2, 8, 4096, 40, generator=g)
    q16 = q32.bfloat16()
    ab(
        "attention [2,8,4096,40]: SDPA flash float32 vs bfloat16",
        lambda: sdpa(SDPBackend.FLASH_ATTENTION, q32),
        lambda: sdpa(SDPBackend.FLASH_ATTENTION, q16),
        "fp32",
        "bf16",
    )
    threads = torch.get_num_threads()
    if threads > 1:
        unet = packed_unets["fp32"]

        def with_threads(n):
            torch.set_num_threads(n)
            try:
                return unet(x, t, c)
            finally:
                torch.set_num_threads(threads)

        ab(
            f"fp32 UNet {size}px packed: {threads} threads vs 1",
            lambda: with_threads(threads),
            lambda: with_threads(1),
            f"{threads}t",
            "1t",
        )
    return results


# --- report ----------------------------------------------------------------------------------------------------------


def fmt_s(seconds: float, width: int, digits: int = 1) -> str:
    """Seconds with `digits` decimals, three below one second (GPU steps take milliseconds)."""
    return f"{seconds:{width}.{3 if seconds < 1 else digits}f}"


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:5.2f}" if b and b == b and a == a else "  -  "


def print_report(
    info: dict, gen_rows: list[dict], load_rows: list[dict], levers, peaks: dict, steps: int, log, defaults_row=None
) -> None:
    log("\n" + "=" * 100)
    log(
        f"Machine: {info.get('cpu')} ({info.get('cores')} cores, {info.get('isa')}, {info.get('mem_gib')} GiB), "
        f"torch {info['torch']}, diffusers {info.get('diffusers')}, {info['threads']} threads"
        + (f", GPU {info['gpu']}" if "gpu" in info else "")
    )
    log(
        "Measured peak (best of GEMM, oneDNN linear, oneDNN 3x3 conv) at these threads: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
    )
    log(
        f"Euler, CFG {CFG}, {steps} steps (time per step = between step callbacks), same sigmas, seed {SEED}; "
        "ratio = sd_core / diffusers (< 1: sd_core faster/leaner)"
    )
    log("")
    width = max([8] + [len(r["dtype"]) + 1 for r in gen_rows])
    head = (
        f"{'dtype':<{width}}{'case':<11}{'s/image':>18}{'ratio':>7}{'s/UNet step':>20}{'ratio':>7}"
        f"{'UNet GFLOP/s':>16}{'work MiB':>16}{'ratio':>7}{'|px| eng':>9}{'|px| vs fp32':>14}"
    )
    log(head)
    log("-" * len(head))
    for r in gen_rows:
        dt = r["dtype"] if r["dtype"] != "default" else f"def({r['sd_core_dtype'][:4]}/{r['diffusers_dtype'][:4]})"
        gflops_a = r.get("sd_core_unet_gflop_per_step", r["unet_gflop_per_step"]) / r["sd_core_step_s"]
        gflops_b = r["unet_gflop_per_step"] / r["diffusers_step_s"]
        vs32 = ""
        if "px_diff_sd_core_vs_fp32" in r:
            vs32 = f"{r['px_diff_sd_core_vs_fp32']:.2f}/{r['px_diff_diffusers_vs_fp32']:.2f}"
        a, b = r["sd_core_image_s"], r["diffusers_image_s"]
        sa, sb = r["sd_core_step_s"], r["diffusers_step_s"]
        wa, wb = r["sd_core_work_mb"], r["diffusers_work_mb"]
        log(
            f"{dt:<{width}}{r['size']}x{r['size']} b{r['batch']:<3}{fmt_s(a, 9)}{fmt_s(b, 9)}{fmt_ratio(a, b):>7}"
            f"{fmt_s(sa, 10, 2)}{fmt_s(sb, 10, 2)}{fmt_ratio(sa, sb):>7}{gflops_a:8.0f}{gflops_b:8.0f}"
            f"{wa:8.0f}{wb:8.0f}{fmt_ratio(wa, wb):>7}{r['px_diff_engines']:9.2f}{vs32:>14}"
        )
    log(
        "(work MiB: peak RSS a run adds (CPU); on CUDA the peak VRAM a run allocates above the weights, both engines' "
        "weights being loaded; low_vram rows: sd_core's absolute peak VRAM, weights included, loaded alone)"
    )
    own_choices = (
        ("sd_core_vae_dtype", "VAE runs in {}", "pick_vae_dtype"),
        ("sd_core_attention_dtype", "UNet attention computes in {} (weights and activations stay {})",
         "pick_attention_dtype"),
    )  # fmt: skip
    for field, what, chooser in own_choices:
        differs = {(r["dtype"], r[field]) for r in gen_rows if r.get(field, r["sd_core_dtype"]) != r["sd_core_dtype"]}
        for dtype, own in sorted(differs):  # (CUDA low-VRAM rows have neither field)
            log(
                f"({dtype}: sd_core's {what.format(own, dtype)}, its own choice for this CPU (devices.{chooser}); "
                f"diffusers' in {dtype})"
            )
    work = sorted(
        {(r["size"], r["batch"], r["unet_gflop_per_step"], r.get("sd_core_unet_gflop_per_step")) for r in gen_rows}
    )
    log(
        "(UNet work per CFG step, diffusers / sd_core, which runs the layers before the first cross-attention once "
        "for both halves and projects the text to K/V once per image: "
        + ", ".join(f"{s}px b{b}: {g:.0f} / {o:.0f} GFLOP" for s, b, g, o in work if o)
        + "; 3x3 convolutions counted as direct ones: sd_core's float32 Winograd convolutions on the CPU do a quarter "
        "of their multiply-adds, so its GFLOP/s there is an effective rate)"
    )
    if load_rows:
        log("")
        head = (
            f"{'load dtype':<12}{'load s':>16}{'ratio':>7}{'peak RSS load MiB':>20}{'ratio':>7}"
            f"{'peak/weights':>14}{'(-base)':>9}{'peak RSS gen MiB':>20}{'ratio':>7}"
            f"{'load+1st image s':>20}{'ratio':>7}"
        )
        log(head)
        log("-" * len(head))
        for r in load_rows:
            ratio_w = r["sd_core_peak_load_mb"] / r["sd_core_weights_mb"]
            ratio_wb = (r["sd_core_peak_load_mb"] - r["sd_core_base_mb"]) / r["sd_core_weights_mb"]
            ratio_wd = r["diffusers_peak_load_mb"] / r["diffusers_weights_mb"]
            log(
                f"{r['dtype'] + ' (' + r['sd_core_dtype'][:4] + ')':<12}"
                f"{r['sd_core_load_s']:8.1f}{r['diffusers_load_s']:8.1f}"
                f"{fmt_ratio(r['sd_core_load_s'], r['diffusers_load_s']):>7}"
                f"{r['sd_core_peak_load_mb']:10.0f}{r['diffusers_peak_load_mb']:10.0f}"
                f"{fmt_ratio(r['sd_core_peak_load_mb'], r['diffusers_peak_load_mb']):>7}"
                f"{ratio_w:7.2f}{ratio_wd:7.2f}{ratio_wb:9.2f}"
                f"{r['sd_core_peak_gen_mb']:10.0f}{r['diffusers_peak_gen_mb']:10.0f}"
                f"{fmt_ratio(r['sd_core_peak_gen_mb'], r['diffusers_peak_gen_mb']):>7}"
                f"{r['sd_core_ready_s']:10.1f}{r['diffusers_ready_s']:10.1f}"
                f"{fmt_ratio(r['sd_core_ready_s'], r['diffusers_ready_s']):>7}"
            )
        log(
            "peak/weights: peak RSS during the load / the weights' bytes in the load dtype (sd_core, diffusers); "
            "(-base): sd_core's without the interpreter + torch + diffusers import baseline; load+1st image: the load "
            "and the first 256x256 2-step image of the fresh process (CUDA: 512x512, the timed steps; cold start: on "
            "the CPU sd_core packs its weights for oneDNN during its first call, which the timed runs above never see)"
        )
    vram_rows = [r for r in load_rows if "sd_core_vram_gen_mb" in r]
    if vram_rows:
        log("")
        head = f"{'VRAM MiB':<12}" + "".join(f"{h:>16}{'ratio':>7}" for h in ("peak load", "peak gen", "reserved gen"))
        log(head)
        log("-" * len(head))
        for r in vram_rows:
            cells = ""
            for key in ("vram_load_mb", "vram_gen_mb", "vram_gen_reserved_mb"):
                a, b = r[f"sd_core_{key}"], r[f"diffusers_{key}"]
                cells += f"{a:8.0f}{b:8.0f}{fmt_ratio(a, b):>7}"
            log(f"{r['dtype']:<12}{cells}")
        log(
            "(one engine per fresh process, torch's peak allocated (and reserved) CUDA memory, weights included: "
            "during the single-file load, and during a second image after a first one)"
        )
    if defaults_row:
        r, d = defaults_row, defaults_row["defaults"]
        log(f"\nDefaults vs defaults, {r['size']}x{r['size']} batch 1 (each engine as it comes):")
        for name in ("sd_core", "diffusers"):
            log(f"  {name:<9} {d[name]['dtype']}, {d[name]['sampler']} {d[name]['steps']} steps, CFG {d[name]['cfg']}: "
                f"{r[f'{name}_image_s']:.1f} s per image")  # fmt: skip
        log(
            f"  ratio sd_core / diffusers {r['sd_core_image_s'] / r['diffusers_image_s']:.2f}; mean |pixel difference| "
            f"between the two images {r['px_diff_defaults']:.2f}/255 (another seed: {r['px_diff_other_seed']:.2f}/255)"
        )
    print_levers(levers, log)


def print_levers(levers: list[tuple[str, float, float]], log) -> None:
    if levers:
        log("")
        for name, a, b in levers:
            log(f"lever  {name:<48} {a:7.2f} s -> {b:7.2f} s  ({b / a:.2f}x time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256x256 batch 1, one repetition, fp32 and bf16")
    parser.add_argument("--full", action="store_true", help="256 and 512, batch 1 and 4, in every dtype")
    parser.add_argument(
        "--cases",
        default=None,
        help="comma-separated SIZExBATCHxREPS for every dtype, e.g. 256x1x3,512x4x1 (default: per dtype, "
        "fp32 256x1x2,256x4x1,512x1x1; bf16 256x1x2,512x1x1)",
    )
    parser.add_argument("--dtypes", default=None, help="comma-separated from fp32,bf16,default (CPU) / fp16 (CUDA)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--defaults-size", type=int, default=256, help="image size of the defaults-vs-defaults run (0: skip it)"
    )
    parser.add_argument("--load-reps", type=int, default=1)
    parser.add_argument("--no-load", action="store_true", help="skip the fresh-process load/memory section")
    parser.add_argument("--levers", action="store_true", help="also A/B each speed lever")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write all numbers here")
    parser.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    for name in ("engine", "dtype", "path", "config"):
        parser.add_argument(f"--child-{name}", help=argparse.SUPPRESS)
    parser.add_argument("--child-gen-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-gen-steps", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return

    def log(msg: str) -> None:
        print(msg, flush=True)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = args.dtypes.split(",") if args.dtypes else (["fp32", "bf16"] if device == "cpu" else ["fp16"])
    from sd_core.accel.half_storage import half_kernels_available

    if device == "cpu" and "bf16" in dtypes and not half_kernels_available(torch.bfloat16):
        # diffusers' bf16 here is PyTorch's generic fallback (a 3x3 conv 366x float32's time on Zen 3): hours per case
        if args.dtypes:
            log("warning: no oneDNN bf16 kernels on this CPU: diffusers' bf16 images will take hours (README)")
        else:
            dtypes.remove("bf16")
            log("bf16 left out: no oneDNN bf16 kernels on this CPU (diffusers' bf16 would take hours; --dtypes bf16)")
    if args.cases:
        given = [tuple(int(v) for v in c.split("x")) for c in args.cases.split(",")]
        cases_for = dict.fromkeys(dtypes + ["default"], given)
    elif args.quick or args.full:
        cases_for = dict.fromkeys(dtypes + ["default"], QUICK_CASES if args.quick else FULL_CASES)
    else:
        cases_for = {d: DEFAULT_CASES.get(d, DEFAULT_CASES["fp32"]) for d in dtypes + ["default"]}
    all_cases = sorted({c[:2] for d in dtypes for c in cases_for[d]})
    path, config = sd15_checkpoint()
    info = machine_info()
    from sd_core.devices import pick_dtype

    default_dtype = {v: k for k, v in DTYPES.items()}[pick_dtype(torch.device(device))]
    info["sd_core_default_dtype"] = default_dtype
    if "default" in dtypes and default_dtype in dtypes:
        dtypes.remove("default")  # sd_core's default is one of the measured dtypes: its rows are the default's
    log(
        f"checkpoint {path} ({path.stat().st_size / 2**20:.0f} MiB, float32); machine {info}; "
        f"load average {load_average()}"
    )

    from sd_core.accel.flops import unet_flops
    from sd_core.checkpoint import read_shapes
    from sd_core.model_config import infer_config

    unet_cfg = infer_config(read_shapes(path)).unet
    text_once = device == "cpu"  # sd_core's text K/V memo; under CUDA graphs every replay projects the text
    flops = {(s, b): unet_flops(unet_cfg, 2 * b, s, s) for s, b in all_cases}  # diffusers' CFG call: [x; x]
    flops.update(
        {
            (s, b, "sd_core"): unet_flops(unet_cfg, 2 * b, s, s, contexts_per_row=2, text_once=text_once)
            for s, b in all_cases
        }
    )
    peaks = {d: measured_peak_gflops(DTYPES[d], device) for d in ("fp32", "bf16" if device == "cpu" else "fp16")}

    failed: list[str] = []

    def section(name: str, fn, default):
        """One part of the benchmark; a failure is printed and the other parts still run (a GPU lease is short)."""
        try:
            return fn()
        except Exception:
            log(f"\n[{name}] FAILED:\n{traceback.format_exc()}")
            failed.append(name)
            return default

    load_rows = []
    if not args.no_load and device == "cpu":
        load_dtypes = [d for d in dtypes if d in ("fp32", "bf16", "default")]
        load_rows = section("load", lambda: run_loads(path, config, load_dtypes, args.load_reps, 256, 2, log), [])
    elif not args.no_load:  # CUDA: load time and peak VRAM of each engine alone, 512x512 at the timed steps
        load_dtypes = [d for d in dtypes if d == "fp16"]
        load_rows = section(
            "load", lambda: run_loads(path, config, load_dtypes, args.load_reps, 512, args.steps, log, device), []
        )

    gen_rows: list[dict] = []
    references: dict = {}
    order = sorted(dtypes, key=lambda d: d != "fp32")  # float32 first: its images are the quality reference
    for dtype in order:
        gen_rows += section(
            f"generation {dtype}",
            lambda dtype=dtype: run_generation(
                path,
                config,
                None if dtype == "default" else dtype,
                cases_for[dtype],
                args.steps,
                device,
                flops,
                references,
                log,
            ),  # fmt: skip
            [],
        )
    cuda_levers: list[tuple[str, float, float]] = []
    if device == "cuda":
        extra_rows, cuda_levers = section(
            "cuda extras", lambda: run_cuda_extras(path, args.steps, flops, log), ([], [])
        )
        gen_rows += extra_rows

    defaults_row = None
    if args.defaults_size:
        defaults_row = section("defaults", lambda: run_defaults(path, config, args.defaults_size, device, log), None)
    results = {
        "machine": info,
        "generation": gen_rows,
        "load": load_rows,
        "levers": cuda_levers,
        "defaults": defaults_row,
        "gemm_peak_gflops": peaks,
    }
    # the comparison is printed and saved before the levers run: a lever failing on some CPU loses nothing
    print_report(info, gen_rows, load_rows, cuda_levers, peaks, args.steps, log, defaults_row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.levers and device == "cpu":
        results["levers"] = run_levers(path, 256, 3, log)
        print_levers(results["levers"], log)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    log(f"load average at the end: {load_average()}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


def run_cuda_extras(path: Path, steps: int, flops: dict, log) -> tuple[list[dict], list[tuple[str, float, float]]]:
    """GPU only: CUDA graphs on/off in sd_core (A/B, alternating), and the low-VRAM modes at 512x512 fp16 (peak VRAM
    must stay under 3 GB), each loaded alone."""
    rows, levers = [], []
    gc.collect()
    torch.cuda.empty_cache()
    log(f"\n[cuda] allocated before the extras (engines above closed): {torch.cuda.memory_allocated() / 2**20:.0f} MiB")
    engine = SdCore(path, torch.float16, "cuda")
    for batch in (1, 4):
        times: dict[bool, list[dict]] = {True: [], False: []}
        for rep in range(3):
            for graphs in (True, False) if rep % 2 == 0 else (False, True):
                engine.pipe.accel.cuda_graphs = graphs
                if rep == 0:
                    timed_run(engine, 512, batch, 2, "cuda")  # warm-up at this setting
                times[graphs].append(timed_run(engine, 512, batch, steps, "cuda"))
        for what in ("step", "seconds"):
            eager, graphed = (median([r[what] for r in times[g]]) for g in (False, True))
            levers.append((f"CUDA graphs, 512x512 b{batch} fp16, {'UNet step' if what == 'step' else 'image'}",
                           eager, graphed))  # fmt: skip
    engine.close()
    del engine
    for mode in (True, "sequential"):
        gc.collect()
        torch.cuda.empty_cache()
        left = torch.cuda.memory_allocated()  # whatever the engines above still hold is not this engine's
        engine = SdCore(path, torch.float16, "cuda", low_vram=mode)
        timed_run(engine, 512, 1, 2, "cuda")
        r = timed_run(engine, 512, 1, steps, "cuda")  # resets the peak statistics itself
        peak = (torch.cuda.max_memory_allocated() - left) / 2**20
        log(
            f"[cuda low_vram={mode}] 512x512 b1: {r['seconds']:.2f} s, {1 / r['step']:.2f} it/s, "
            f"peak VRAM {peak:.0f} MiB allocated (weights included), "
            f"{(torch.cuda.max_memory_reserved() - left) / 2**20:.0f} reserved"
        )
        rows.append(
            {
                "dtype": f"fp16 low_vram={mode}",
                "size": 512,
                "batch": 1,
                "reps": 1,
                "steps": steps,
                "sd_core_dtype": "float16",
                "diffusers_dtype": "-",
                "sd_core_image_s": r["seconds"],
                "diffusers_image_s": float("nan"),
                "sd_core_step_s": r["step"],
                "diffusers_step_s": float("nan"),
                "sd_core_work_mb": peak,
                "diffusers_work_mb": float("nan"),
                "unet_gflop_per_step": flops.get((512, 1), float("nan")) / 1e9,
                "sd_core_unet_gflop_per_step": flops.get((512, 1, "sd_core"), float("nan")) / 1e9,
                "px_diff_engines": float("nan"),
            }
        )
        engine.close()
        del engine
    return rows, levers


if __name__ == "__main__":
    main()
