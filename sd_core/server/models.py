"""The models directory: which checkpoints clients may list and switch to, and A1111-style names for them.

A client names a model; it never gives a path. Names are matched against the directory's own listing, so only files
inside the directory can be loaded: absolute paths and `..` are refused outright, and symlinks whose target lies
outside the directory are left out of the listing.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
MAX_ENTRIES = 5000  # a huge tree is a misconfiguration; listing stays fast
MAX_DEPTH = 6
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]$")


class ModelNameError(ValueError):
    """A model name that is unsafe or matches nothing in the models directory."""


@dataclass(frozen=True)
class ModelEntry:
    """One loadable model. `name` is its path relative to the models directory (posix separators)."""

    name: str
    path: Path

    @property
    def model_name(self) -> str:
        """A1111's `model_name`: the relative path without extension, separators replaced by `_`."""
        stem = self.name[: -len(Path(self.name).suffix)] if Path(self.name).suffix else self.name
        return stem.replace("/", "_")


class HashCache:
    """Full-file sha256 per (path, size, mtime), computed when a model is loaded; A1111 shows the first 10 hex."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(path: Path) -> tuple[str, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return str(path), st.st_size, st.st_mtime_ns

    def get(self, path: Path) -> str | None:
        key = self._key(path)
        with self._lock:
            return self._known.get(key) if key else None

    def compute(self, path: Path) -> str | None:
        """sha256 of a single-file checkpoint (None for a diffusers folder), cached."""
        if not path.is_file():
            return None
        known = self.get(path)
        if known:
            return known
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        key = self._key(path)
        value = digest.hexdigest()
        if key:
            with self._lock:
                self._known[key] = value
        return value


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def _is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file()


class ModelDirectory:
    """Lists the checkpoints under `root` (plus the startup model, which the operator chose) and resolves names."""

    def __init__(self, root: Path, extra: Path | None = None, hashes: HashCache | None = None) -> None:
        self.root = root.resolve()
        self.extra = extra.resolve() if extra is not None else None
        self.hashes = hashes or HashCache()

    def entries(self) -> list[ModelEntry]:
        """Every model in the directory, sorted by name; rescanned on each call (cheap: names and stats only)."""
        found: list[ModelEntry] = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            here = Path(dirpath)
            depth = len(here.relative_to(self.root).parts)
            for d in list(dirnames):
                full = here / d
                if _is_diffusers_folder(full) and _inside(full, self.root):
                    found.append(self._entry(full))
                    dirnames.remove(d)  # a diffusers folder is one model, not a tree to search
            if depth >= MAX_DEPTH:
                dirnames.clear()
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                full = here / f
                if f.lower().endswith(CHECKPOINT_SUFFIXES) and _inside(full, self.root) and full.is_file():
                    found.append(self._entry(full))
            if len(found) >= MAX_ENTRIES:
                break
        if self.extra is not None and not any(e.path == self.extra for e in found):
            found.append(ModelEntry(self.extra.name, self.extra))
        return sorted(found, key=lambda e: e.name.lower())

    def _entry(self, path: Path) -> ModelEntry:
        return ModelEntry(path.relative_to(self.root).as_posix(), path.resolve() if path.is_symlink() else path)

    def title(self, entry: ModelEntry) -> str:
        """A1111's title: `name [shorthash]` once the hash is known, else just the name."""
        sha = self.hashes.get(entry.path)
        return f"{entry.name} [{sha[:10]}]" if sha else entry.name

    def entry_for_path(self, path: Path) -> ModelEntry | None:
        path = path.resolve()
        return next((e for e in self.entries() if e.path.resolve() == path), None)

    def resolve(self, name: object) -> ModelEntry:
        """The entry a client's name refers to: title, relative path (with or without extension), model_name,
        short hash or sha256. Raises ModelNameError with a message a user can act on."""
        if not isinstance(name, str) or not name.strip():
            raise ModelNameError("a model name must be a non-empty string")
        if len(name) > 1000 or "\x00" in name:
            raise ModelNameError("invalid model name")
        bare = _HASH_SUFFIX.sub("", name.strip())
        posix, windows = PurePosixPath(bare.replace("\\", "/")), PureWindowsPath(bare)
        if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts:
            raise ModelNameError(
                f"model names are relative to the models directory; {name!r} is not allowed "
                "(no absolute paths, no '..')"
            )
        entries = self.entries()
        for fold in (False, True):
            for entry in entries:
                if self._matches(entry, name.strip(), bare.replace("\\", "/"), fold):
                    if entry.path != self.extra and not _inside(entry.path, self.root):
                        raise ModelNameError(f"model {name!r} lies outside the models directory")
                    return entry
        listed = ", ".join(self.title(e) for e in entries[:20]) or "none"
        raise ModelNameError(f"no model named {name!r} in the models directory; available: {listed}")

    def _matches(self, entry: ModelEntry, name: str, bare: str, fold: bool) -> bool:
        sha = self.hashes.get(entry.path)
        stem = entry.name[: -len(Path(entry.name).suffix)] if Path(entry.name).suffix else entry.name
        candidates = [self.title(entry), entry.name, stem, entry.model_name, Path(entry.name).name]
        if sha:
            candidates += [sha, sha[:10]]
        if fold:
            name, bare, candidates = name.lower(), bare.lower(), [c.lower() for c in candidates]
        return name in candidates or bare in candidates
