"""Issue 35's LoRA demonstration: the built-in texture model has never seen diagonal stripes; a LoRA trained by
`sd-core train --lora` on a handful of images of them makes it draw them, measured with the project's detectors.

    python benchmarks/lora_pattern_demo.py                       # 8 images, rank 8, 400 steps (about 10 min, 2 cores)
    python benchmarks/lora_pattern_demo.py --json benchmarks/results/lora-pattern-demo.json

Training images: 64 px diagonal stripes of the large scale, 32 px period (`sd_core.training.data`'s "diagonal
stripes", which its PATTERNS leave out; the built-in autoencoder turns the small scale's diagonals into checkerboards,
so no UNet could learn those), one per colour pair, captioned as the built-in model's textures are ("red and white
diagonal stripes").
Measured on the trained captions and on colour pairs the LoRA never saw, over `--seeds` seeds, with and without the
LoRA (`<lora:diagonal:1>`): the share of images `detectors.is_diagonal_stripes` finds diagonal stripes in, and the
share with both asked colours (`detectors.has_colours`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sd_core  # noqa: E402
from sd_core.training import config, data, detectors, train  # noqa: E402

TRAINED = [("red", "white"), ("blue", "yellow"), ("green", "black"), ("purple", "white"),
           ("orange", "blue"), ("yellow", "black"), ("white", "green"), ("black", "red")]  # fmt: skip
UNSEEN = [("blue", "white"), ("red", "yellow"), ("green", "purple"), ("orange", "black")]
PATTERN = "diagonal stripes"


def training_images(folder: Path, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (fg, bg) in enumerate(TRAINED):
        spec = data.TextureSpec(PATTERN, fg, bg, "large")
        Image.fromarray(data.render(spec, 64, rng)).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(data.caption(spec) + "\n", encoding="utf-8")


def measure(pipe, pairs: list[tuple[str, str]], seeds: int, tag: str) -> dict[str, float]:
    stripes, colours = [], []
    for fg, bg in pairs:
        for seed in range(seeds):
            image = pipe.txt2img(f"{fg} and {bg} {PATTERN}{tag}", seed=seed, steps=20, sampler="euler")[0]
            stripes.append(detectors.is_diagonal_stripes(image))
            colours.append(detectors.has_colours(image, (fg, bg)))
    return {"diagonal_stripes": float(np.mean(stripes)), "both_colours": float(np.mean(colours)), "n": len(stripes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/sd_core_bench/lora_demo"))
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    images = args.out / "images"
    training_images(images, seed=0)
    cfg = config.TrainConfig(
        out=str(args.out / "train"), seed=0, size=64, data=str(images), lora=args.rank, lora_text=True,
        unet_steps=args.steps, unet_batch=8, unet_lr=args.lr, warmup=20, save_every=100, log_every=50,
    )  # fmt: skip
    start = time.perf_counter()
    path = train.run(cfg)
    trained_s = time.perf_counter() - start
    lora_dir = args.out / "loras"
    lora_dir.mkdir(exist_ok=True)
    (lora_dir / "diagonal.safetensors").write_bytes(path.read_bytes())
    pipe = sd_core.load(device="cpu", lora_dirs=[lora_dir])
    result = {
        "command": " ".join(sys.argv),
        "lora": {"rank": args.rank, "steps": args.steps, "lr": args.lr, "images": len(TRAINED), "train_s": trained_s},
        "seeds": args.seeds,
        "trained_captions": {
            "base": measure(pipe, TRAINED, args.seeds, ""),
            "lora": measure(pipe, TRAINED, args.seeds, " <lora:diagonal:1>"),
        },
        "unseen_colour_pairs": {
            "base": measure(pipe, UNSEEN, args.seeds, ""),
            "lora": measure(pipe, UNSEEN, args.seeds, " <lora:diagonal:1>"),
        },
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
