"""The manifest: `DIR/manifest.jsonl`, a JSON object per image made, appended as each image is written.

A row: `line` (in JOBS), `job` (the job's hash, `naming.job_hash`), `index` (of the job's images), `seed`, `path`
(relative to DIR), `sha256` (of the PNG file), `infotext` (its A1111 parameters). Only the process that owns the run
writes it (the local runner, or the Ray driver from the rows its workers return). It is the record a rerun resumes
from: an image counts as made when its row is there and the file still has that hash; a later row for the same image
replaces an earlier one. A last line cut short by a kill is skipped (and the next row starts on a new line).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .naming import file_sha256

NAME = "manifest.jsonl"
ROW_KEYS = ("line", "job", "index", "seed", "path", "sha256", "infotext")


class Manifest:
    """The rows of DIR's manifest, by (job hash, line, index); `append` writes rows through to the file."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = Path(outdir)
        self.path = self.outdir / NAME
        self.rows: dict[tuple[str, int, int], dict[str, Any]] = {}
        if self.path.is_file():
            for text in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(text)
                except json.JSONDecodeError:  # a row cut short by a kill
                    continue
                if isinstance(row, dict) and all(k in row for k in ROW_KEYS):
                    self.rows[(row["job"], row["line"], row["index"])] = row

    def verified(self, digest: str, line: int, count: int) -> set[int]:
        """The indices (of a job's `count` images) whose file is there with the manifest's hash."""
        good = set()
        for index in range(count):
            row = self.rows.get((digest, line, index))
            if row is None:
                continue
            path = self.outdir / row["path"]
            try:
                if file_sha256(path) == row["sha256"]:
                    good.add(index)
            except OSError:
                pass
        return good

    def remove_partial_files(self) -> None:
        """Remove the `.NAME.PID.part` files a killed worker left (a finished image is renamed to its name). Only
        between runs, or by the run that owns DIR once its workers are done: one run per DIR at a time."""
        for path in self.outdir.glob(".*.part"):
            path.unlink(missing_ok=True)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add rows, flushed to disk before returning (a kill after this loses none of them)."""
        rows = list(rows)
        if not rows:
            return
        self.outdir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a row cut short: start on a new line
                    f.write(b"\n")
            for row in rows:
                f.write((json.dumps({k: row[k] for k in ROW_KEYS}, ensure_ascii=False) + "\n").encode("utf-8"))
                self.rows[(row["job"], row["line"], row["index"])] = row
            f.flush()
            os.fsync(f.fileno())
