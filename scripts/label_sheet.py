"""The labelled set of `tests/training/test_labelled_set.py`: generate its images, and draw contact sheets to label
them by eye.

    python scripts/label_sheet.py generate        # images with the built-in model -> tests/training/data/labelled/
    python scripts/label_sheet.py generate-extra  # then 64 more: bricks and grid in training captions (320-383)
    python scripts/label_sheet.py generate-check  # then 48 held-out phrasings, labelled after the detectors were final
    python scripts/label_sheet.py sheets OUT_DIR  # 8x6 contact sheets, each image 4x (nearest) with its index
    python scripts/label_sheet.py labels          # labels.txt (typed while looking) -> labels.json

The prompts vary on purpose (training captions, one-colour prompts, "X on a Y background", "a X and Y ... pattern",
"seamless ... texture", the pattern alone), so that the set holds many right and many wrong images. The labels are
written by a person looking at the sheets (the rule: `tests/training/data/labelled/README.md`), never by a detector.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FOLDER = Path(__file__).resolve().parent.parent / "tests" / "training" / "data" / "labelled"
NOUNS = {
    "vertical stripes": "vertical stripes",
    "horizontal stripes": "horizontal stripes",
    "checkerboard": "checkerboard",
    "dots": "dots",
    "bricks": "bricks",
    "grid": "grid lines",
    "waves": "waves",
    "noise": "noise",
}
PHRASINGS = (
    "{a} and {b} {p}",
    "{a} {p}",
    "{a} {n} on a {b} background",
    "{a} {n} on {b}",
    "a {a} and {b} {p} pattern",
    "seamless {a} {p} texture",
    "{p}",
    "{a} and {b}",
)


def prompts(per_pattern: int = 38, seed: int = 7) -> list[dict]:
    """`per_pattern` prompts for each pattern: phrasings in turn, random colour pairs."""
    from sd_core.training.data import COLOURS, PATTERNS

    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    out = []
    for pattern in PATTERNS:
        for i in range(per_pattern):
            a, b = (names[int(j)] for j in rng.choice(len(names), size=2, replace=False))
            text = PHRASINGS[i % len(PHRASINGS)].format(a=a, b=b, p=pattern, n=NOUNS[pattern])
            out.append({"prompt": text, "seed": int(rng.integers(1_000_000))})
    return out


def extra_prompts(n: int = 64, seed: int = 11) -> list[dict]:
    """A second batch (files 320-383): bricks and grid in the training captions' words, which the model draws more
    cleanly, so that these two patterns have more clear examples (the first batch had few)."""
    from sd_core.training.data import COLOURS

    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    out = []
    for i in range(n):
        pattern = ("bricks", "grid")[i % 2]
        a, b = (names[int(j)] for j in rng.choice(len(names), size=2, replace=False))
        text = (f"{a} and {b} {pattern}", f"small {a} and {b} {pattern}", f"large {a} and {b} {pattern}", pattern)[
            (i // 2) % 4
        ]
        out.append({"prompt": text, "seed": int(rng.integers(1_000_000))})
    return out


def degraded(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Procedural images a detector should not pass: flat, near-flat with faint texture, heavily blurred."""
    from sd_core.training import data

    out = []
    names = list(data.COLOURS)
    for i in range(16):
        a, b = (names[int(j)] for j in rng.choice(len(names), size=2, replace=False))
        pattern = data.PATTERNS[i % len(data.PATTERNS)]
        img = data.render(data.TextureSpec(pattern, a, b, "small"), 64, rng).astype(np.float64)
        if i % 4 == 0:  # flat, with a little pixel noise
            img = np.broadcast_to(img.mean(axis=(0, 1)), img.shape) + rng.normal(0, 3, img.shape)
        elif i % 4 == 1:  # faint texture: 12% of the contrast
            mean = img.mean(axis=(0, 1))
            img = mean + 0.12 * (img - mean)
        elif i % 4 == 2:  # blurred to mush
            img = np.asarray(Image.fromarray(img.astype(np.uint8)).filter(ImageFilter.GaussianBlur(4)), np.float64)
        out.append((f"procedural {pattern} {a}/{b} degraded {i % 4}", np.clip(img, 0, 255).astype(np.uint8)))
    return out


def generate_extra(folder: Path) -> None:
    """Append `extra_prompts`' images to the set."""
    import torch

    import sd_core
    from sd_core.training import evaluate

    torch.set_num_threads(1)
    pipe = sd_core.load(None, device="cpu", dtype="fp32")
    items = json.loads((folder / "images.json").read_text())
    for p in extra_prompts():
        name = f"{len(items):03d}.png"
        evaluate.generate(pipe, p["prompt"], p["seed"], cfg_scale=None).save(folder / name, optimize=True)
        items.append({"file": name, "source": "model", **p})
    (folder / "images.json").write_text(json.dumps(items, indent=1) + "\n")
    print(f"{len(items)} images in {folder}")


def generate_check(folder: Path, n: int = 48) -> None:
    """Append a check batch (files 384-431): held-out phrasings (`phrasing.held_out_prompts`, their own seeds),
    labelled after the detectors were final and never used to change them: the agreement on unseen images."""
    import torch

    import sd_core
    from sd_core.training import evaluate
    from sd_core.training.phrasing import held_out_prompts

    torch.set_num_threads(1)
    pipe = sd_core.load(None, device="cpu", dtype="fp32")
    items = json.loads((folder / "images.json").read_text())
    for i, p in enumerate(held_out_prompts(n, seed=77)):
        name = f"{len(items):03d}.png"
        evaluate.generate(pipe, p.text, 50_000 + i, cfg_scale=None).save(folder / name, optimize=True)
        items.append({"file": name, "source": "model", "batch": "check", "prompt": p.text, "seed": 50_000 + i})
    (folder / "images.json").write_text(json.dumps(items, indent=1) + "\n")
    print(f"{len(items)} images in {folder}")


def generate(folder: Path) -> None:
    import torch

    import sd_core
    from sd_core.training import evaluate

    torch.set_num_threads(1)
    folder.mkdir(parents=True, exist_ok=True)
    pipe = sd_core.load(None, device="cpu", dtype="fp32")
    items = []
    for i, p in enumerate(prompts()):
        image = evaluate.generate(pipe, p["prompt"], p["seed"], cfg_scale=None)
        name = f"{i:03d}.png"
        image.save(folder / name, optimize=True)
        items.append({"file": name, "source": "model", **p})
    for text, arr in degraded(np.random.default_rng(3)):
        name = f"{len(items):03d}.png"
        Image.fromarray(arr).save(folder / name, optimize=True)
        items.append({"file": name, "source": "procedural", "prompt": text, "seed": None})
    (folder / "images.json").write_text(json.dumps(items, indent=1) + "\n")
    print(f"{len(items)} images in {folder}")


def sheets(folder: Path, out: Path, cols: int = 8, rows: int = 6, zoom: int = 4, first: int = 0) -> None:
    """Contact sheets: each image `zoom`x nearest, its index above it."""
    out.mkdir(parents=True, exist_ok=True)
    files = [f for f in sorted(folder.glob("[0-9][0-9][0-9].png")) if int(f.stem) >= first]
    cell, label = 64 * zoom, 14
    per = cols * rows
    for s in range(0, len(files), per):
        sheet = Image.new("RGB", (cols * (cell + 4), rows * (cell + label + 4)), (128, 128, 128))
        draw = ImageDraw.Draw(sheet)
        for k, path in enumerate(files[s : s + per]):
            x, y = (k % cols) * (cell + 4), (k // cols) * (cell + label + 4)
            draw.text((x + 2, y + 1), path.stem, fill=(255, 255, 255))
            with Image.open(path) as im:
                sheet.paste(im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y + label))
        sheet.save(out / f"sheet_{first}_{s // per:02d}.png")


ABBREVIATIONS = {
    "vs": "vertical stripes",
    "hs": "horizontal stripes",
    "ck": "checkerboard",
    "dt": "dots",
    "br": "bricks",
    "gr": "grid",
    "wv": "waves",
    "ns": "noise",
    "no": "none",
}


def labels(folder: Path) -> None:
    """labels.txt (typed while looking at the sheets: `index pattern colours [? note]`, colours `fig/bg` for dots,
    grid and bricks, `a+b` otherwise, `-` for none or an unnamed figure/background) -> labels.json."""
    out = []
    for line in (folder / "labels.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        index, pattern, colours, *rest = line.split(maxsplit=3)
        rest = " ".join(rest)
        unsure = rest.startswith("?")
        figure = background = None
        if "/" in colours:
            figure, background = (None if c == "-" else c for c in colours.split("/"))
            named = [c for c in (figure, background) if c]
        else:
            named = [] if colours == "-" else colours.split("+")
        out.append(
            {
                "file": f"{int(index):03d}.png",
                "pattern": ABBREVIATIONS[pattern],
                "colours": named,
                "figure": figure,
                "background": background,
                "unsure": unsure,
                "note": rest.lstrip("?").strip(),
            }
        )
    (folder / "labels.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(out)} labels, {sum(not e['unsure'] for e in out)} sure")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate")
    sub.add_parser("generate-extra")
    sub.add_parser("generate-check")
    sub.add_parser("labels")
    sh = sub.add_parser("sheets")
    sh.add_argument("out", type=Path)
    sh.add_argument("--zoom", type=int, default=4)
    sh.add_argument("--first", type=int, default=0, help="first image index")
    args = parser.parse_args(argv)
    if args.command == "generate":
        generate(FOLDER)
    elif args.command == "generate-check":
        generate_check(FOLDER)
    elif args.command == "generate-extra":
        generate_extra(FOLDER)
    elif args.command == "labels":
        labels(FOLDER)
    else:
        sheets(FOLDER, args.out, zoom=args.zoom, first=args.first)
    return 0


if __name__ == "__main__":
    sys.exit(main())
