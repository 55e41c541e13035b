"""A1111 prompt syntax: attention weights, ``BREAK``, 75-token chunks, and emphasis applied to the text encoding.

Users paste prompts from A1111 and expect the same conditioning, so this follows A1111's rules (its "Original"
emphasis and default comma backtrack). Syntax:

- ``(x)`` multiplies the weight of ``x`` by 1.1, ``((x))`` by 1.21, ``(x:1.5)`` by 1.5; ``[x]`` divides by 1.1.
- ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the literal characters; a backslash before anything else vanishes.
- Unbalanced brackets, as A1111: an unmatched ``)`` or ``]`` is literal text; an unclosed ``(`` or ``[`` weights
  everything after it to the end of the prompt; ``:1.5)`` with no open ``(`` is literal text; a lone ``:`` is text.
- ``BREAK`` (upper case, a standalone word) ends the current chunk; the following text starts a new one.

Two deliberate differences from A1111, both where A1111 misbehaves:

- A ``BREAK`` inside brackets still breaks (A1111 scales its marker weight, after which it is tokenized as the word
  "break" with a weight near -1).
- ``(x:1.2.3)`` (a number ``float`` rejects) is literal text instead of an exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch

from sd_core.tokenizer import BOS, EOS, MAX_LENGTH

CHUNK_LENGTH = MAX_LENGTH - 2
"""Prompt tokens per chunk: each chunk is BOS + 75 tokens + EOS."""
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK = ("BREAK", -1.0)
"""The part ``parse_prompt_attention`` returns for a ``BREAK`` (A1111's marker)."""

# In order: escape (or lone backslash), opening bracket, ":weight)", closing bracket, plain text, lone colon.
_SYNTAX = re.compile(r"\\[()\[\]\\]?|[(\[]|:\s*([+-]?[.\d]+)\s*\)|[)\]]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


class Tokenizer(Protocol):
    """What the chunker needs: text -> token ids without BOS/EOS (``sd_core.tokenizer.CLIPTokenizer``)."""

    def encode(self, text: str) -> list[int]: ...


class Embeddings(Protocol):
    """Textual-inversion embeddings found in token ids (``sd_core.embeddings.EmbeddingLookup``)."""

    def find(self, tokens: list[int], position: int) -> tuple[Any, int] | None:
        """(the embedding whose name's tokens start at ``position``, how many tokens its name takes) or None; the
        embedding has ``count`` vectors."""
        ...


class Fix(NamedTuple):
    """An embedding's place: chunk ``chunk``, its vectors from token ``offset`` (after BOS: position offset + 1)."""

    chunk: int
    offset: int
    embedding: Any


class _Part:
    """A run of text and its weight while parsing; markers (BREAK) are never weighted or merged."""

    __slots__ = ("text", "weight", "is_break")

    def __init__(self, text: str, weight: float = 1.0, is_break: bool = False) -> None:
        self.text, self.weight, self.is_break = text, weight, is_break


def _as_float(number: str | None) -> float | None:
    try:
        return None if number is None else float(number)
    except ValueError:
        return None


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into ``(text, weight)`` runs; adjacent runs of equal weight are merged.

    ``BREAK`` gives the part ``("BREAK", -1.0)``. Weights multiply in A1111's order (inner brackets first, unclosed
    round brackets then unclosed square ones at the end), so float results match A1111 exactly, e.g.
    ``"a (((house:1.3)) [on]"`` -> house ``1.3 * 1.1 * 1.1``. An empty prompt gives ``[("", 1.0)]``.
    """
    return [(part.text, part.weight) for part in _parse(text)]


def _parse(text: str) -> list[_Part]:
    """``parse_prompt_attention`` keeping BREAK markers distinct from any text run."""
    parts: list[_Part] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for part in parts[start:]:
            if not part.is_break:
                part.weight *= factor

    for match in _SYNTAX.finditer(text):
        token, weight = match.group(0), _as_float(match.group(1))
        if token.startswith("\\"):
            parts.append(_Part(token[1:]))
        elif token == "(":
            round_open.append(len(parts))
        elif token == "[":
            square_open.append(len(parts))
        elif weight is not None and round_open:
            scale(round_open.pop(), weight)
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            scale(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, piece in enumerate(_BREAK.split(token)):
                if i > 0:
                    parts.append(_Part(*BREAK, is_break=True))
                parts.append(_Part(piece))
    for start in round_open:
        scale(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale(start, SQUARE_MULTIPLIER)

    merged: list[_Part] = []
    for part in parts:
        last = merged[-1] if merged else None
        if last is not None and not (last.is_break or part.is_break) and last.weight == part.weight:
            last.text += part.text
        else:
            merged.append(part)
    return merged or [_Part("")]


class _Chunker:
    """Fills 75-token chunks the way A1111 does, including the comma backtrack."""

    def __init__(self, comma: int | None, backtrack: int) -> None:
        self.comma, self.backtrack = comma, backtrack
        self.chunks: list[tuple[list[int], list[float]]] = []
        self.tokens: list[int] = []
        self.weights: list[float] = []
        self.last_comma = -1
        self.fixes: list[Fix] = []
        self.pending: list[tuple[int, Any]] = []  # (offset, embedding) in the chunk being filled

    def flush(self) -> None:
        self.fixes += [Fix(len(self.chunks), offset, emb) for offset, emb in self.pending]
        self.chunks.append((self.tokens, self.weights))
        self.tokens, self.weights, self.last_comma, self.pending = [], [], -1, []

    def add_embedding(self, embedding: Any, weight: float) -> None:
        """An embedding's ``count`` placeholder tokens (id 0), all in one chunk (A1111: a new chunk when they would
        cross the 75-token boundary)."""
        if self.tokens and len(self.tokens) + embedding.count > CHUNK_LENGTH:
            self.flush()
        self.pending.append((len(self.tokens), embedding))
        self.tokens += [0] * embedding.count
        self.weights += [weight] * embedding.count

    def add(self, token: int, weight: float) -> None:
        full = len(self.tokens) == CHUNK_LENGTH
        if token == self.comma:
            self.last_comma = len(self.tokens)
        elif full and self.backtrack and self.last_comma != -1 and CHUNK_LENGTH - self.last_comma <= self.backtrack:
            # The chunk is full and a comma is near its end: move what follows the comma to the next chunk, so a
            # short phrase is not cut in two.
            cut = self.last_comma + 1
            moved = self.tokens[cut:], self.weights[cut:]
            moved_fixes = [(offset - cut, emb) for offset, emb in self.pending if offset >= cut]
            self.pending = [(offset, emb) for offset, emb in self.pending if offset < cut]
            self.tokens, self.weights = self.tokens[:cut], self.weights[:cut]
            self.flush()
            self.tokens, self.weights = moved
            self.pending = moved_fixes  # A1111 leaves them behind (its vectors then land in the old chunk's padding)
        if len(self.tokens) == CHUNK_LENGTH:
            self.flush()
        self.tokens.append(token)
        self.weights.append(weight)


def tokenize_prompt(
    text: str,
    tokenizer: Tokenizer,
    *,
    pad_token: int,
    min_chunks: int = 1,
    comma_padding_backtrack: int = 20,
) -> tuple[torch.LongTensor, torch.FloatTensor]:
    """``tokenize_prompt_with_embeddings`` without embeddings: token ids and weights ``[k, 77]``."""
    ids, weights, _ = tokenize_prompt_with_embeddings(
        text, tokenizer, pad_token=pad_token, min_chunks=min_chunks, comma_padding_backtrack=comma_padding_backtrack
    )
    return ids, weights


def tokenize_prompt_with_embeddings(
    text: str,
    tokenizer: Tokenizer,
    *,
    pad_token: int,
    min_chunks: int = 1,
    comma_padding_backtrack: int = 20,
    embeddings: Embeddings | None = None,
) -> tuple[torch.LongTensor, torch.FloatTensor, list[Fix]]:
    """Token ids and weights ``[k, 77]`` for a prompt: per chunk ``[BOS] + up to 75 tokens + [EOS]``, padded.

    ``pad_token`` is 49407 (EOS) for SD1 and 0 for SD2; for a plain prompt of up to 75 tokens the result is exactly
    what diffusers feeds the text encoder (for SD2 only without "!": diffusers' SD2 tokenizer, whose pad token is "!",
    makes every "!" a lone id 0; OpenCLIP, which SD2 was trained with, does not, nor does this).

    BOS, EOS and padding weigh 1.0. Each parsed run is tokenized on its own (as A1111: BPE never merges across a
    bracket). A chunk that fills up with a comma among its last ``comma_padding_backtrack`` tokens moves the tokens
    after that comma to the next chunk (0 disables). ``BREAK`` at the very start gives a leading empty chunk, at the
    very end nothing (A1111). ``min_chunks`` appends empty chunks (``[BOS, EOS, pad...]``) so that cond and uncond
    can have the same length.

    With ``embeddings``, each textual-inversion name found in a run's tokens (longest first, as A1111) becomes its
    vectors' count of placeholder tokens (id 0) with the run's weight; the ``Fix`` list says where their vectors go
    (``sd_core.embeddings.token_embeddings``).
    """
    comma = tokenizer.encode(",")
    chunker = _Chunker(comma[0] if len(comma) == 1 else None, comma_padding_backtrack)
    for part in _parse(text):
        if part.is_break:
            chunker.flush()
            continue
        tokens = tokenizer.encode(part.text)
        position = 0
        while position < len(tokens):
            found = None if embeddings is None else embeddings.find(tokens, position)
            if found is None:
                chunker.add(tokens[position], part.weight)
                position += 1
            else:
                chunker.add_embedding(found[0], part.weight)
                position += found[1]
    if chunker.tokens or not chunker.chunks:
        chunker.flush()
    chunks = chunker.chunks + [([], [])] * max(0, min_chunks - len(chunker.chunks))

    ids = torch.full((len(chunks), MAX_LENGTH), pad_token, dtype=torch.long)
    weights = torch.ones((len(chunks), MAX_LENGTH), dtype=torch.float32)
    for row, (tokens, multipliers) in enumerate(chunks):
        n = len(tokens)
        ids[row, : n + 2] = torch.tensor([BOS, *tokens, EOS], dtype=torch.long)
        weights[row, 1 : n + 1] = torch.tensor(multipliers, dtype=torch.float32)
    return ids, weights, chunker.fixes


def encode_with_weights(
    encode_fn: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Encode ``[k, 77]`` chunks, apply the weights and return ``[1, 77 * k, C]`` (chunks concatenated in order).

    A1111's "Original" emphasis, per chunk: ``z * w``, then rescale so the chunk's mean over tokens and channels is
    the one before weighting (weights change the direction of the embedding, not its overall level). With all
    weights 1 the result equals the encoder output exactly.
    """
    z = encode_fn(tokens)
    w = weights.to(device=z.device, dtype=z.dtype).unsqueeze(-1)
    original_mean = z.mean(dim=(1, 2), keepdim=True)
    z = z * w
    z = z * (original_mean / z.mean(dim=(1, 2), keepdim=True))
    return z.reshape(1, -1, z.shape[-1])
