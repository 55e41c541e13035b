"""Low-VRAM mode with ControlNets (`LowVRAM.with_unet`): the nets move with the UNet, not swapped with it at every
step; the image is the one without offloading; afterwards the nets stay offloaded (as the models between runs) and
a pipeline without offloading brings them back to its device. Device "cpu" with the
offload device "cpu:0" (the same memory, but the moves can be told apart), as the other LowVRAM tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from controlnet_fixtures import write_controlnet_file
from model_fixtures import write_tiny_checkpoint

import sd_core
from sd_core import accel


@pytest.mark.parametrize("sequential", [False, True])
def test_controlnets_move_with_the_unet(tmp_path, sequential):
    pipe = sd_core.load(write_tiny_checkpoint(tmp_path / "m.safetensors"), device="cpu", dtype=torch.float32)
    net = sd_core.load_controlnet(write_controlnet_file(tmp_path / "cn.safetensors"), "cpu", torch.float32)
    hint = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3))
    kw = dict(width=64, height=64, steps=3, seed=3, control=[sd_core.Control(net, hint)])
    reference = np.asarray(pipe.txt2img("a cat", **kw)[0], np.float64)
    offload = accel.LowVRAM("cpu", "cpu:0", sequential=sequential).attach(pipe)
    start = len(offload.moves)
    image = np.asarray(pipe.txt2img("a cat", **kw)[0], np.float64)
    assert np.abs(image - reference).mean() < 0.05
    moves = offload.moves[start:]
    net_moves = [device for name, device in moves if name == "controlnet.0"]
    if sequential:  # the net alone while it runs: in at each of the 3 steps (and for its hint), out for the UNet
        assert net_moves.count("cpu") >= 3
    else:  # in once with the UNet for the whole run, out at its end
        assert net_moves == ["cpu:0", "cpu", "cpu:0"]
        unet_in = [i for i, m in enumerate(moves) if m == ("unet", "cpu")]
        assert len(unet_in) == 1
    assert "controlnet.0" not in offload.resident and offload.companions == {}
    assert net_moves[-1] == "cpu:0"  # offloaded last
    offload.detach()
    again = np.asarray(pipe.txt2img("a cat", **kw)[0], np.float64)
    assert np.abs(again - reference).mean() < 0.05


def test_a_controlnet_gets_the_levers_of_the_unet_it_guides(tmp_path):
    """On the CPU a packed pipeline packs its ControlNets too (the net is a third of a UNet's work; plain, it took
    longer than the packed UNet); an unoptimised pipeline leaves them plain. The images agree."""
    from sd_core.accel import packing

    path = write_tiny_checkpoint(tmp_path / "m.safetensors")
    cn = write_controlnet_file(tmp_path / "cn.safetensors")
    hint = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3))
    kw = dict(width=64, height=64, steps=2, seed=3)
    plain_pipe = sd_core.load(path, device="cpu", dtype=torch.float32, optimize=False)
    plain_net = sd_core.load_controlnet(cn, "cpu", torch.float32)
    plain = np.asarray(plain_pipe.txt2img("a cat", control=[sd_core.Control(plain_net, hint)], **kw)[0], np.float64)
    assert not packing.is_packed(plain_net)
    pipe = sd_core.load(path, device="cpu", dtype=torch.float32)
    net = sd_core.load_controlnet(cn, "cpu", torch.float32)
    packed = np.asarray(pipe.txt2img("a cat", control=[sd_core.Control(net, hint)], **kw)[0], np.float64)
    if packing.is_packed(pipe.unet):  # oneDNN available: the net is packed like the UNet
        assert packing.is_packed(net) and net.share_timestep_embedding
    assert np.abs(packed - plain).mean() < 0.5
