"""A job's identity: a hash of what it asks for, its seeds when it asks for random ones, and its output names.

The hash covers the request body (with `--set` and `--seeds` applied), the contents of the images it names (init
images, mask, ControlNet units' images) and the model (file name and size), so an edited line, a changed input image or
another `--model` is a new job, and an unchanged one is found again in the manifest on a rerun.
Names are `LLLLL-SEED-HASH.png` (line, the image's seed, the hash's first 10 hex digits; `-K` after the hash when a
job makes several images), the same on every run and every machine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sd_core import limits

from .sources import Job, map_images

SHORT = 10  # hex digits of the job hash in names and in the manifest


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _image_identity(value: Any, _field: str = "") -> Any:
    """A named image file by its contents (a missing one by its path: the checks refuse it anyway)."""
    if isinstance(value, str) and not value.startswith("data:"):
        try:
            return {"file": file_sha256(value)}
        except OSError:
            return {"path": value}
    return value


def model_identity(path: str | Path) -> str:
    """The model as the job hash sees it: file name and size (cheap, and the same for a copy on another node; a
    diffusers folder by its name)."""
    path = Path(path)
    return f"{path.name}:{path.stat().st_size if path.is_file() else 'folder'}"


def job_hash(job: Job, model: str = "") -> str:
    """The job's hash (hex SHA-256 of its canonical JSON, image files by their contents, and `model`, the
    `model_identity`), first `SHORT` digits: another model makes other images under other names."""
    body = map_images(job.body, _image_identity)  # init images, mask, ControlNet units' images
    identity = {"kind": job.kind, "body": body, "model": model}
    text = json.dumps(identity, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:SHORT]


def fixed_seeds(request: Any, digest: str) -> dict[str, int]:
    """The fields that make a job asking for a random seed reproducible: `request` is the job's request as the server
    reads it (its `infotext` applied), and a `seed` it leaves random (-1 or left out) becomes one drawn from the job's
    hash, in the server's range; so does `subseed` when a variation uses it. A rerun or another worker then makes the
    same images, so resume and retries can trust them. Empty when the job names its seeds."""
    fields = {}
    if request.seed in (None, limits.RANDOM_SEED):
        fields["seed"] = int(digest, 16) % limits.RANDOM_SEED_RANGE
    if request.subseed_strength and request.subseed in (None, limits.RANDOM_SEED):
        fields["subseed"] = int(digest[::-1], 16) % limits.RANDOM_SEED_RANGE
    return fields


def output_name(line: int, seed: int, digest: str, index: int, count: int) -> str:
    """The file name of image `index` (of `count`) of the job on `line`."""
    suffix = f"-{index}" if count > 1 else ""
    return f"{line:05d}-{seed}-{digest}{suffix}.png"
