"""One engine in one fresh process, for `benchmarks/peers.py`: load, a 1-step warm-up image, then the timed images;
prints one JSON line. Run by the driver with each engine's own interpreter (sd_core and diffusers: the driver's;
OpenVINO and stable-diffusion.cpp: the virtual environments the driver makes), so this file imports nothing at the top
but the standard library, and each engine's packages only inside its own function.

    python peers_worker.py run --engine sd_core --precision bf16 --model sd15.safetensors --steps 4 --images 1
    python peers_worker.py convert --model sd15.safetensors --config CONFIG --out FOLDER   # OpenVINO venv: diffusers
    python peers_worker.py export --folder FOLDER --out IR_FOLDER                           # OpenVINO venv: the IR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

PROMPT = "a red brick wall covered in ivy, highly detailed"  # bench.py's prompt, seed and CFG scale
SEED = 1234
CFG = 7.5


def vm_mb(field: str) -> float:
    """VmRSS / VmHWM (peak RSS) of this process, MiB: counts what C++ engines allocate too."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


# --- the engines: each returns (generate(steps, on_step) -> HxWx3 uint8-valued array, info) -----------------------


def load_sd_core(args):
    import numpy as np
    import torch

    import sd_core
    from sd_core.devices import pick_dtype

    torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    # keep_freed_memory: the heap kept between steps, as the CLI and bench.py run it
    pipe = sd_core.load(args.model, device="cpu", dtype=dtype, keep_freed_memory=True)

    def generate(steps, on_step):
        images = pipe.txt2img(
            PROMPT,
            width=args.size,
            height=args.size,
            steps=steps,
            sampler="euler",
            cfg_scale=CFG,
            seed=SEED,
            callback=lambda info: on_step(),
        )
        return np.asarray(images[0], dtype=np.uint8)

    vae = next(pipe.vae.parameters()).dtype
    info = {"precision_used": str(pipe.dtype).removeprefix("torch."), "vae": str(vae).removeprefix("torch.")}
    info["default_dtype"] = str(pick_dtype(torch.device("cpu"))).removeprefix("torch.")
    info["per_step"] = "callbacks"
    return generate, info


def _euler_call(pipe, args, sigmas: dict, numpy_out):
    """generate() for a diffusers-style pipeline (diffusers, optimum-intel's OpenVINO one): Euler given sd_core's own
    sigma list (diffusers' EulerDiscreteScheduler runs the same sampler with it, as in bench.py), torch's seeded noise
    (the same as sd_core's), the step callbacks."""
    import torch
    from diffusers import EulerDiscreteScheduler

    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")

    def generate(steps, on_step):
        def callback(_pipe, _i, _t, kwargs):
            on_step()
            return kwargs

        out = pipe(
            PROMPT,
            height=args.size,
            width=args.size,
            guidance_scale=CFG,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="np",
            sigmas=sigmas[str(steps)],
            callback_on_step_end=callback,
        )
        return (out.images[0] * 255).round().astype(numpy_out.uint8)

    return generate


def load_diffusers(args):
    import diffusers
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    pipe = diffusers.StableDiffusionPipeline.from_single_file(
        args.model,
        config=args.config,
        local_files_only=True,
        torch_dtype=dtype,
        safety_checker=None,
        requires_safety_checker=False,
    )
    generate = _euler_call(pipe, args, json.loads(args.sigmas), np)
    info = {"precision_used": str(pipe.unet.dtype).removeprefix("torch."), "per_step": "callbacks"}
    info["versions"] = _versions("diffusers", "torch")
    return generate, info


def load_openvino(args):
    import numpy as np
    import openvino as ov
    import torch
    from optimum.intel import OVStableDiffusionPipeline

    torch.set_num_threads(args.threads)  # the scheduler's few tensor ops; the networks run in OpenVINO
    ov_config = {"INFERENCE_NUM_THREADS": str(args.threads)}
    if args.precision == "fp32":
        ov_config["INFERENCE_PRECISION_HINT"] = "f32"
    pipe = OVStableDiffusionPipeline.from_pretrained(args.model, ov_config=ov_config, device="CPU", compile=True)
    generate = _euler_call(pipe, args, json.loads(args.sigmas), np)

    core = ov.Core()
    info = {"default_dtype": _ov_str(core.get_property("CPU", "INFERENCE_PRECISION_HINT"))}
    try:  # what the compiled UNet runs in
        compiled = pipe.unet.request.get_compiled_model() if hasattr(pipe.unet.request, "get_compiled_model") else None
        compiled = compiled or pipe.unet.request
        info["precision_used"] = _ov_str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        info["threads_used"] = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    except Exception as exc:  # noqa: BLE001  (report, don't fail the run)
        info["precision_used"] = f"? ({type(exc).__name__}: {exc})"
    info["versions"] = {"openvino": ov.__version__, **_versions("optimum-intel", "diffusers", "torch")}
    info["per_step"] = "callbacks"
    return generate, info


def _ov_str(value) -> str:
    """An OpenVINO element type as its short name (bf16, f32)."""
    return value.to_string() if hasattr(value, "to_string") else str(value)


def load_sdcpp(args):
    import numpy as np
    from stable_diffusion_cpp import StableDiffusion

    wtype = {"f16": "f16", "f32": "f32"}[args.precision]
    sd = StableDiffusion(model_path=args.model, n_threads=args.threads, wtype=wtype, verbose=False)

    def generate(steps, on_step):
        seen: set[int] = set()

        def progress(step, total, _seconds):  # sampling: step 0 at its start, then 1..total at each end
            if total == steps and step >= 1 and step not in seen:
                seen.add(step)
                on_step()

        images = sd.generate_image(
            prompt=PROMPT,
            cfg_scale=CFG,
            width=args.size,
            height=args.size,
            sample_method="euler",
            sample_steps=steps,
            seed=SEED,
            progress_callback=progress,
        )
        return np.asarray(images[0].convert("RGB"), dtype=np.uint8)

    info = {"precision_used": wtype, "per_step": "callbacks", **{"versions": _versions("stable-diffusion-cpp-python")}}
    return generate, info


def _versions(*names: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


LOADERS = {"sd_core": load_sd_core, "diffusers": load_diffusers, "openvino": load_openvino, "sdcpp": load_sdcpp}


def run(args) -> None:
    import numpy as np

    out: dict = {"engine": args.engine, "precision": args.precision, "base_mb": vm_mb("VmRSS")}
    t0, c0 = time.perf_counter(), time.process_time()
    generate, info = LOADERS[args.engine](args)
    out.update(info, load_s=time.perf_counter() - t0, cpu_load_s=time.process_time() - c0, load_peak_mb=vm_mb("VmHWM"))
    t0 = time.perf_counter()
    generate(1, lambda: None)  # warm-up: sd_core packs its weights for the shape, OpenVINO sets up its kernels
    out["warmup_s"] = time.perf_counter() - t0
    images, steps = [], []
    for _ in range(args.images):
        marks: list[tuple[float, float]] = []
        t0, c0 = time.perf_counter(), time.process_time()
        image = generate(args.steps, lambda marks=marks: marks.append((time.perf_counter(), time.process_time())))
        t1, c1 = time.perf_counter(), time.process_time()
        if len(marks) != args.steps:
            raise RuntimeError(f"{args.engine}: {len(marks)} step callbacks for {args.steps} steps")
        # per step: between consecutive callbacks (the first step's callback ends step 1, so steps-1 intervals)
        steps += [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:], strict=False)]
        images.append({"image_s": t1 - t0, "cpu_image_s": c1 - c0})
    out["images"] = images
    out["steps"] = [{"step_s": w, "cpu_step_s": c} for w, c in steps]
    out["peak_mb"] = vm_mb("VmHWM")
    if args.image:
        np.save(args.image, image)
    print(json.dumps(out), flush=True)


def convert(args) -> None:
    """The single file as a diffusers folder (OpenVINO's exporter reads folders): diffusers' own single-file
    loader with the local config folder, offline, float32."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(
        args.model,
        config=args.config,
        local_files_only=True,
        torch_dtype=torch.float32,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(args.out, safe_serialization=True)


def export(args) -> None:
    """The diffusers folder as OpenVINO IR, with optimum-intel's Python API (export=True), weights kept as they are
    (no 8-bit weight compression)."""
    from optimum.intel import OVStableDiffusionPipeline

    pipe = OVStableDiffusionPipeline.from_pretrained(args.folder, export=True, compile=False, load_in_8bit=False)
    pipe.save_pretrained(args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run")
    r.add_argument("--engine", choices=sorted(LOADERS), required=True)
    r.add_argument("--precision", required=True)
    r.add_argument("--model", required=True, help="single file (sd_core, diffusers, sd.cpp) or OpenVINO IR folder")
    r.add_argument("--size", type=int, default=512)
    r.add_argument("--steps", type=int, default=4)
    r.add_argument("--images", type=int, default=1)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--config", default=None, help="diffusers: the single file's config folder")
    r.add_argument("--sigmas", default="{}", help="JSON {steps: sd_core's Euler sigmas}, for diffusers' scheduler")
    r.add_argument("--image", default=None, help="save the last image here (.npy)")
    c = sub.add_parser("convert")
    c.add_argument("--model", required=True)
    c.add_argument("--config", required=True)
    c.add_argument("--out", required=True)
    e = sub.add_parser("export")
    e.add_argument("--folder", required=True)
    e.add_argument("--out", required=True)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    {"run": run, "convert": convert, "export": export}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
