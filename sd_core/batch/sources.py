"""Job sources: what `sd-core batch JOBS` reads, one job per line, each an A1111 request body.

- `.jsonl` (or `.json`): each line a txt2img or img2img request body, exactly what the server takes, except that
  `init_images` and `mask` are file paths (relative to the JOBS file's folder) instead of base64; a `data:` URL is
  taken as it is. A line with `init_images` is img2img, any other txt2img.
- `.csv`: a header of request field names (`prompt`, `steps`, `sampler_name`, ...), a row per job; cells are text and
  read as the server reads JSON text for that field (pydantic's lax mode: "20" is 20 for `steps`); an empty cell is
  left out.
- anything else (`.txt`): a prompt per line; blank lines and lines starting with `#` are skipped.

Every source is expanded the same way: `--set key=value` gives every job that field (the value read as JSON where it
is JSON, else as text; it replaces the job's own), `--seeds 1-100` makes one job per seed of each line. A line that
cannot be read becomes a `BadLine` with its line number; the others still run.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_FIELDS = ("init_images", "mask")  # request fields that hold images: file paths in a JOBS file


@dataclass(frozen=True)
class Job:
    """One request of a JOBS file: its line (1-based; a CSV row's first line) and its body, image paths absolute."""

    line: int
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return "img2img" if self.body.get("init_images") is not None else "txt2img"


@dataclass(frozen=True)
class BadLine:
    """A line that makes no job, and why (shown as `JOBS:LINE: message`)."""

    line: int
    message: str


def parse_seeds(text: str) -> list[int]:
    """`1-100`, `7`, `1,5,10-12` -> the seeds in that order (a range includes both ends)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                first, last = part.split("-", 1)
                lo, hi = int(first), int(last)
                if hi < lo:
                    raise ValueError(f"the range {part} runs backwards")
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError as exc:
            raise ValueError(f"--seeds {text!r}: {exc}") from None
    return seeds


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """`key=value` pairs -> fields; a value that is JSON (`20`, `7.5`, `true`, `["a"]`) is read as JSON, else text."""
    fields: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected key=value")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        fields[key.strip()] = value
    return fields


def _resolve_images(body: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Image fields' paths made absolute against the JOBS file's folder (`data:` URLs and non-text left as they are,
    for the request checks to judge)."""

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and not value.startswith("data:"):
            return str((folder / value).resolve())
        return value

    out = dict(body)
    if isinstance(out.get("init_images"), list):
        out["init_images"] = [resolve(v) for v in out["init_images"]]
    if "mask" in out:
        out["mask"] = resolve(out["mask"])
    return out


def _jsonl(path: Path) -> list[Job | BadLine]:
    out: list[Job | BadLine] = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            out.append(BadLine(number, f"not valid JSON: {exc}"))
            continue
        if not isinstance(body, dict):
            out.append(BadLine(number, "a line must be a JSON object (an A1111 request body)"))
            continue
        out.append(Job(number, _resolve_images(body, path.parent)))
    return out


def _csv(path: Path) -> list[Job | BadLine]:
    out: list[Job | BadLine] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return out
        names = [name.strip() for name in header]
        line = reader.line_num + 1
        for row in reader:
            if any(cell.strip() for cell in row):
                if len(row) > len(names):
                    out.append(BadLine(line, f"{len(row)} cells for {len(names)} columns"))
                else:
                    body = {k: v for k, v in zip(names, row, strict=False) if v != ""}
                    out.append(Job(line, _resolve_images(body, path.parent)))
            line = reader.line_num + 1
    return out


def _txt(path: Path) -> list[Job | BadLine]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [
        Job(number, {"prompt": text.strip()})
        for number, text in enumerate(lines, start=1)
        if text.strip() and not text.lstrip().startswith("#")
    ]


def read_jobs(path: Path, seeds: list[int] | None = None, sets: dict[str, Any] | None = None) -> list[Job | BadLine]:
    """The jobs of a JOBS file in line order, expanded by `seeds` (one job per seed) and `sets` (fields every job
    gets); lines that make no job as `BadLine`s among them."""
    suffix = path.suffix.lower()
    read = _jsonl if suffix in (".jsonl", ".json", ".ndjson") else _csv if suffix == ".csv" else _txt
    out: list[Job | BadLine] = []
    extra = _resolve_images(dict(sets or {}), Path.cwd()) if sets else {}  # --set paths: relative to the shell
    for item in read(path):
        if isinstance(item, BadLine):
            out.append(item)
            continue
        body = {**item.body, **extra}
        for seed in seeds or [None]:
            out.append(Job(item.line, body if seed is None else {**body, "seed": seed}))
    return out
