"""Job sources: what `sd-core batch JOBS` reads, one job per line, each an A1111 request body.

- `.jsonl` (or `.json`): each line a txt2img or img2img request body, exactly what the server takes, except that
  images (`init_images`, `mask`, a ControlNet unit's `image`, `alwayson_scripts.controlnet.args[N].image`) are file
  paths (relative to the JOBS file's folder) instead of base64; a `data:` URL is taken as it is. A line with
  `init_images` is img2img, any other txt2img.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


def map_images(body: dict[str, Any], fn: Callable[[Any, str], Any]) -> dict[str, Any]:
    """The body with `fn(value, field)` applied to every image it holds, `field` naming it as the server does:
    `init_images[i]`, `mask`, and each ControlNet unit's `image` or `input_image` (a value, a one-image list, or its
    `{"image": ...}`) at `alwayson_scripts.controlnet.args[i]`. Absent and empty ones are left out; shapes the
    request checks refuse are left as they are, for them to name."""

    def apply(value: Any, field: str) -> Any:
        return fn(value, field) if value not in (None, "") else value

    out = dict(body)
    if isinstance(out.get("init_images"), list):
        out["init_images"] = [apply(v, f"init_images[{i}]") for i, v in enumerate(out["init_images"])]
    if "mask" in out:
        out["mask"] = apply(out["mask"], "mask")
    scripts = out.get("alwayson_scripts")
    controlnet = scripts.get("controlnet") if isinstance(scripts, dict) else None
    if isinstance(controlnet, dict) and isinstance(controlnet.get("args"), list):
        prefix = "alwayson_scripts.controlnet.args"
        units = [_unit_images(u, f"{prefix}[{i}]", apply) for i, u in enumerate(controlnet["args"])]
        out["alwayson_scripts"] = {**scripts, "controlnet": {**controlnet, "args": units}}
    return out


def _unit_images(unit: Any, prefix: str, apply: Callable[[Any, str], Any]) -> Any:
    if not isinstance(unit, dict):
        return unit
    unit = dict(unit)
    for key in ("image", "input_image"):
        value, field = unit.get(key), f"{prefix}.{key}"
        if isinstance(value, dict):
            unit[key] = {**value, "image": apply(value.get("image"), f"{field}.image")}
        elif isinstance(value, list):
            unit[key] = [apply(v, f"{field}[{i}]") for i, v in enumerate(value)]
        elif key in unit:
            unit[key] = apply(value, field)
    return unit


def _resolve_images(body: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Image paths made absolute against the JOBS file's folder (`data:` URLs and non-text left as they are, for the
    request checks to judge)."""

    def resolve(value: Any, _field: str) -> Any:
        if isinstance(value, str) and not value.startswith("data:"):
            return str((folder / value).resolve())
        return value

    return map_images(body, resolve)


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
