"""Tiled vs whole VAE decode of a large latent (default 2048x2048 pixels) on the SD1.5-size VAE: peak RSS of each
(each in a fresh process) and the difference between the two images.

    python benchmarks/tiled_vae.py [--size 2048] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from sd15_checkpoint import sd15_checkpoint

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
import sd_core
from sd_core import tiling
path, size, dtype, mode, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
vae = sd_core.load(path, device="cpu", dtype=dtype).vae
z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0)).to(dtype)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
with torch.inference_mode():
    img = tiling.decode_with_fallback(vae.decode, z, tile=(mode == "tiled")).float()
seconds = time.perf_counter() - t0
np.save(out, img[0].clamp(-1, 1).numpy())
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "before_mb": base}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    path, _ = sd15_checkpoint()
    rows, images = {}, {}
    print(f"VAE decode {args.size}x{args.size} ({args.dtype}), SD1.5-size random VAE, CPU", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("tiled", "whole"):
            out = Path(tmp) / f"{mode}.npy"
            cmd = [sys.executable, "-c", CHILD, str(path), str(args.size), args.dtype, mode, str(out)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"  {mode:<6} failed: {done.stderr.strip().splitlines()[-1]}", flush=True)
                continue
            row = rows[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            images[mode] = np.load(out)
            print(
                f"  {mode:<6} {row['seconds']:8.1f} s   peak RSS {row['peak_mb']:8.0f} MiB "
                f"(after loading the model: {row['before_mb']:.0f} MiB)",
                flush=True,
            )
    if len(images) == 2:
        diff = np.abs(images["tiled"] - images["whole"])
        print(
            f"  tiled vs whole on [-1, 1]: mean abs {diff.mean():.4f}, max {diff.max():.3f} "
            f"(= {diff.mean() * 127.5:.2f}/255 mean)"
        )
        print(f"  peak RSS ratio tiled / whole: {rows['tiled']['peak_mb'] / rows['whole']['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
