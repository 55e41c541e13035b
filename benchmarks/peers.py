"""sd_core against the CPU engines people pick for speed: OpenVINO (through optimum-intel, what FastSD CPU is built on)
and stable-diffusion.cpp, with diffusers alongside, on the same random-weight SD1.5-size single file, in one run.

    python benchmarks/peers.py                             # every engine and precision, 512x512, 4 steps, 2 rounds
    python benchmarks/peers.py --engines sd_core,openvino --precisions fp32 --repeats 1 --steps 2 --size 256
    python benchmarks/peers.py --setup-only                # make the peers' venvs and the IR, run nothing

The peers are never dependencies of sd_core: each gets its own virtual environment, made by this script on first use
(`python -m venv` + pip with pinned versions, PEERS below) in `--venv-dir` (default ~/.cache/sd_core_peers), and
OpenVINO's IR is exported there once, keyed by the weights' sha256: the single file is read by diffusers'
`from_single_file` with the local config folder (offline) and saved as a diffusers folder, which optimum-intel's
Python API exports (`export=True`, float32 weights, no 8-bit compression; minutes and about 8 GB, once).
stable-diffusion.cpp (stable-diffusion-cpp-python, built from source by pip) loads the single file itself. diffusers
(the project's test oracle) runs in this interpreter, as in bench.py.

Each run is one engine at one precision in a fresh process of its own interpreter (`benchmarks/peers_worker.py`):
load (timed; OpenVINO's includes compiling the networks), a 1-step warm-up image, then `--images` timed images:
txt2img, Euler, CFG 7.5, same prompt and seed, batch 1, `--threads` threads in every engine (torch.set_num_threads;
OpenVINO INFERENCE_NUM_THREADS; sd.cpp n_threads; OMP_NUM_THREADS for all). Rounds alternate the order of the runs
(forward, then backward), so background load falls on every engine. Precisions: sd_core and diffusers bf16 and fp32;
OpenVINO its default (no hint: its own INFERENCE_PRECISION_HINT for the CPU, reported) and fp32
(INFERENCE_PRECISION_HINT f32); sd.cpp f16 and f32 (wtype).

Reported per engine and precision (medians over runs): s/step (a sampling step: the UNet on the prompt and on the
empty negative prompt; wall-clock time between consecutive step callbacks, which every engine here offers), its CPU
time (all threads), s/image (text encoding, the steps and the VAE decode; median and range), peak RSS of the whole
process (load and generation), load time, and the ratios sd_core / other engine at the matching precision (low: sd_core
bf16 against diffusers bf16, OpenVINO's default and sd.cpp f16; full: all in float32). diffusers and OpenVINO are given
sd_core's own Euler sigma list (diffusers' EulerDiscreteScheduler, as in bench.py), so their images start from the
same noise and run the same sampler: the mean pixel difference to sd_core's image says they ran the same model.
sd.cpp draws its own noise and uses its own sigma schedule. All numbers go to `--json` (default
benchmarks/results/<cpu>-peers.json).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "peers_worker.py"

# The peers' pins: what works together on Python 3.11 with torch 2.13 (CPU). optimum-intel 2.2.0 is the release that
# works against openvino 2026.4 (an unpinned optimum-intel resolves to an old one that fails against it); it caps
# huggingface-hub below what diffusers 0.42 needs, so this venv has diffusers 0.39. optimum-intel requires
# torchvision, and pip's torchvision wheel does not match the CPU torch (`operator torchvision::nms does not exist`
# when transformers imports it): it is removed after the install (transformers falls back to its PIL processors).
PEERS = {
    "openvino": {
        "pins": [
            "torch==2.13.0",
            "openvino==2026.4.1",
            "optimum-intel[openvino]==2.2.0",
            "diffusers==0.39.0",
        ],
        "remove": ["torchvision"],
    },
    "sdcpp": {"pins": ["stable-diffusion-cpp-python==0.4.7", "numpy", "pillow"], "remove": []},
}

# (engine, precision, class): class pairs the precisions compared in the ratios
CASES = [
    ("sd_core", "bf16", "low"),
    ("sd_core", "fp32", "full"),
    ("diffusers", "bf16", "low"),
    ("diffusers", "fp32", "full"),
    ("openvino", "default", "low"),
    ("openvino", "fp32", "full"),
    ("sdcpp", "f16", "low"),
    ("sdcpp", "f32", "full"),
]
LABELS = {"sd_core": "sd_core", "diffusers": "diffusers", "openvino": "OpenVINO", "sdcpp": "stable-diffusion.cpp"}


# --- pure parts (tests/benchmarks/test_peers_table.py) --------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(LABELS), help=f"comma list of {', '.join(LABELS)}")
    parser.add_argument(
        "--precisions",
        default="bf16,fp32,default,f16,f32",
        help="comma list: sd_core and diffusers bf16/fp32, openvino default/fp32, sdcpp f16/f32; 'low'/'full': a class",
    )
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--images", type=int, default=1, help="timed images per run (after a 1-step warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over every case, alternating the order")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None, help="SD1.5 single file (default: the random one)")
    parser.add_argument("--config", type=Path, default=None, help="its diffusers config folder (with --model)")
    parser.add_argument("--venv-dir", type=Path, default=Path.home() / ".cache" / "sd_core_peers")
    parser.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/<cpu>-peers.json")
    parser.add_argument(
        "--lock", type=Path, default=None, help="hold an exclusive flock on this file during each run and the export"
    )
    parser.add_argument("--table", type=Path, default=None, help="print the table of a results file, run nothing")
    parser.add_argument("--setup-only", action="store_true", help="make the venvs and the IR, then stop")
    args = parser.parse_args(argv)
    args.engines = [e for e in args.engines.split(",") if e]
    unknown = set(args.engines) - set(LABELS)
    if unknown:
        parser.error(f"unknown engine(s) {sorted(unknown)}; known: {sorted(LABELS)}")
    wanted = {p for p in args.precisions.split(",") if p}
    args.cases = [c for c in CASES if c[0] in args.engines and (c[1] in wanted or c[2] in wanted)]
    if not args.cases:
        parser.error("no engine and precision left to run")
    if (args.model is None) != (args.config is None):
        parser.error("--model and --config go together")
    return args


def run_order(cases: list, repeats: int) -> list:
    """Every case once per round, forward in even rounds and backward in odd ones."""
    return [c for r in range(repeats) for c in (cases if r % 2 == 0 else cases[::-1])]


def summarize(runs: list[dict]) -> dict:
    """One case's runs (worker JSON) -> medians; s/image also as its range over every timed image."""
    images = [i for r in runs for i in r["images"]]
    per_run_step = [statistics.median(s["step_s"] for s in r["steps"]) for r in runs if r["steps"]]
    per_run_cpu = [statistics.median(s["cpu_step_s"] for s in r["steps"]) for r in runs if r["steps"]]
    nan = float("nan")
    return {
        "runs": len(runs),
        "step_s": statistics.median(per_run_step) if per_run_step else nan,
        "cpu_step_s": statistics.median(per_run_cpu) if per_run_cpu else nan,
        "image_s": statistics.median(i["image_s"] for i in images),
        "image_s_min": min(i["image_s"] for i in images),
        "image_s_max": max(i["image_s"] for i in images),
        "cpu_image_s": statistics.median(i["cpu_image_s"] for i in images),
        "peak_mb": max(r["peak_mb"] for r in runs),
        "load_s": statistics.median(r["load_s"] for r in runs),
        "warmup_s": statistics.median(r["warmup_s"] for r in runs),
        "precision_used": runs[0].get("precision_used"),
    }


def add_ratios(rows: list[dict]) -> None:
    """ratio_<x> on each peer row: sd_core's figure / the peer's, sd_core at the same precision class."""
    ours = {r["class"]: r for r in rows if r["engine"] == "sd_core"}
    for row in rows:
        ref = ours.get(row["class"])
        if row["engine"] == "sd_core" or ref is None:
            continue
        for key in ("step_s", "cpu_step_s", "image_s", "peak_mb", "load_s"):
            row[f"ratio_{key}"] = ref[key] / row[key] if row[key] else float("nan")


def format_table(rows: list[dict]) -> list[str]:
    """The table, one string per line; ratios are sd_core / this engine (below 1: sd_core faster or leaner)."""
    head = (
        f"{'engine, precision':<34}{'s/step':>8}{'CPU s/step':>11}{'s/image':>9}{'(range)':>14}"
        f"{'peak RSS':>10}{'load s':>8}   {'sd_core / this: step, CPU step, image, RSS':<42}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        name = f"{LABELS[r['engine']]} {r['precision']}"
        if r["precision"] == "default":  # say what the engine's own default is on this CPU
            name += f" ({r['precision_used']})"
        span = f"{r['image_s_min']:.1f}-{r['image_s_max']:.1f}"
        ratio = (
            f"{r['ratio_step_s']:.2f}  {r['ratio_cpu_step_s']:.2f}  {r['ratio_image_s']:.2f}  {r['ratio_peak_mb']:.2f}"
            if "ratio_step_s" in r
            else ""
        )
        lines.append(
            f"{name:<34}{r['step_s']:>8.2f}{r['cpu_step_s']:>11.2f}{r['image_s']:>9.1f}{span:>14}"
            f"{r['peak_mb'] / 1024:>7.1f} GiB{r['load_s']:>8.1f}   {ratio}"
        )
    return lines


def cpu_slug(cpuinfo: str) -> str:
    """A short name for the processor, for the results file: epyc-zen5, xeon-amx, ..."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if ":" in line:
            key, value = (s.strip() for s in line.split(":", 1))
            fields.setdefault(key, value)
    name, flags = fields.get("model name", "").lower(), f" {fields.get('flags', '')} "
    family, model = int(fields.get("cpu family", "0") or 0), int(fields.get("model", "0") or 0)
    if "amd" in name:
        zen = {23: "zen1", 25: "zen4" if model >= 0x10 else "zen3", 26: "zen5"}.get(family, f"family{family}")
        return f"{'epyc' if 'epyc' in name else 'amd'}-{zen}"
    if "intel" in name:
        isa = "amx" if " amx_tile " in flags else "avx512" if " avx512f " in flags else "avx2"
        return f"{'xeon' if 'xeon' in name else 'intel'}-{isa}"
    return "cpu"


# --- setup: venvs, the IR ---------------------------------------------------------------------------------------


def venv_python(venv_dir: Path, engine: str, log) -> Path:
    """The engine's interpreter: sd_core and diffusers (its test oracle) run in this one; a peer in its venv, made (or
    remade) when its pins change."""
    if engine not in PEERS:
        return Path(sys.executable)
    spec = PEERS[engine]
    venv = venv_dir / engine
    stamp = venv / "sd_core_peers.json"
    python = venv / "bin" / "python"
    if stamp.exists() and json.loads(stamp.read_text()) == spec and python.exists():
        return python
    log(f"[setup] {engine}: making {venv} with {' '.join(spec['pins'])} (minutes: sd.cpp compiles)")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", *spec["pins"]], check=True)
    if spec["remove"]:
        subprocess.run([*pip, "uninstall", "--yes", "--quiet", *spec["remove"]], check=True)
    stamp.write_text(json.dumps(spec))
    log(f"[setup] {engine}: ready in {time.perf_counter() - t0:.0f} s")
    return python


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def openvino_ir(python: Path, model: Path, config: Path, venv_dir: Path, log) -> Path:
    """The OpenVINO IR of `model`, exported once and kept beside the venvs, keyed by the weights' sha256."""
    key = file_hash(model)[:16]
    ir = venv_dir / f"openvino-ir-{key}"
    if (ir / "unet" / "openvino_model.xml").exists():
        return ir
    import shutil

    folder = venv_dir / f"diffusers-{key}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    log(f"[setup] OpenVINO IR for {model.name} (sha256 {key}...): the single file as a diffusers folder")
    shutil.rmtree(folder, ignore_errors=True)
    cmd = [str(python), str(WORKER), "convert", "--model", str(model), "--config", str(config), "--out", str(folder)]
    subprocess.run(cmd, check=True, env=env)
    log(f"[setup] exporting with optimum-intel (export=True) after {time.perf_counter() - t0:.0f} s")
    partial = ir.with_name(ir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(
        [str(python), str(WORKER), "export", "--folder", str(folder), "--out", str(partial)], check=True, env=env
    )
    partial.rename(ir)
    shutil.rmtree(folder, ignore_errors=True)
    log(f"[setup] IR in {ir} after {time.perf_counter() - t0:.0f} s")
    return ir


# --- the runs ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def held(lock: Path | None):
    """An exclusive flock on `lock` (a machine shared with other memory-heavy jobs), or nothing."""
    if lock is None:
        yield
        return
    import fcntl

    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_case(case, args, pythons: dict, models: dict, sigmas: dict, image: Path) -> dict:
    engine, precision, _ = case
    cmd = [str(pythons[engine]), str(WORKER), "run", "--engine", engine, "--precision", precision]
    cmd += ["--model", str(models[engine]), "--size", str(args.size), "--steps", str(args.steps)]
    cmd += ["--images", str(args.images), "--threads", str(args.threads), "--image", str(image)]
    cmd += ["--sigmas", json.dumps(sigmas), "--config", str(args.config)]
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONWARNINGS": "ignore"}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    if engine in PEERS:
        env.pop("PYTHONPATH")  # a peer's venv sees neither sd_core nor this environment's packages
    with held(args.lock):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} {precision} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.table:
        saved = json.loads(args.table.read_text())
        add_ratios(saved["rows"])
        print("\n".join(format_table(saved["rows"])))
        return
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np
    from bench import euler_sigmas, load_average, machine_info

    def log(msg: str) -> None:
        print(msg, flush=True)

    t_start = time.perf_counter()
    if args.model is None:
        from sd15_checkpoint import sd15_checkpoint

        args.model, args.config = sd15_checkpoint()
    engines = list(dict.fromkeys(c[0] for c in args.cases))
    pythons = {e: venv_python(args.venv_dir, e, log) for e in engines}
    models = {e: args.model for e in engines}
    if "openvino" in engines:
        with held(args.lock):
            models["openvino"] = openvino_ir(pythons["openvino"], args.model, args.config, args.venv_dir, log)
    if args.setup_only:
        log("[setup] done")
        return
    sigmas = {str(n): euler_sigmas(n) for n in (1, args.steps)}
    info = machine_info()
    info["load_average_start"] = load_average(2)
    log(f"machine: {info}")
    log(
        f"model {args.model} ({args.model.stat().st_size / 2**30:.1f} GiB); {args.size}x{args.size}, batch 1, "
        f"{args.steps} Euler steps, CFG 7.5, {args.threads} threads; {args.images} timed image(s) per run, "
        f"{args.repeats} round(s)"
    )
    scratch = Path(tempfile.mkdtemp(prefix="peers-"))
    runs: dict[tuple, list[dict]] = {c: [] for c in args.cases}
    images: dict[tuple, np.ndarray] = {}
    failed: list[str] = []
    for n, case in enumerate(run_order(args.cases, args.repeats)):
        path = scratch / f"{case[0]}-{case[1]}.npy"
        try:
            r = run_case(case, args, pythons, models, sigmas, path)
        except RuntimeError as exc:  # the other runs go on; the case is left out of the table if it never ran
            failed.append(f"{case[0]} {case[1]}: {exc}")
            log(f"run {n + 1:>2} FAILED {exc}")
            continue
        r["load_average"] = load_average(2)
        runs[case].append(r)
        images[case] = np.load(path).astype(np.float32)
        log(
            f"run {n + 1:>2}/{len(args.cases) * args.repeats} {LABELS[case[0]]:>20} {case[1]:<7} "
            f"load {r['load_s']:5.1f} s, warm-up {r['warmup_s']:5.1f} s, "
            f"image {', '.join(format(i['image_s'], '.1f') for i in r['images'])} s, "
            f"step {statistics.median(s['step_s'] for s in r['steps']):.2f} s, "
            f"peak RSS {r['peak_mb'] / 1024:.1f} GiB, load average {r['load_average']}"
        )
    rows = []
    for case in [c for c in args.cases if runs[c]]:
        row = {"engine": case[0], "precision": case[1], "class": case[2], **summarize(runs[case])}
        ours = next((c for c in images if c[0] == "sd_core" and c[2] == case[2]), None)
        if case[0] in ("diffusers", "openvino") and ours is not None:  # same noise and sigmas as sd_core's
            row["px_diff_vs_sd_core"] = float(np.abs(images[case] - images[ours]).mean())
        rows.append(row)
    add_ratios(rows)
    log(
        f"\nSD1.5 size (random weights), {args.size}x{args.size}, batch 1, {args.steps} Euler steps, CFG 7.5, "
        f"{args.threads} threads; medians of {args.repeats} run(s) x {args.images} image(s), each run a fresh process"
    )
    for line in format_table(rows):
        log(line)
    log(
        "s/step: wall-clock time between step callbacks (one step = the UNet on the prompt and on the negative prompt);"
        " CPU s/step: the process's CPU time over the same span, all threads"
    )
    for row in rows:
        if "px_diff_vs_sd_core" in row:
            diff = row["px_diff_vs_sd_core"]
            name = f"{LABELS[row['engine']]} {row['precision']}"
            log(f"mean |pixel difference| {name} vs sd_core (same noise and sigmas): {diff:.2f} / 255")
    end = load_average(2)
    log(f"load average (1/5/15 min): {info['load_average_start']} at the start, {end} at the end")
    if failed:
        log(f"{len(failed)} run(s) failed (above, and in the JSON)")
    log(f"{time.perf_counter() - t_start:.0f} s in all")
    info["load_average_end"] = end
    out = args.json or ROOT / "benchmarks" / "results" / f"{cpu_slug(Path('/proc/cpuinfo').read_text())}-peers.json"
    settings = {k: getattr(args, k) for k in ("size", "steps", "images", "repeats", "threads")}
    raw = {f"{e} {p}": rs for (e, p, _), rs in runs.items()}
    out.write_text(
        json.dumps(
            {"machine": info, "settings": settings, "pins": PEERS, "rows": rows, "runs": raw, "failed": failed},
            indent=1,
        )
    )
    log(f"written {out}")


if __name__ == "__main__":
    main()
