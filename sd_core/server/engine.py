"""The loaded model and the server's options, owned by the worker thread.

Only the worker loads or uses a pipeline, so no lock guards the model itself; the current checkpoint *option* is
what clients see and set. A switch is a queued job like a generation: it waits for the generation ahead of it.
Switching frees the old model before loading the new one (two SD models rarely fit in a consumer GPU at once); if
the new one fails to load, the old one is loaded again.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .models import HashCache, ModelDirectory, ModelEntry

log = logging.getLogger("sd_core.server")
Loader = Callable[[Path], Any]


def default_loader(device: str | None, dtype: str | None, lora_dirs: tuple = (), embedding_dirs: tuple = ()) -> Loader:
    """`sd_core.load` with the server's device, dtype, LoRA and embedding folders."""

    def load(path: Path) -> Any:
        import sd_core

        return sd_core.load(path, device=device, dtype=dtype, lora_dirs=lora_dirs, embedding_dirs=embedding_dirs)

    return load


def _free_device_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency of the engine
        pass


class ModelManager:
    """Which checkpoint is selected (`current`) and which pipeline is in memory (`loaded`)."""

    def __init__(self, directory: ModelDirectory, loader: Loader, current: ModelEntry) -> None:
        self.directory, self.loader = directory, loader
        self.hashes: HashCache = directory.hashes
        self._lock = threading.Lock()
        self._current = current
        self._loaded: tuple[ModelEntry, Any] | None = None
        self._refiner: tuple[ModelEntry, Any] | None = None
        self._listed_defaults: dict[tuple, Any] = {}  # (path, size, mtime) -> ModelDefaults, for the listing

    @property
    def current(self) -> ModelEntry:
        with self._lock:
            return self._current

    def select(self, entry: ModelEntry) -> None:
        with self._lock:
            self._current = entry

    def pipeline(self, entry: ModelEntry | None = None) -> Any:
        """The pipeline for `entry` (default: the current checkpoint), loading it if needed. Worker thread only."""
        entry = entry or self.current
        if self._loaded is not None and self._loaded[0] == entry:
            return self._loaded[1]
        previous = self._loaded[0] if self._loaded is not None else None
        self._loaded = None
        _free_device_memory()
        try:
            pipe = self._load(entry)
        except BaseException:
            if previous is not None:
                try:
                    self._loaded = (previous, self._load(previous))
                except Exception:
                    log.exception("could not reload %s after a failed switch", previous.name)
            raise
        self._loaded = (entry, pipe)
        return pipe

    def refiner(self, entry: ModelEntry) -> Any:
        """The pipeline of a refiner checkpoint, kept beside the current one (the model itself when it is the same
        file; another refiner replaces it). Worker thread only."""
        if self._loaded is not None and self._loaded[0] == entry:
            return self._loaded[1]
        if self._refiner is None or self._refiner[0] != entry:
            self._refiner = None
            _free_device_memory()
            self._refiner = (entry, self._load(entry))
        return self._refiner[1]

    def unload(self) -> bool:
        """Drop the pipelines from memory (the selection stays; the next job loads it again). Worker thread only."""
        was_loaded, self._loaded, self._refiner = self._loaded is not None, None, None
        _free_device_memory()
        return was_loaded

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def _load(self, entry: ModelEntry) -> Any:
        log.info("loading %s", entry.path)
        pipe = self.loader(entry.path)
        self.hashes.compute(entry.path)
        return pipe

    def defaults(self) -> Any:
        """The current model's own defaults (`sd_core.ModelDefaults`: CFG scale, native size): the loaded pipeline's,
        else read from the file's header (an SD2 v-prediction model counts as 512 px until it is loaded)."""
        entry = self.current
        loaded = self._loaded
        if loaded is not None and loaded[0] == entry:
            return loaded[1].defaults
        import sd_core

        return sd_core.inspect_model(entry.path).defaults

    def text_widths(self) -> tuple[int, ...]:
        """The current model's text towers' widths (what the embeddings it takes are made for): the loaded
        pipeline's, else read from the file's header."""
        entry, loaded = self.current, self._loaded
        if loaded is not None and loaded[0] == entry:
            return tuple(loaded[1].config.text_widths)
        import sd_core

        return tuple(sd_core.inspect_model(entry.path).text_widths)

    def short_hash(self, entry: ModelEntry) -> str | None:
        sha = self.hashes.get(entry.path)
        return sha[:10] if sha else None

    def defaults_of(self, entry: Any) -> Any:
        """`entry`'s own defaults (`sd_core.ModelDefaults`) for the model listing: the loaded pipeline's, else read
        from a .safetensors file's or a diffusers folder's header (cached by path, size and time); None for pickles
        (.ckpt: reading them means loading them) and files that cannot be read."""
        loaded = self._loaded
        if loaded is not None and loaded[0] == entry:
            return loaded[1].defaults
        path = entry.path
        if path.is_file() and path.suffix.lower() != ".safetensors":
            return None
        try:
            stat = path.stat()
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            if key not in self._listed_defaults:
                import sd_core

                self._listed_defaults[key] = sd_core.inspect_model(path).defaults
        except Exception:  # a listing never fails for one unreadable file
            return None
        return self._listed_defaults[key]
