"""`accel.weights`: how a weight patch reaches layers under the speed levers and leaves them exactly as they were."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sd_core.accel import packing
from sd_core.accel.weights import dense_weights, replace_weights


def conv() -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(16, 16, 3, padding=1).eval()


def test_a_packed_layer_computes_with_the_new_weight_and_gets_its_packed_weight_back():
    layer, x = conv(), torch.randn(1, 16, 8, 8)
    if not packing.pack_for_cpu(layer):
        pytest.skip("oneDNN packing is not available on this CPU")
    with torch.no_grad():
        before = layer(x)  # packs the weight for this shape
    packed = layer.weight
    weight, bias = dense_weights(layer)
    saved = replace_weights(layer, weight * 2, bias)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), nn.functional.conv2d(x, weight * 2, bias, padding=1))
    saved.restore()
    assert layer.weight is packed
    with torch.no_grad():
        assert torch.equal(layer(x), before)


def test_restore_after_a_lever_unpacked_the_layer_puts_its_class_back():
    layer = conv()
    if not packing.pack_for_cpu(layer):
        pytest.skip("oneDNN packing is not available on this CPU")
    with torch.no_grad():
        layer(torch.randn(1, 16, 8, 8))
    kind, packed = type(layer), layer.weight
    saved = replace_weights(layer, *dense_weights(layer))
    packing.unpack(layer)
    saved.restore()
    assert type(layer) is kind and layer.weight is packed


def test_channels_last_weights_stay_channels_last():
    layer = conv().to(memory_format=torch.channels_last)
    weight, bias = dense_weights(layer)
    replace_weights(layer, weight.contiguous() + 1, bias)
    assert layer.weight.is_contiguous(memory_format=torch.channels_last)
