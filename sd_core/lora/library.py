"""The LoRA files in the folders a user configured, found by name as A1111 finds them.

Every `.safetensors` / `.pt` / `.ckpt` under the folders (subfolders included) is a LoRA named by its file stem; its
alias is the training run's `ss_output_name` when the file records one. A name from a prompt or request resolves only
to a file inside the folders: names are never paths. The folders are read when first needed, and again by `refresh`
or when a name is not found (a file added since is then found without a restart).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .. import checkpoint
from .files import SUFFIXES, LoraError
from .tags import check_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraEntry:
    """One LoRA file in the folders: `name` (the stem), `alias`, `path`, and its safetensors metadata."""

    name: str
    alias: str
    path: Path
    metadata: dict[str, str] = field(default_factory=dict)


def scan(folders: Iterable[Path], suffixes: Iterable[str]) -> list[Path]:
    """Files with one of `suffixes` under `folders`, recursively, in a stable order (hidden folders skipped)."""
    found = []
    wanted = {s.lower() for s in suffixes}
    for folder in folders:
        for root, dirs, files in os.walk(folder, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [Path(root) / f for f in sorted(files) if Path(f).suffix.lower() in wanted]
    return found


def check_folders(folders: Iterable[str | os.PathLike], what: str) -> tuple[Path, ...]:
    out = []
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{what} folder not found: {path}")
        out.append(path)
    return tuple(out)


class LoraLibrary:
    """The LoRAs under `folders`: `entries()` lists them, `find(name)` resolves a name (or alias) to its file."""

    def __init__(self, folders: Iterable[str | os.PathLike] = ()) -> None:
        self.folders = check_folders(folders, "LoRA")
        self._entries: list[LoraEntry] | None = None

    def refresh(self) -> list[LoraEntry]:
        entries = []
        for path in scan(self.folders, SUFFIXES):
            metadata = {}
            if path.suffix.lower() == ".safetensors":
                try:
                    metadata = checkpoint.read_metadata(path)
                except checkpoint.CheckpointError as exc:
                    log.warning("LoRA %s: unreadable header, listed without metadata: %s", path, exc)
            alias = metadata.get("ss_output_name") or path.stem
            entries.append(LoraEntry(path.stem, alias, path, metadata))
        self._entries = entries
        return entries

    def entries(self) -> list[LoraEntry]:
        return self.refresh() if self._entries is None else self._entries

    def _lookup(self, name: str) -> Path | None:
        entries = self.entries()
        for match in (lambda e: e.name == name, lambda e: e.alias == name):
            hits = [e.path for e in entries if match(e)]
            if hits:
                if len(hits) > 1:
                    log.warning("LoRA name %r: %d files, using %s", name, len(hits), hits[0])
                return hits[0]
        return None

    def find(self, name: str) -> Path:
        """The file of the LoRA named `name` (file stem or alias) in the folders; LoraError naming it otherwise."""
        check_name(name)
        path = self._lookup(name)
        if path is None:
            self.refresh()
            path = self._lookup(name)
        if path is None:
            where = ", ".join(str(f) for f in self.folders) or "none configured (lora_dirs / --lora-dir)"
            raise LoraError(f"unknown LoRA {name!r}: no such file in the LoRA folders ({where})")
        return path
