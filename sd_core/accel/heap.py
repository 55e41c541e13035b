"""The C heap under PyTorch's CPU tensors (glibc on Linux): when freed memory goes back to the OS, and when it stays.

Two opposite needs, each at its own moment:
- Between sampling and the VAE decode, and between the decoder's levels, freed memory should leave RSS before the
  next, larger buffers arrive (`release_free_heap`): lower peak RSS.
- Inside the sampling loop every step frees and re-allocates the same activations. By default glibc serves each large
  block with a fresh mmap and unmaps it at free, so every step faults its buffers in again, page by page, zeroed by
  the kernel (SD1.5 float32 256x256 batch 4 on a 2-core Zen 3: about 200,000 page faults per UNet call).
  `freed_memory_kept` keeps freed memory mapped for reuse while sampling: a few hundred faults per call once the
  heap has grown, the call 0.97x the time (four alternations, every kept call faster); three calls from a trimmed
  heap, the first of them still faulting, 0.99x (`benchmarks/bench.py --levers`). Opt-in, because glibc's settings
  are the whole process's (`sd_core.load(..., keep_freed_memory=True)`; the CLI asks for it, the server does not):
  the sampling context enters it after the first step, which packs the weights for the image size: kept, that
  step's temporaries raised the peak RSS of a fresh process's first 256x256 image by 400 MiB.
- Not for the VAE decode: kept, a 512x512 decode took 0.90x the time but its working memory, the peak of the whole
  generation, went from 680 to 1100 MiB.

Both are no-ops off glibc, and `freed_memory_kept` also where the user tunes malloc themselves (MALLOC_* environment
variables or GLIBC_TUNABLES): their settings win. glibc cannot report its settings, and any mallopt call freezes its
dynamic mmap threshold, so leaving the block sets glibc's own default values back rather than whatever was there
before (docs/design.md, "Global state").
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
import threading
from collections.abc import Iterator

# glibc's mallopt parameters and the values it runs with when nobody set them: M_MMAP_MAX's default, and the trim
# threshold its dynamic rule settles at in a process that has freed a large block (2 x the 32 MiB mmap threshold cap)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536
_SETTLED_TRIM_THRESHOLD = 64 << 20
_KEEP_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the largest, "never trim at free"

_depth = 0  # nested/concurrent `freed_memory_kept` blocks: glibc's settings are the process's, restored by the last
_depth_lock = threading.Lock()


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has malloc_trim and mallopt), else None (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both must exist
        return libc
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Give the heap pages freed so far back to the OS; True where that is possible (Linux with glibc).

    Why: glibc keeps freed memory mapped for reuse, so the UNet's step buffers, freed when sampling ends, still count
    in RSS while the VAE decodes, and the decoder's buffers come on top of them. Trimming between the two lowered
    peak RSS of an SD1.5 float32 256x256 run by about 140 MiB (`benchmarks/bench.py`, fresh process), for a few
    milliseconds."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def _user_tunes_malloc() -> bool:
    return "GLIBC_TUNABLES" in os.environ or any(name.startswith("MALLOC_") for name in os.environ)


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """Inside the block, memory freed stays mapped for the next allocation (glibc: no mmap'd blocks, no trim at
    free); yields whether that is in effect. On leaving, glibc's usual settings return and the free pages go back
    to the OS (`release_free_heap`), so RSS after the block is what it would have been."""
    global _depth
    libc = None if _user_tunes_malloc() else _glibc()
    if libc is None:
        yield False
        return
    with _depth_lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_TRIM_THRESHOLD)
    try:
        yield True
    finally:
        with _depth_lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _SETTLED_TRIM_THRESHOLD)
                libc.malloc_trim(0)
