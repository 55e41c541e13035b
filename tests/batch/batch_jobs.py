"""The jobs the batch tests share: a JOBS file of A1111 txt2img bodies for the built-in model at 64x64, 2 steps, with
prompts, seeds and samplers varied so that a mix-up between jobs shows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

PROMPTS = ["red bricks", "blue tiles", "green and white dots", "black and white checkerboard", "yellow stripes"]
SAMPLERS = ["Euler", "Euler a", "DPM++ 2M", "DDIM"]
THREADS = 1  # torch threads of every engine in these tests: GEMMs split over other counts sum in another order


def bodies(n: int) -> list[dict[str, Any]]:
    return [
        {
            "prompt": PROMPTS[i % len(PROMPTS)],
            "negative_prompt": "blurry" if i % 3 == 0 else "",
            "seed": 1000 + 7 * i,
            "sampler_name": SAMPLERS[i % len(SAMPLERS)],
            "steps": 2,
            "cfg_scale": 5.0 + (i % 2),
            "width": 64,
            "height": 64,
        }
        for i in range(n)
    ]


def write_jobs(path: Path, lines: list[Any]) -> Path:
    """A JSONL file: dicts as JSON, strings as they are (for bad lines)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def manifest_rows(outdir: Path) -> list[dict[str, Any]]:
    return [json.loads(t) for t in (outdir / "manifest.jsonl").read_text().splitlines() if t.strip()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
