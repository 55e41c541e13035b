"""A 4096x4096 seamless texture with the built-in model (the A1111 API issue's acceptance 3): wall time, peak RSS and
the seam ratio, against the same chain without tiling="xy". Each chain runs in a fresh process.

    python benchmarks/seamless_texture_4096.py [--chain hires|sd-upscale] [--size 4096] [--out DIR] [--no-plain]

The built-in model draws at 64 px natively (its CFG scale 3) and, being fully convolutional, repeats its 16 and 32
px patterns at any size, so a 4096 px txt2img would be a fine pattern repeated 128 times. Both chains start from a
512 px first pass (tiling="xy": 16 to 32 periods, the texture's layout):
- `hires` (the default; acceptance 3 as written): one `txt2img` with hires fix, `HiresOptions(scale=size/512,
  upscaler="Lanczos", strength=0.4)` and `tile=TileOptions(512, 512, overlap=128)`: the wrap-aware Lanczos
  enlargement to the full size, then the second pass at strength 0.4 in 512 px tiles wrapping around the torus.
- `sd-upscale`: like a hires fix done three times, SD upscale to 1024, 2048 and 4096 (`sd_core.sd_upscale`: a
  wrap-aware Lanczos x2, then img2img of the whole image at strength 0.4 in the same tiles), each pass redrawing
  the edges the enlargement blurred.

The seam ratio is `evaluate.wrap_ratio` (the wrap edge's steps over same-phase interior steps, both axes), the
built-in model's seam measure: about 1 for a texture that wraps, over many images; on one image a row of pattern
edges that happens to lie along the wrap edge raises it, so the local seam ratio (the wrap edge's step over the steps
of the 16 rows or columns on either side, per axis) is reported too: a seam is a spike.

Writes <out>/texture.png (the full image), texture_thumb.png (512 px), texture_seam.png (512 px around the corner
where four copies of the texture meet when it is tiled 2x2, at full resolution), the same as plain*.png for the
comparison run, and result.json. Results: benchmarks/results/seamless-texture-4096.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
import numpy as np
from PIL import Image
import sd_core
from sd_core import TileOptions, sd_upscale
from sd_core.training import evaluate

def local_seam_ratio(arr, axis, reach=16):
    # the wrap edge's step over the mean step of the `reach` rows/columns on each side: a seam is a lone spike; a
    # band of pattern edges that happens to lie along the wrap edge (which raises wrap_ratio) is not
    arr = (arr if axis == "x" else arr.transpose(1, 0, 2)).astype(np.float32)
    steps = np.abs(np.roll(arr, -1, axis=1) - arr).mean(axis=(0, 2))
    return float(steps[-1] / np.concatenate([steps[-1 - reach : -1], steps[:reach]]).mean())


size, tiling, out, prompt, seed = int(sys.argv[1]), sys.argv[2] or None, Path(sys.argv[3]), sys.argv[4], sys.argv[5]
seed, chain = int(seed), sys.argv[6]
out.mkdir(parents=True, exist_ok=True)
pipe = sd_core.load(None, device="cpu")
tile = TileOptions(512, 512, overlap=128)
passes, t0, load = [], time.perf_counter(), os.getloadavg()[0]
if chain == "hires":
    hires = sd_core.HiresOptions(scale=size / 512, upscaler="Lanczos", strength=0.4)
    phases = {}
    def timing(info):  # the last step's time of each phase: the second pass's figure includes the enlargement
        phases[info.phase] = time.perf_counter()
    img = pipe.txt2img(prompt, width=512, height=512, steps=20, seed=seed, tiling=tiling, hires=hires, tile=tile,
                       callback=timing)[0]
    passes.append({"size": 512, "seconds": round(phases[1] - t0, 1)})
    passes.append({"size": size, "seconds": round(time.perf_counter() - phases[1], 1)})
else:
    img = pipe.txt2img(prompt, width=512, height=512, steps=20, seed=seed, tiling=tiling)[0]
    passes.append({"size": 512, "seconds": round(time.perf_counter() - t0, 1)})
while img.width < size:
    t = time.perf_counter()
    big = sd_upscale.upscale(img, 2, "Lanczos", seamless=tiling)
    img = pipe.img2img(big, prompt, strength=0.4, steps=20, seed=seed, tiling=tiling, tile=tile)[0]
    passes.append({"size": img.width, "seconds": round(time.perf_counter() - t, 1)})
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
name = "texture" if tiling else "plain"
img.save(out / f"{name}.png", pnginfo=None)
img.resize((512, 512), Image.Resampling.LANCZOS).save(out / f"{name}_thumb.png")
arr = np.asarray(img)
Image.fromarray(np.roll(arr, (256, 256), axis=(0, 1))[:512, :512]).save(out / f"{name}_seam.png")
print(json.dumps({"chain": chain, "tiling": tiling, "size": img.size, "seconds": round(seconds, 1),
                  "peak_rss_mb": round(peak),
                  "passes": passes, "wrap_ratio": round(evaluate.wrap_ratio([arr]), 3),
                  "wrap_ratio_x": round(evaluate.wrap_ratio([arr], "x"), 3),
                  "wrap_ratio_y": round(evaluate.wrap_ratio([arr], "y"), 3),
                  "local_seam_ratio": [round(local_seam_ratio(arr, axis), 3) for axis in "xy"],
                  "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)], "cpus": os.cpu_count(),
                  "parameters": img.info["parameters"]}))
"""


def run(size: int, tiling: str, out: Path, prompt: str, seed: int, chain: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(size), tiling, str(out), prompt, str(seed), chain],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="the texture's side: 512 times a power of 2")
    parser.add_argument("--out", type=Path, default=Path("/tmp/seamless_4096"))
    parser.add_argument("--prompt", default="large black and white checkerboard")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chain", choices=("hires", "sd-upscale"), default="hires", help="how the size is reached")
    parser.add_argument("--no-plain", action="store_true", help="skip the comparison run without tiling='xy'")
    args = parser.parse_args()
    results = [run(args.size, "xy", args.out, args.prompt, args.seed, args.chain)]
    if not args.no_plain:
        results.append(run(args.size, "", args.out, args.prompt, args.seed, args.chain))
    (args.out / "result.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
