"""Peak RSS and time while loading the SD1.5-size checkpoint: sd_core.load vs diffusers' from_single_file.

Each load runs in a fresh process; peak RSS is the process's high-water mark (ru_maxrss), which includes the
interpreter and torch; it is reported next to the file size. Also reports RSS after one UNet step, when every
weight has been touched.

    python benchmarks/load_memory.py [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from sd15_checkpoint import sd15_checkpoint

CHILD = r"""
import json, resource, sys, time
import torch
path, config, loader, dtype = sys.argv[1:5]
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def current_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
import sd_core, diffusers  # import both in every child so the baselines match
base = current_mb()
t0 = time.perf_counter()
if loader == "sd_core":
    pipe = sd_core.load(path, device="cpu", dtype=dtype)
    unet = lambda x, t, c: pipe.unet(x, t, c)
else:
    pipe = diffusers.StableDiffusionPipeline.from_single_file(path, config=config, local_files_only=True,
                                                              torch_dtype=dtype)
    unet = lambda x, t, c: pipe.unet(x, t, encoder_hidden_states=c).sample
load_s = time.perf_counter() - t0
peak_load = rss_mb()
with torch.inference_mode():
    x, c = torch.randn(1, 4, 32, 32, dtype=dtype), torch.randn(1, 77, 768, dtype=dtype)
    unet(x, torch.tensor([500.0]), c)
print(json.dumps({"base_mb": base, "load_s": load_s, "peak_load_mb": peak_load, "peak_after_step_mb": rss_mb()}))
"""


def measure(loader: str, path: Path, config: Path, dtype: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(config), loader, dtype], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    path, config = sd15_checkpoint()
    size_mb = path.stat().st_size / 2**20
    print(f"checkpoint: {path} ({size_mb:.0f} MiB, fp32), load dtype {args.dtype}")
    rows = {name: measure(name, path, config, args.dtype) for name in ("sd_core", "diffusers")}
    print(f"{'':<22}{'sd_core':>12}{'diffusers':>12}{'ratio':>8}")
    for key, label in [
        ("load_s", "load time (s)"),
        ("peak_load_mb", "peak RSS load (MiB)"),
        ("peak_after_step_mb", "peak RSS +1 step"),
    ]:
        a, b = rows["sd_core"][key], rows["diffusers"][key]
        print(f"{label:<22}{a:>12.1f}{b:>12.1f}{a / b:>8.2f}")
    for name, row in rows.items():
        print(
            f"{name}: peak RSS during load / file size = {row['peak_load_mb'] / size_mb:.2f} "
            f"(interpreter+torch baseline {row['base_mb']:.0f} MiB included)"
        )


if __name__ == "__main__":
    main()
