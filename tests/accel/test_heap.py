"""The C heap under CPU tensors: freed memory returned before the VAE decode, kept for reuse while sampling."""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch
from model_fixtures import write_tiny_checkpoint

import sd_core
from sd_core.accel import heap

glibc_only = pytest.mark.skipif(heap._glibc() is None, reason="malloc_trim/mallopt are glibc's (Linux)")
BLOCK = 64 << 20  # above glibc's largest mmap threshold (32 MiB): by default such a block is unmapped at free


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("heap") / "tiny.safetensors")


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_dropped_by_freeing_a_block() -> int:
    """Resident bytes that leave when a touched BLOCK-sized tensor is freed."""
    block = torch.ones(BLOCK // 4)
    before = resident_bytes()
    del block
    return before - resident_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (Linux)")
def test_release_free_heap_is_available_on_linux():
    assert heap.release_free_heap() is True


@glibc_only
def test_freed_memory_stays_mapped_inside_the_block_and_leaves_after_it():
    assert rss_dropped_by_freeing_a_block() > BLOCK * 0.9  # glibc's default: unmapped at free
    with heap.freed_memory_kept() as kept:
        assert kept is True
        assert rss_dropped_by_freeing_a_block() < BLOCK * 0.1  # kept for the next step's allocations
        after_free = resident_bytes()
    assert after_free - resident_bytes() > BLOCK * 0.9  # handed back on leaving
    assert rss_dropped_by_freeing_a_block() > BLOCK * 0.9  # and glibc's behaviour is back


@glibc_only
def test_nested_blocks_keep_memory_until_the_outermost_ends():
    with heap.freed_memory_kept():
        with heap.freed_memory_kept():
            pass
        # the inner block's exit must not have restored glibc's defaults under the outer one
        assert rss_dropped_by_freeing_a_block() < BLOCK * 0.1
    assert rss_dropped_by_freeing_a_block() > BLOCK * 0.9


@glibc_only
def test_users_own_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    with heap.freed_memory_kept() as kept:
        assert kept is False
        assert rss_dropped_by_freeing_a_block() > BLOCK * 0.9


@pytest.mark.parametrize("asked", [True, False])
def test_cpu_sampling_keeps_freed_memory_after_the_first_step_when_asked(tiny_file, monkeypatch, asked):
    """Opt-in (`keep_freed_memory=True`): glibc's settings are the whole process's, so a library call that did not
    ask for it never changes them."""
    pipe = sd_core.load(tiny_file, device="cpu", dtype=torch.float32, keep_freed_memory=asked)
    inside = []
    unet_calls = []
    real = heap.freed_memory_kept

    @contextlib.contextmanager
    def recording():
        inside.append(True)
        with real() as kept:
            yield kept
        inside.append(False)

    monkeypatch.setattr(heap, "freed_memory_kept", recording)
    hook = pipe.unet.register_forward_pre_hook(lambda _m, _a: unet_calls.append(inside[-1] if inside else None))
    pipe.txt2img("a red brick wall", width=64, height=64, steps=3, seed=1)
    hook.remove()
    if not asked:
        assert unet_calls == [None, None, None] and inside == []
        return
    # the first step outside (it packs the weights: their temporaries go back), then every step inside; left before
    # the decode
    assert unet_calls == [None, True, True] and inside == [True, False]


def test_cpu_decode_hands_the_freed_heap_back_first(tiny_file, monkeypatch):
    """Peak RSS: the sampler's freed buffers leave the heap before the VAE decoder allocates its own."""
    pipe = sd_core.load(tiny_file, device="cpu", dtype=torch.float32)
    calls = []
    decode = pipe.vae.decode
    monkeypatch.setattr(heap, "release_free_heap", lambda: calls.append("trim") or True)
    monkeypatch.setattr(pipe.vae, "decode", lambda z: calls.append("decode") or decode(z))
    pipe.txt2img("a red brick wall", width=64, height=64, steps=2, seed=1)
    # then once more before each decoder level (each level's freed activations out before the next, 4x larger, one)
    assert calls == ["trim", "decode"] + ["trim"] * len(pipe.vae.decoder.up)
