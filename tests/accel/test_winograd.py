"""Winograd F(4x4,3x3) convolutions (`sd_core.accel.winograd`) against float64 direct convolution, and where packed
convs use them. No timings here: `benchmarks/bench.py --levers` A/Bs them."""

from __future__ import annotations

import copy

import pytest
import tiny_models as tm
import torch
import torch.nn.functional as F
from torch import nn

from sd_core.accel import packing, winograd
from sd_core.models import layers
from sd_core.models.vae import AutoencoderKL

torch.set_num_threads(1)
needs_onednn = pytest.mark.skipif(not packing.packing_available(), reason="oneDNN packed ops not available")


def reference(x, weight, bias=None, residual=None):
    y = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)
    return y if residual is None else y + residual.double()


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def random_conv(ci: int, co: int, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(ci, co, 3, padding=1)
    nn.init.normal_(conv.bias, std=0.5)
    return conv.requires_grad_(False)


@pytest.mark.parametrize(
    "n, ci, co, h, w",
    [(1, 8, 8, 4, 4), (2, 5, 7, 8, 12), (1, 16, 3, 20, 8), (3, 4, 16, 12, 16)],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv3x3_matches_direct_convolution(n, ci, co, h, w, channels_last):
    conv = random_conv(ci, co)
    x = torch.randn(n, ci, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = winograd.conv3x3(x, conv.weight, conv.bias)
    assert y.shape == (n, co, h, w)
    assert relative_error(y, reference(x, conv.weight, conv.bias)) < 3e-5


def test_conv3x3_adds_the_residual_and_works_without_bias():
    conv = random_conv(6, 10)
    x, res = torch.randn(2, 6, 8, 8), torch.randn(2, 10, 8, 8)
    assert (
        relative_error(winograd.conv3x3(x, conv.weight, conv.bias, res), reference(x, conv.weight, conv.bias, res))
        < 3e-5
    )
    assert relative_error(winograd.conv3x3(x, conv.weight, None, res), reference(x, conv.weight, None, res)) < 3e-5
    assert relative_error(winograd.conv3x3(x, conv.weight), reference(x, conv.weight)) < 3e-5


def test_conv3x3_bands_and_kernel_slices_give_the_same_result(monkeypatch):
    """A tiny band budget: one tile row per band, several output-channel slices of the kernel, each written to its
    own part of the output; nothing lost or written twice at band and slice edges."""
    conv = random_conv(24, 160)
    x, res = torch.randn(1, 24, 16, 12), torch.randn(1, 160, 16, 12)
    monkeypatch.setattr(winograd, "MIN_BAND_TILES", 1)
    monkeypatch.setattr(winograd, "MIN_SLICE", 16)
    whole = winograd.conv3x3(x, conv.weight, conv.bias, res, band_bytes=1 << 30)
    banded = winograd.conv3x3(x, conv.weight, conv.bias, res, band_bytes=1)
    # the same sums, rounded differently (GEMMs of other sizes): a few 1e-5 where a lost or doubled edge would be ~1
    assert torch.allclose(banded, whole, atol=5e-5, rtol=0)
    assert relative_error(banded, reference(x, conv.weight, conv.bias, res)) < 3e-5


def test_conv3x3_rejects_what_it_cannot_compute():
    conv = random_conv(4, 4)
    with pytest.raises(ValueError, match="multiples of 4"):
        winograd.conv3x3(torch.randn(1, 4, 6, 8), conv.weight)
    with pytest.raises(ValueError, match=r"\[C_out, 4, 3, 3\]"):
        winograd.conv3x3(torch.randn(1, 4, 8, 8), torch.randn(4, 4, 5, 5))


def test_applies_only_to_large_float32_3x3_same_convs():
    conv = nn.Conv2d(128, 128, 3, padding=1)
    x = torch.randn(1, 128, 32, 32)  # 64 tiles
    assert winograd.applies(x, conv)
    assert not winograd.applies(x[:, :, :28, :28], conv)  # 49 tiles
    assert not winograd.applies(torch.randn(1, 128, 30, 32), conv)  # not whole tiles
    assert not winograd.applies(x.bfloat16(), conv)
    assert not winograd.applies(torch.randn(1, 64, 32, 32), nn.Conv2d(64, 128, 3, padding=1))
    assert not winograd.applies(x, nn.Conv2d(128, 128, 3, padding=1, stride=2))
    assert not winograd.applies(x, nn.Conv2d(128, 128, 1))
    assert not winograd.applies(x, nn.Conv2d(128, 128, 3, padding=1, padding_mode="circular"))


def packed_pair(ci: int = 128, co: int = 128) -> tuple[nn.Conv2d, nn.Conv2d]:
    plain = random_conv(ci, co)
    packed = random_conv(ci, co)
    holder = nn.Sequential(packed)
    packing.pack_for_cpu(holder)
    return plain, holder[0]


@needs_onednn
def test_packed_conv_runs_winograd_where_it_applies_and_matches_plain(monkeypatch):
    plain, packed = packed_pair()
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, res, emb = torch.randn(1, 128, 32, 32), torch.randn(1, 128, 32, 32), torch.randn(1, 128)
    with torch.no_grad():
        assert relative_error(packed(x), reference(x, plain.weight, plain.bias)) < 3e-5
        assert relative_error(layers.add_residual(packed, x, res), reference(x, plain.weight, plain.bias, res)) < 3e-5
        with_emb = reference(x, plain.weight, plain.bias) + emb.double()[:, :, None, None]
        assert relative_error(layers.add_channel_bias(packed, x, emb), with_emb) < 3e-5
    assert len(calls) == 3
    assert not packed.weight.is_mkldnn  # kept plain: the Winograd kernel is built from it
    assert torch.equal(packed.state_dict()["weight"], plain.weight)


@needs_onednn
def test_packed_conv_packs_for_shapes_winograd_does_not_pay_on():
    plain, packed = packed_pair()
    x = torch.randn(1, 128, 16, 16)  # 16 tiles
    with torch.no_grad():
        y = packed(x)
    assert packed.weight.is_mkldnn
    assert torch.allclose(y, plain(x), atol=2e-5, rtol=1e-4)
    with torch.no_grad():  # a bigger image later: back to the plain weight, same values
        big = torch.randn(1, 128, 32, 32)
        assert relative_error(packed(big), reference(big, plain.weight, plain.bias)) < 3e-5
    assert not packed.weight.is_mkldnn
    assert torch.equal(packed.weight, plain.weight)


@needs_onednn
def test_use_winograd_false_keeps_convs_on_onednn(monkeypatch):
    plain, packed = packed_pair()
    monkeypatch.setattr(winograd, "conv3x3", lambda *a, **k: pytest.fail("Winograd used while turned off"))
    holder = nn.Sequential(packed)
    assert packing.use_winograd(holder, False) == 1
    x = torch.randn(1, 128, 32, 32)
    with torch.no_grad():
        assert torch.allclose(packed(x), plain(x), atol=2e-5, rtol=1e-4)
    assert packed.weight.is_mkldnn


@needs_onednn
def test_packed_vae_decoder_with_winograd_matches_plain(monkeypatch):
    """A VAE as wide as SD's narrowest decoder level (128 channels), where the packed decoder's 3x3 convs go
    through Winograd: the decoded image agrees with the plain decoder's to float32 rounding."""
    plain = AutoencoderKL({**tm.vae_config(), "ch": 128, "ch_mult": [1, 1]}).eval()
    torch.manual_seed(0)
    for p in plain.parameters():
        p.data.normal_(0, 0.02)
    packed = copy.deepcopy(plain)
    packing.pack_for_cpu(packed)
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *a, **k: calls.append(1) or real(*a, **k))
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = plain.decode(z).double()
        got = packed.decode(z)
    assert len(calls) >= 4
    assert relative_error(got, expected) < 1e-4
