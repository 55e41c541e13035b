"""Half-precision weights computed in float32 (`sd_core.accel.half_storage`), the bf16/fp16 path of CPUs without oneDNN
half-precision kernels (AVX2-only). Simulated everywhere by reporting those kernels missing; outputs against the plain
half-precision layers and the float32 ones. No timings here: `benchmarks/bench.py`."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tiny_models as tm
import torch
import torch.nn.functional as F
from model_fixtures import write_tiny_checkpoint
from torch import nn

import sd_core
from sd_core import tiling
from sd_core.accel import half_storage, packing

torch.set_num_threads(1)
HALF_TOL = dict(atol=3e-2, rtol=3e-2)


@pytest.fixture
def no_half_kernels(monkeypatch):
    monkeypatch.setattr(half_storage, "half_kernels_available", lambda dtype: dtype not in half_storage.HALF)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_upcast_unet_matches_the_half_and_float32_unets(no_half_kernels, dtype):
    reference = tm.random_unet("sd1")
    half = copy.deepcopy(reference).to(dtype)
    upcast = copy.deepcopy(half)
    assert half_storage.upcast_half_layers(upcast) > 0
    assert {p.dtype for p in upcast.parameters()} == {dtype}  # the weights stay half precision
    x, t, context = tm.unet_call_inputs("sd1")
    with torch.inference_mode():
        expected = reference(x, t, context)
        plain = half(x.to(dtype), t, context.to(dtype))
        got = upcast(x.to(dtype), t, context.to(dtype))
    assert got.dtype == dtype
    assert not torch.equal(got, plain)  # really another computation
    torch.testing.assert_close(got.float(), plain.float(), **HALF_TOL)
    torch.testing.assert_close(got.float(), expected, **HALF_TOL)


def test_only_half_layers_without_kernels_are_upcast(no_half_kernels, monkeypatch):
    model = nn.Sequential(nn.Linear(4, 4).bfloat16(), nn.Linear(4, 4), nn.Conv2d(2, 2, 1).half())
    assert half_storage.upcast_half_layers(model) == 2
    assert [type(m) for m in model] == [half_storage.UpcastLinear, nn.Linear, half_storage.UpcastConv2d]
    monkeypatch.setattr(half_storage, "half_kernels_available", lambda dtype: True)
    assert half_storage.upcast_half_layers(nn.Sequential(nn.Linear(4, 4).bfloat16())) == 0


def test_upcast_layers_keep_state_dict_and_go_back_on_to(no_half_kernels):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)).bfloat16()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    half_storage.upcast_half_layers(model)
    assert half_storage.is_upcast(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    model.float()
    assert not half_storage.is_upcast(model) and [type(m) for m in model] == [nn.Conv2d, nn.Linear]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    half_storage.upcast_half_layers(model.bfloat16())
    assert half_storage.restore(model) == 2 and not half_storage.is_upcast(model)


def test_seamless_tiling_works_on_upcast_convs(no_half_kernels):
    g = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(3, 3, 3, padding=1).bfloat16()
    x = torch.randn(1, 3, 8, 8, generator=g).bfloat16()
    with torch.inference_mode(), tiling.seamless(conv, "xy"):
        expected = conv(x)
    half_storage.upcast_half_layers(conv)
    with torch.inference_mode(), tiling.seamless(conv, "xy"):
        got = conv(x)
        wrapped = F.conv2d(F.pad(x.float(), (1, 1, 1, 1), mode="circular"), conv.weight.float(), conv.bias.float())
    torch.testing.assert_close(got.float(), expected.float(), **HALF_TOL)
    torch.testing.assert_close(got, wrapped.bfloat16(), rtol=0, atol=0)


def test_upcast_layers_train(no_half_kernels):
    """Autograd flows through the float32 computation to the half-precision weights."""
    layer = nn.Linear(4, 3).bfloat16()
    half_storage.upcast_half_layers(layer)
    layer(torch.randn(2, 4).bfloat16()).float().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.bfloat16


def test_bf16_pipeline_without_half_kernels_upcasts_and_matches_plain(tmp_path, no_half_kernels):
    path = write_tiny_checkpoint(tmp_path / "tiny.safetensors")
    pipe = sd_core.load(path, device="cpu", dtype="bf16")
    assert half_storage.is_upcast(pipe.unet) and half_storage.is_upcast(pipe.text_encoder)
    assert not packing.is_packed(pipe.unet)  # oneDNN "cannot" pack bf16 here
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.bfloat16}
    plain = sd_core.load(path, device="cpu", dtype="bf16", optimize=False)
    assert not half_storage.is_upcast(plain.unet)
    kw = dict(width=64, height=64, steps=3, cfg_scale=7.5, seed=5)
    a = np.asarray(pipe.txt2img("a red brick wall", **kw)[0], np.float64)
    b = np.asarray(plain.txt2img("a red brick wall", **kw)[0], np.float64)
    assert b.std() > 5 and np.abs(a - b).mean() < 3, np.abs(a - b).mean()  # same image up to bf16 rounding
