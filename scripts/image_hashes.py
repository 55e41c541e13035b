"""SHA-256 of the images a fixed set of generations makes, for before/after tables when the engine is refactored.

Run from the repository root with the test extras installed (the tiny checkpoints are written from the test
fixtures):

    python scripts/image_hashes.py --out before.json      # on the old code
    python scripts/image_hashes.py --compare before.json  # on the new code: one row per case, same or DIFFERENT

Each case hashes the decoded RGB bytes of every image and the A1111 `parameters` text, separately, so a change of
pixels is told apart from a change of infotext. Only the public API is used (`sd_core.load`, the four modes), so
the script runs unchanged on both sides of a refactor.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))


def _checkpoints(tmp: Path) -> dict[str, Path | None]:
    from model_fixtures import write_tiny_checkpoint

    return {
        "builtin": None,
        "sd1": write_tiny_checkpoint(tmp / "sd1.safetensors", seed=3),
        "sd2": write_tiny_checkpoint(tmp / "sd2.safetensors", seed=4, sd2=True),
        "sd1-inpaint": write_tiny_checkpoint(tmp / "sd1-inpaint.safetensors", seed=5, inpainting=True),
    }


def _test_image(size: int = 64) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x * 4 % 256, y * 4 % 256, (x + y) * 2 % 256], -1).astype(np.uint8)
    return Image.fromarray(rgb)


def _test_mask(size: int = 64) -> Image.Image:
    m = np.zeros((size, size), np.uint8)
    m[16:40, 20:48] = 255
    return Image.fromarray(m)


# (name, model, load options, mode, arguments)
CASES: list[tuple[str, str, dict, str, dict]] = [
    (
        "builtin txt2img euler",
        "builtin",
        {},
        "txt2img",
        dict(prompt="red and white stripes", steps=6, seed=1, width=128, height=128),
    ),
    (
        "builtin txt2img tiling xy, cfg 3",
        "builtin",
        {},
        "txt2img",
        dict(prompt="blue dots", steps=6, seed=2, tiling="xy", cfg_scale=3.0, width=64, height=64),
    ),
    (
        "builtin txt2img levers off",
        "builtin",
        {"optimize": False},
        "txt2img",
        dict(prompt="red and white stripes", steps=6, seed=1, width=128, height=128),
    ),
    (
        "sd1 txt2img Euler a batch 2",
        "sd1",
        {},
        "txt2img",
        dict(
            prompt="a (cat:1.2)",
            negative_prompt="dog",
            width=64,
            height=64,
            steps=5,
            seed=7,
            sampler="Euler a",
            batch_size=2,
        ),
    ),
    (
        "sd1 txt2img DPM++ 2M Karras levers off",
        "sd1",
        {"optimize": False},
        "txt2img",
        dict(prompt="a cat", width=64, height=64, steps=5, seed=7, sampler="DPM++ 2M Karras"),
    ),
    (
        "sd1 txt2img DPM++ 2M Karras levers on",
        "sd1",
        {},
        "txt2img",
        dict(prompt="a cat", width=64, height=64, steps=5, seed=7, sampler="DPM++ 2M Karras"),
    ),
    (
        "sd1 txt2img DDIM clip skip 2 cfg 5",
        "sd1",
        {},
        "txt2img",
        dict(prompt="a house", width=64, height=72, steps=4, seed=9, sampler="ddim", clip_skip=2, cfg_scale=5.0),
    ),
    (
        "sd1 txt2img DPM++ SDE bf16",
        "sd1",
        {"dtype": "bf16"},
        "txt2img",
        dict(prompt="a tree", width=64, height=64, steps=4, seed=11, sampler="DPM++ SDE"),
    ),
    (
        "sd1 img2img 0.6 tiling x",
        "sd1",
        {},
        "img2img",
        dict(prompt="oil painting", strength=0.6, steps=5, seed=12, tiling="x"),
    ),
    (
        "sd1 inpaint only masked latent noise",
        "sd1",
        {},
        "inpaint",
        dict(
            prompt="a window", steps=5, seed=13, only_masked=True, padding=8, fill="latent_noise", width=64, height=64
        ),
    ),
    (
        "sd1 inpaint whole fill color match",
        "sd1",
        {},
        "inpaint",
        dict(prompt="a door", steps=5, seed=14, fill="fill", color_match=True, mask_blur=2),
    ),
    ("sd1 outpaint right 32", "sd1", {}, "outpaint", dict(prompt="more sky", steps=4, seed=15, right=32)),
    (
        "sd2 txt2img heun karras v-probe",
        "sd2",
        {},
        "txt2img",
        dict(prompt="a dog", width=64, height=64, steps=3, seed=16, sampler="heun", schedule="karras"),
    ),
    (
        "sd2 txt2img UniPC levers off",
        "sd2",
        {"optimize": False},
        "txt2img",
        dict(prompt="a dog", width=64, height=64, steps=4, seed=17, sampler="UniPC"),
    ),
    (
        "sd1-inpaint inpaint strength 1",
        "sd1-inpaint",
        {},
        "inpaint",
        dict(prompt="a lamp", steps=4, seed=18),
    ),
    (
        "sd1-inpaint txt2img",
        "sd1-inpaint",
        {},
        "txt2img",
        dict(prompt="a lamp", width=64, height=64, steps=4, seed=19),
    ),
]


def run_case(paths: dict[str, Path | None], model: str, load_opts: dict, mode: str, args: dict) -> dict[str, str]:
    import sd_core

    pipe = sd_core.load(paths[model], device="cpu", **{"dtype": "fp32", **load_opts})
    args = dict(args)
    prompt = args.pop("prompt")
    if mode == "txt2img":
        imgs = pipe.txt2img(prompt, **args)
    elif mode == "img2img":
        imgs = pipe.img2img(_test_image(), prompt, **args)
    elif mode == "inpaint":
        imgs = pipe.inpaint(_test_image(), _test_mask(), prompt, **args)
    else:
        imgs = pipe.outpaint(_test_image(), prompt, **args)
    pixels = hashlib.sha256(b"".join(np.asarray(img.convert("RGB")).tobytes() for img in imgs)).hexdigest()
    text = hashlib.sha256("\n".join(str(img.info.get("parameters")) for img in imgs).encode()).hexdigest()
    return {"pixels": pixels[:16], "infotext": text[:16], "size": f"{imgs[0].width}x{imgs[0].height}x{len(imgs)}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the hashes as JSON here")
    parser.add_argument("--compare", help="compare with hashes written earlier; exit 1 if any differs")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _checkpoints(Path(tmp))
        results = {name: run_case(paths, model, opts, mode, a) for name, model, opts, mode, a in CASES}
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    failed = 0
    before = json.loads(Path(args.compare).read_text()) if args.compare else {}
    print("| case | size | pixels sha256 | infotext sha256 | vs before |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        verdict = ""
        if before:
            old = before.get(name)
            same = old is not None and old["pixels"] == r["pixels"] and old["infotext"] == r["infotext"]
            verdict = "same" if same else f"DIFFERENT (was {old})"
            failed += not same
        print(f"| {name} | {r['size']} | {r['pixels']} | {r['infotext']} | {verdict} |")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
