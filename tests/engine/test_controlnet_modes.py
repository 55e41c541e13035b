"""ControlNet with hires fix (the second pass guided at the hires size), seamless tiling (the nets wrap around as the
UNet does: rolling the noise and the control image rolls the image), outpainting, and the A1111 extension's step
rule and soft control modes against diffusers' rule and balanced mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from controlnet_fixtures import write_controlnet_file
from model_fixtures import write_tiny_checkpoint

import sd_core


@pytest.fixture(scope="module")
def pipe_and_net(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn_modes")
    pipe = sd_core.load(write_tiny_checkpoint(root / "m.safetensors"), device="cpu", dtype=torch.float32)
    return pipe, sd_core.load_controlnet(write_controlnet_file(root / "cn.safetensors"), "cpu", torch.float32)


def stripes(width: int = 128, height: int = 64) -> np.ndarray:
    x = np.arange(width)
    row = np.where((x // 8) % 2, 255, 0).astype(np.uint8)
    img = np.repeat(np.repeat(row[None, :, None], height, 0), 3, 2)
    img[20:40, 30:60] = 128
    return img


def px(images) -> np.ndarray:
    return np.asarray(images[0], dtype=np.float64)


def test_hires_fix_guides_both_passes(pipe_and_net):
    pipe, net = pipe_and_net
    hires = sd_core.HiresOptions(scale=1.5, upscaler="Latent", strength=0.6, steps=3)
    kw = dict(width=64, height=64, steps=3, seed=4, hires=hires)
    guided = px(pipe.txt2img("a wall", control=[sd_core.Control(net, stripes())], **kw))
    plain = px(pipe.txt2img("a wall", **kw))
    assert guided.shape == (96, 96, 3)
    assert np.abs(guided - plain).mean() > 1.0


def test_seamless_tiling_wraps_the_controlnet_too(pipe_and_net):
    """Rolling the start noise by 4 latents and the control image by 32 pixels rolls the seamless image by 32
    pixels; with the net left out of the seamless padding the roll does not carry over as well."""
    pipe, net = pipe_and_net
    noise = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(9))
    text = pipe.encode_prompt("stripes")
    image = stripes()

    def run(nets: list, shift: int) -> np.ndarray:
        unit = sd_core.Control(net, np.roll(image, shift * 8, axis=1))
        settings = sd_core.GenerationSettings(prompt="stripes", steps=4, cfg_scale=7.5, tiling="x", control=[unit])
        with sd_core.tiling.seamless([pipe.unet, pipe.vae, *nets], "x"):
            lat = pipe.denoise(settings, torch.roll(noise, shift, dims=-1), text, torch.Generator().manual_seed(0))
            return np.asarray(pipe.decode_latents(lat, seamless="x")[0]).astype(float)

    wrapped = np.abs(np.roll(run([net], 0), 32, axis=1) - run([net], 4)).mean()
    unwrapped = np.abs(np.roll(run([], 0), 32, axis=1) - run([], 4)).mean()
    assert wrapped < 1.0, wrapped
    assert unwrapped > 2 * wrapped + 0.5, (wrapped, unwrapped)


def test_outpaint_takes_control(pipe_and_net):
    pipe, net = pipe_and_net
    start = np.full((64, 64, 3), 120, np.uint8)
    kw = dict(right=32, steps=3, seed=2, mask_blur=0)
    guided = px(pipe.outpaint(start, "a wall", control=[sd_core.Control(net, stripes(96, 64))], **kw))
    plain = px(pipe.outpaint(start, "a wall", **kw))
    assert guided.shape == (64, 96, 3) and np.abs(guided[:, 64:] - plain[:, 64:]).mean() > 1.0


def test_the_extensions_rule_guides_one_more_step_at_the_end(pipe_and_net):
    _, net = pipe_and_net
    unit = dict(image=np.zeros((8, 8, 3), np.uint8), start=0.2, end=0.8)
    diffusers_rule = [s for s in range(10) if sd_core.Control(net, **unit).active(s, 10)]
    a1111_rule = [s for s in range(10) if sd_core.Control(net, steps="a1111", **unit).active(s, 10)]
    assert diffusers_rule == [2, 3, 4, 5, 6, 7]
    assert a1111_rule == [2, 3, 4, 5, 6, 7, 8]


def test_soft_control_modes_change_the_image(pipe_and_net):
    pipe, net = pipe_and_net
    kw = dict(width=64, height=64, steps=3, seed=6)
    images = {
        mode: px(pipe.txt2img("a wall", control=[sd_core.Control(net, stripes(), control_mode=mode)], **kw))
        for mode in ("balanced", "prompt", "controlnet")
    }
    assert np.abs(images["balanced"] - images["prompt"]).mean() > 0.5
    assert np.abs(images["prompt"] - images["controlnet"]).mean() > 0.5
