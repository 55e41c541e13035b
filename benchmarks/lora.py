"""LoRA cost on the SD1.5-size model (random weights, `sd15_checkpoint.py`): applying and removing a LoRA, and the
per-step time with one applied against the bare model (acceptance 3 of issue 35: under 1 s, at most 5% per step).

    python benchmarks/lora.py                 # rank 32 over every attention and feed-forward layer + text encoder
    python benchmarks/lora.py --locon         # also the ResBlocks' 3x3 convs (LoCon)
    python benchmarks/lora.py --json out.json

The LoRA is written in kohya's format (float16, as trainers save them) with the layer names sd_core's index gives
for the model, so it patches what a real style LoRA patches. Timed, after one generation (as in a running server, the
weights packed): `ExtraNetworks.activate` with the LoRA (first: reading and matching the file too; then from the read
file), and with none (restore); medians of `--repeats`.
Per step: txt2img at `--size` with Euler, bare and with the LoRA alternately, the median of the UNet steps after the
first of each run (the first step after a change repacks the changed layers' weights, as the first run after loading
does; reported on its own). Every figure is given as wall time and as this process's CPU time: on a machine shared
with other work the wall times carry the others' load, the CPU times much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from sd15_checkpoint import sd15_checkpoint  # noqa: E402

import sd_core  # noqa: E402
from sd_core.checkpoint import write_safetensors  # noqa: E402
from sd_core.settings import GenerationSettings  # noqa: E402

ATTENTION = ("to_q", "to_k", "to_v", "to_out_0", "proj_in", "proj_out", "ff_net_0_proj", "ff_net_2")
TEXT = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
CONVS = ("conv1", "conv2")


def write_lora(pipe, path: Path, rank: int, locon: bool) -> int:
    """A random kohya LoRA for this model; returns the number of layers."""
    g = torch.Generator().manual_seed(0)
    endings = ATTENTION + TEXT + (CONVS if locon else ())
    tensors = {}
    for name, (_component, _path, shape) in pipe.extra_networks.index.kohya_names().items():
        if not name.endswith(endings) or name.startswith("lora_te_encoder"):
            continue
        down = torch.randn(rank, *shape[1:], generator=g) * 0.01
        up = torch.randn(shape[0], rank, *([1, 1] if len(shape) == 4 else []), generator=g) * 0.01
        tensors[f"{name}.lora_down.weight"] = down.half()
        tensors[f"{name}.lora_up.weight"] = up.half()
        tensors[f"{name}.alpha"] = torch.tensor(rank / 2, dtype=torch.float16)
    write_safetensors(path, tensors)
    return len(tensors) // 3


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of `fn()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def step_times(pipe, prompt: str, size: int, steps: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each step after the first."""
    marks = []
    pipe.txt2img(prompt, width=size, height=size, steps=steps, sampler="euler", seed=1,
                 callback=lambda info: marks.append((time.perf_counter(), time.process_time())))  # fmt: skip
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:], strict=False)]


def medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--locon", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="generations per arm for the per-step time")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    single, _config = sd15_checkpoint()
    folder = Path("/tmp/sd_core_bench/loras")
    folder.mkdir(parents=True, exist_ok=True)
    pipe = sd_core.load(single, device="cpu", dtype=torch.float32, lora_dirs=[folder])
    lora = folder / f"bench-r{args.rank}{'-locon' if args.locon else ''}.safetensors"
    layers = write_lora(pipe, lora, args.rank, args.locon)
    with_lora, bare = GenerationSettings(prompt=f"<lora:{lora.stem}:0.8>"), GenerationSettings()
    # as in a running server: one generation has packed the weights (anonymous memory, not the file's pages, which
    # other processes' memory use can push out of the page cache)
    step_times(pipe, "a wall", args.size, 2)

    first_apply = timed(lambda: pipe.extra_networks.activate(with_lora))  # reads and matches the file
    first_remove = timed(lambda: pipe.extra_networks.activate(bare))
    applies, removes = [], []
    for _ in range(args.repeats):
        applies.append(timed(lambda: pipe.extra_networks.activate(with_lora)))
        removes.append(timed(lambda: pipe.extra_networks.activate(bare)))

    steps: dict[str, list] = {"bare": [], "lora": []}
    first: dict[str, list] = {"bare": [], "lora": []}
    for _ in range(args.runs):
        for arm, prompt in (("bare", "a wall"), ("lora", f"a wall <lora:{lora.stem}:0.8>")):
            times = step_times(pipe, prompt, args.size, args.steps)
            first[arm].append(times[0])
            steps[arm] += times[1:]
    bare_step, lora_step = medians(steps["bare"]), medians(steps["lora"])

    def pair(values: tuple[float, float]) -> dict[str, float]:
        return {"wall": round(values[0], 3), "cpu": round(values[1], 3)}

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "load_average": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "lora": {"rank": args.rank, "layers": layers, "locon": args.locon, "bytes": lora.stat().st_size},
        "apply_first_s": pair(first_apply),
        "remove_first_s": pair(first_remove),
        "apply_median_s": pair(medians(applies)),
        "remove_median_s": pair(medians(removes)),
        "size": args.size,
        "step_bare_s": pair(bare_step),
        "step_lora_s": pair(lora_step),
        "step_overhead": {
            "wall": round(lora_step[0] / bare_step[0] - 1, 4),
            "cpu": round(lora_step[1] / bare_step[1] - 1, 4),
        },
        "first_step_bare_s": pair(medians(first["bare"])),
        "first_step_lora_s": pair(medians(first["lora"])),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
