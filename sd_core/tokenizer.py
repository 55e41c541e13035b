"""CLIP byte-level BPE tokenizer, the one Stable Diffusion's text encoders were trained with.

The vocabulary ships in ``sd_core/data`` (see its README) so nothing is downloaded. The target is exact agreement with
the tokenizer diffusers feeds its text encoder: transformers' ``CLIPTokenizer`` (5.x, tokenizers backend), which

1. takes ``<|startoftext|>`` / ``<|endoftext|>`` written verbatim in the raw text as the special ids;
2. normalises the rest: Unicode NFC, then lower case character by character (so a final capital sigma becomes
   ``σ``, not ``ς`` as ``str.lower`` would give); no ftfy, no HTML unescaping (``&amp;`` stays three words);
3. splits words with CLIP's pattern: contractions (``'s 't 're 've 'm 'll 'd``), runs of letters (Unicode category
   L*), single numeric characters (N*), runs of anything else that is not whitespace (Unicode White_Space, as the
   Oniguruma ``\\s`` of the reference; so U+001C..U+001F are *not* whitespace here, unlike ``str.isspace``);
4. maps each word's UTF-8 bytes to printable characters and applies the BPE merges, the last symbol carrying ``</w>``.

Python's ``re`` has no ``\\p{L}``, so step 3 is a small scanner over ``unicodedata.category``: identical to the
reference for every character Python's Unicode database knows (accents, digits, emoji, CJK, ...; checked exhaustively
over Unicode 14). Code points assigned only in later Unicode versions may be classed differently.
transformers 4.x's *slow* tokenizer without ftfy differed (it split CJK ideographs one per word and dropped control
characters); diffusers with transformers 5 uses the behaviour above, which is what image parity needs.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import unicodedata
from dataclasses import dataclass
from importlib import resources

BOS = 49406
"""``<|startoftext|>``."""
EOS = 49407
"""``<|endoftext|>``; SD1 also pads with it."""
VOCAB_SIZE = 49408
MAX_LENGTH = 77
"""Context length of the CLIP text encoders: BOS + 75 tokens + EOS."""

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48894: CLIP uses only the first ones
_END_OF_WORD = "</w>"
_SPECIALS = {"<|startoftext|>": BOS, "<|endoftext|>": EOS}
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# Unicode White_Space (what the reference's Oniguruma "\s" matches).
_WHITESPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
)


@dataclass(frozen=True)
class _Tables:
    byte_chars: tuple[str, ...]  # byte value -> its printable stand-in
    vocab: dict[str, int]
    ranks: dict[tuple[str, str], int]


def _byte_chars() -> tuple[list[int], list[str]]:
    """Printable bytes stand for themselves, the others for chr(256 + n): BPE never sees whitespace or controls.

    Returns the bytes in vocabulary order (printable ones first) and the stand-in of each byte value.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in set(printable)]
    chars = [""] * 256
    for b in printable:
        chars[b] = chr(b)
    for n, b in enumerate(others):
        chars[b] = chr(256 + n)
    return printable + others, chars


@functools.cache
def _tables() -> _Tables:
    """Read the shipped merge list once and build the vocabulary: bytes, bytes + </w>, one per merge, specials."""
    raw = resources.files("sd_core").joinpath("data", VOCAB_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1 : 1 + _NUM_MERGES]]
    if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{VOCAB_FILE}: expected {_NUM_MERGES} merges of two symbols")
    order, chars = _byte_chars()
    base = [chars[b] for b in order]
    tokens = base + [c + _END_OF_WORD for c in base] + [a + b for a, b in merges] + list(_SPECIALS)
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE or vocab["<|startoftext|>"] != BOS or vocab["<|endoftext|>"] != EOS:
        raise ValueError(f"{VOCAB_FILE}: unexpected vocabulary layout")
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    return _Tables(tuple(chars), vocab, ranks)


def _kind(char: str) -> str:
    """' ' whitespace, 'L' letter, 'N' number, 'P' anything else: the classes of CLIP's word pattern."""
    if char in _WHITESPACE:
        return " "
    category = unicodedata.category(char)[0]
    return category if category in "LN" else "P"


def _normalize(text: str) -> str:
    """NFC then per-character lower case (no context-dependent final sigma), as the reference normaliser."""
    return "".join(char.lower() for char in unicodedata.normalize("NFC", text))


def _split_words(text: str) -> list[str]:
    """Split normalised text into BPE words with CLIP's pattern (whitespace separates and is dropped).

    A special-token spelling that survives normalisation (e.g. from ``<|ENDOFTEXT|>``) is one match of CLIP's pattern
    that the reference's byte-level step splits again into ``<|``, the name and ``|>``; reproduced here.
    """
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        kind = _kind(text[i])
        if kind == " ":
            i += 1
            continue
        special = next((s for s in _SPECIALS if text.startswith(s, i)), None)
        if special is not None:
            words += ["<|", special[2:-2], "|>"]
            i += len(special)
            continue
        contraction = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
        if contraction is not None:
            words.append(contraction)
            i += len(contraction)
            continue
        end = i + 1
        if kind != "N":  # letters and "other" come in runs; numbers one character at a time
            while end < n and _kind(text[end]) == kind:
                end += 1
        words.append(text[i:end])
        i = end
    return words


class CLIPTokenizer:
    """Text -> CLIP token ids. Stateless apart from a per-instance BPE cache; the vocabulary is loaded once."""

    bos: int = BOS
    eos: int = EOS

    def __init__(self, cache_size: int = 16384) -> None:
        self._tables = _tables()
        self._bpe = functools.lru_cache(maxsize=cache_size)(self._bpe_word)

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text``, without BOS/EOS and without truncation."""
        ids: list[int] = []
        for piece in _split_specials(text):
            if piece in _SPECIALS:
                ids.append(_SPECIALS[piece])
                continue
            for word in _split_words(_normalize(piece)):
                ids.extend(self._bpe(word))
        return ids

    def token_id(self, token: str) -> int:
        """Id of a vocabulary entry such as ``",</w>"``; KeyError if absent."""
        return self._tables.vocab[token]

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        """Merge the word's byte symbols by merge rank (lowest first, all occurrences left to right)."""
        tables = self._tables
        symbols = [tables.byte_chars[b] for b in word.encode("utf-8")]
        symbols[-1] += _END_OF_WORD
        ranks = tables.ranks
        while len(symbols) > 1:
            best = min(itertools.pairwise(symbols), key=lambda pair: ranks.get(pair, _NUM_MERGES))
            if best not in ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(tables.vocab[s] for s in symbols)


def _split_specials(text: str) -> list[str]:
    """Cut the raw text around verbatim special tokens (matched before normalisation, case-sensitively)."""
    pieces: list[str] = []
    start = i = 0
    while i < len(text):
        special = next((s for s in _SPECIALS if text.startswith(s, i)), None) if text[i] == "<" else None
        if special is None:
            i += 1
            continue
        pieces += [text[start:i], special]
        i = start = i + len(special)
    pieces.append(text[start:])
    return [p for p in pieces if p]
