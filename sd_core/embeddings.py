"""Textual-inversion embeddings: learned token vectors a prompt uses by their file name, as A1111 does.

Files (A1111's loader): A1111's own `.pt` (`string_to_param` with one entry, [vectors, width], plus `name`, `step`,
`sd_checkpoint`, `sd_checkpoint_name`), any file holding a single tensor (`.safetensors` `emb_params` [vectors,
width], diffusers' `learned_embeds.bin` {token: [width]}), and SDXL's `{clip_l, clip_g}` (one set of vectors per
text tower: CLIP-L's and bigG's, kept side by side as [vectors, 768 + 1280] with `widths` (768, 1280)). Pickles go
through `sd_core.checkpoint.read_pickle`, which never runs code. An embedding is named by its file stem; one not made
for the model's towers (SD1 768, SD2 1024, SDXL 768 + 1280, the SDXL refiner's bigG alone 1280) is skipped, as A1111
skips it (listed under "skipped"; its name stays plain text in prompts).

In a prompt (or negative prompt) the name is found by its token ids, longest names first (`EmbeddingLookup.find`);
it becomes as many placeholder tokens as it has vectors, kept in one 75-token chunk (`sd_core.prompt`), and its
vectors replace those tokens' embeddings before the position embeddings are added (`token_embeddings`; SDXL: each
tower its own part, at the same places, as diffusers' `load_textual_inversion` with `text_encoder_2`/`tokenizer_2`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint
from .prompt import CHUNK_LENGTH, Fix

log = logging.getLogger(__name__)

SUFFIXES = (".pt", ".bin", ".safetensors")
WIDTH_KEYS = ("clip_l", "clip_g")
"""SDXL embeddings' per-encoder vectors (CLIP-L 768, bigG 1280)."""


class EmbeddingError(ValueError):
    """An embedding file that cannot be used: the message names the file."""


@dataclass(frozen=True, eq=False)
class Embedding:
    """One embedding: `vectors` [count, width] (float32; SDXL: CLIP-L's then bigG's columns, `widths` the two
    parts' widths), and what A1111's files record about its training."""

    name: str
    path: Path
    vectors: torch.Tensor
    step: int | None = None
    checkpoint: str | None = None
    checkpoint_name: str | None = None
    widths: tuple[int, ...] = ()
    _hash: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.widths:
            object.__setattr__(self, "widths", (int(self.vectors.shape[1]),))

    def part(self, tower: int) -> torch.Tensor:
        """The vectors for text tower `tower` (of the towers it was made for): [count, widths[tower]]."""
        start = sum(self.widths[:tower])
        return self.vectors[:, start : start + self.widths[tower]]

    @property
    def count(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def width(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def hash(self) -> str:
        """A1111's short hash: the first 12 hex digits of the whole file's sha256."""
        if not self._hash:
            digest = hashlib.sha256()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._hash.append(digest.hexdigest()[:12])
        return self._hash[0]


def _tensor_of(data: dict, path: Path) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The file's vectors [count, width] (1-D: one vector) and the widths of the towers they are for (SDXL's
    CLIP-L and bigG side by side)."""
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise EmbeddingError(f"{path}: string_to_param must hold exactly one tensor")
        return next(iter(params.values())), ()
    if set(WIDTH_KEYS) <= set(data):
        parts = [data[key] for key in WIDTH_KEYS]
        if (
            not all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in parts)
            or parts[0].shape[0] != parts[1].shape[0]
        ):
            shapes = [list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in parts]
            raise EmbeddingError(f"{path}: clip_l and clip_g must be [vectors, width] with as many vectors: {shapes}")
        return torch.cat([t.detach().float() for t in parts], dim=1), tuple(int(t.shape[1]) for t in parts)
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(tensors) != 1:
        raise EmbeddingError(f"{path}: not an embedding ({len(tensors)} tensors; expected one, or string_to_param)")
    return tensors[0], ()


def read_embedding(path: str | os.PathLike) -> Embedding:
    """An embedding file; `EmbeddingError` naming the file when it is not one (or is damaged, or would run code)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            data: object = checkpoint.read_state_dict(path)
        else:
            data = checkpoint.read_pickle(path)
    except checkpoint.CheckpointError as exc:
        raise EmbeddingError(f"embedding {exc}") from None
    if not isinstance(data, dict):
        raise EmbeddingError(f"{path}: holds a {type(data).__name__}, not an embedding")
    tensor, widths = _tensor_of(data, path)
    vectors = tensor.detach().float()
    if vectors.dim() == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.dim() != 2 or not 1 <= vectors.shape[0] <= CHUNK_LENGTH or not torch.isfinite(vectors).all():
        raise EmbeddingError(f"{path}: vectors of shape {list(vectors.shape)}: expected 1 to 75 finite rows")

    def field_of(key: str) -> object:
        value = data.get(key)
        return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None

    step = field_of("step")
    return Embedding(
        path.stem,
        path,
        vectors.clone(),
        step if isinstance(step, int) else None,
        _text(field_of("sd_checkpoint")),
        _text(field_of("sd_checkpoint_name")),
        widths,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


class EmbeddingLookup:
    """The embeddings of one text width, found in token ids: `find(tokens, position)` as `sd_core.prompt` asks."""

    def __init__(self, embeddings: Iterable[Embedding], tokenizer) -> None:
        self._by_first: dict[int, list[tuple[list[int], Embedding]]] = {}
        for emb in embeddings:
            ids = tokenizer.encode(emb.name)
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, emb))
        for entries in self._by_first.values():
            entries.sort(key=lambda entry: -len(entry[0]))

    def find(self, tokens: list[int], position: int) -> tuple[Embedding, int] | None:
        for ids, emb in self._by_first.get(tokens[position], ()):
            if tokens[position : position + len(ids)] == ids:
                return emb, len(ids)
        return None

    def __bool__(self) -> bool:
        return bool(self._by_first)


class EmbeddingLibrary:
    """The embeddings under `folders` (subfolders included), read when first needed and again when a file changes."""

    def __init__(self, folders: Iterable[str | os.PathLike] = ()) -> None:
        self.folders = tuple(Path(f).expanduser() for f in folders)
        for folder in self.folders:
            if not folder.is_dir():
                raise FileNotFoundError(f"embeddings folder not found: {folder}")
        self._signature: tuple = ()
        self._loaded: dict[str, Embedding] = {}
        self._errors: dict[str, str] = {}
        self._lookups: dict[tuple[int, ...], EmbeddingLookup] = {}

    def _files(self) -> list[Path]:
        found = []
        for folder in self.folders:
            for root, dirs, files in os.walk(folder, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(root) / f for f in sorted(files) if Path(f).suffix.lower() in SUFFIXES]
        return found

    def refresh(self, force: bool = False) -> None:
        """Read the folders again if a file was added, removed or changed (or always with `force`)."""
        files = self._files()
        signature = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        if signature == self._signature and not force:
            return
        loaded, errors = {}, {}
        for path in files:
            if path.stem in loaded:
                log.warning("embedding %s: the name %r is taken by %s", path, path.stem, loaded[path.stem].path)
                continue
            try:
                loaded[path.stem] = read_embedding(path)
            except EmbeddingError as exc:
                errors[path.stem] = str(exc)
                log.warning("%s", exc)
        self._signature, self._loaded, self._errors, self._lookups = signature, loaded, errors, {}

    def embeddings(self) -> dict[str, Embedding]:
        self.refresh()
        return dict(self._loaded)

    def errors(self) -> dict[str, str]:
        """Files in the folders that are not usable embeddings, by name: why."""
        self.refresh()
        return dict(self._errors)

    def lookup(self, widths: int | tuple[int, ...], tokenizer) -> EmbeddingLookup:
        """The embeddings made for text towers of `widths` (one int: one tower); the others are A1111's
        "skipped"."""
        widths = (widths,) if isinstance(widths, int) else tuple(widths)
        self.refresh()
        if widths not in self._lookups:
            usable = [e for e in self._loaded.values() if e.widths == widths]
            self._lookups[widths] = EmbeddingLookup(usable, tokenizer)
        return self._lookups[widths]


def token_embeddings(
    token_embedding: torch.nn.Module, tokens: torch.Tensor, fixes: list[Fix], tower: int = 0
) -> torch.Tensor:
    """The token embeddings of `tokens` [k, 77] with each fix's vectors (for text tower `tower`: SDXL's CLIP-L 0,
    bigG 1) written after BOS at its offset (cut at the chunk's end, as A1111)."""
    embeds = token_embedding(tokens)
    for fix in fixes:
        room = tokens.shape[1] - fix.offset - 1
        vectors = fix.embedding.part(tower)[:room].to(embeds)
        embeds[fix.chunk, fix.offset + 1 : fix.offset + 1 + vectors.shape[0]] = vectors
    return embeds


def used(fixes: Iterable[Fix]) -> list[Embedding]:
    """The embeddings the fixes place, each once, in order."""
    out: dict[int, Embedding] = {}
    for fix in fixes:
        out.setdefault(id(fix.embedding), fix.embedding)
    return list(out.values())


def infotext_fields(embeddings: list[Embedding]) -> dict[str, str]:
    """A1111's `TI hashes` field for the embeddings a generation used."""
    if not embeddings:
        return {}
    return {"TI hashes": ", ".join(f"{e.name.replace(':', '').replace(',', '')}: {e.hash}" for e in embeddings)}
