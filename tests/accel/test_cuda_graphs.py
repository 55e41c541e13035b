"""CUDA graph replay of UNet steps (`sd_core.accel.cuda_graphs`): graphed vs eager outputs, and when graphs are used.

The graph tests need a CUDA GPU (they run on the lent GPU machine: `benchmarks/gpu_check.sh`); the rules for when
graphs apply, and the eager fallback, are tested everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models as tm
import torch
from model_fixtures import write_tiny_checkpoint

import sd_core
from sd_core import accel
from sd_core.accel import cuda_graphs

needs_cuda = pytest.mark.cuda  # skipped where torch sees no CUDA device (tests/conftest.py)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("graphs") / "tiny.safetensors")


def test_graphs_only_on_cuda_and_not_with_sequential_offload():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert cuda_graphs.graphs_usable(cuda)
    assert not cuda_graphs.graphs_usable(cpu)
    assert cuda_graphs.graphs_usable(cuda, accel.LowVRAM(cuda))  # the UNet stays put: graphs still apply
    assert not cuda_graphs.graphs_usable(cuda, accel.LowVRAM(cuda, sequential=True))


def test_signatures_past_the_limit_run_eagerly():
    unet = tm.random_unet("sd1")
    graphed = cuda_graphs.GraphedUNet(unet, max_graphs=0)
    x, t, context = tm.unet_call_inputs("sd1")
    with torch.inference_mode():
        assert torch.equal(graphed(x, t, context), unet(x, t, context))
    assert graphed.eager_calls == 1 and not graphed.graphs


def test_moved_weights_are_noticed():
    """The graphs read the weights where they were at capture: a move (offload and back) must be seen, an in-place
    change (same memory) must not."""
    unet = tm.random_unet("sd1")
    graphed = cuda_graphs.GraphedUNet(unet)
    graphed.remember_weights()
    with torch.no_grad():
        next(unet.parameters()).mul_(2)
    assert not graphed.weights_moved()
    unet.to(torch.float64)  # new storage for every weight, as .to("cpu") / .to("cuda") give
    assert graphed.weights_moved()


def test_cpu_pipelines_do_not_use_graphs(tiny_file):
    pipe = sd_core.load(tiny_file, device="cpu")
    assert pipe.accel.cuda_graphs is False


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_graph_replays_match_eager_calls(dtype):
    """The first call runs eagerly (and captures), later calls replay with their own inputs copied in."""
    unet = tm.random_unet("sd1").to("cuda", dtype)
    graphed = cuda_graphs.GraphedUNet(unet)
    x, t, context = (v.to("cuda") for v in tm.unet_call_inputs("sd1"))
    calls = [(x, t, context), (x * 0.5, t * 0.5, context), (x.flip(0), t, context.flip(0))]
    with torch.inference_mode():
        expected = [unet(*c) for c in calls]
        got = [graphed(*c) for c in calls]
        repeat = graphed(*calls[1])
    assert graphed.replays == 3 and graphed.eager_calls == 1 and len(graphed.graphs) == 1
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-3, "rtol": 2e-3}
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, **tol)
    torch.testing.assert_close(repeat, expected[1], **tol)
    assert got[1].data_ptr() != repeat.data_ptr()  # each answer is its own tensor, not the graph's output buffer


@needs_cuda
def test_a_new_shape_gets_its_own_graph_up_to_the_limit():
    unet = tm.random_unet("sd1").to("cuda")
    graphed = cuda_graphs.GraphedUNet(unet, max_graphs=1)
    x, t, context = (v.to("cuda") for v in tm.unet_call_inputs("sd1"))
    small = (x[:, :, :8, :8], t, context)
    with torch.inference_mode():
        graphed(x, t, context)
        torch.testing.assert_close(graphed(*small), unet(*small), atol=1e-5, rtol=1e-5)
        graphed(x, t, context)
    assert len(graphed.graphs) == 1 and graphed.eager_calls == 2 and graphed.replays == 1


@needs_cuda
def test_weights_moved_between_calls_are_captured_again():
    unet = tm.random_unet("sd1").to("cuda")
    graphed = cuda_graphs.GraphedUNet(unet)
    x, t, context = (v.to("cuda") for v in tm.unet_call_inputs("sd1"))
    with torch.inference_mode():
        graphed(x, t, context)
    unet.cpu().cuda()  # offloaded and brought back: the captured graph would read freed memory
    with torch.inference_mode():
        torch.testing.assert_close(graphed(x * 0.5, t, context), unet(x * 0.5, t, context), atol=1e-5, rtol=1e-5)
        graphed(x, t, context)
    assert graphed.eager_calls == 2 and graphed.replays == 1


@needs_cuda
@pytest.mark.parametrize("low_vram", [False, True])
def test_cuda_txt2img_with_graphs_matches_eager(tiny_file, low_vram):
    pipe = sd_core.load(tiny_file, device="cuda", dtype=torch.float32, low_vram=low_vram)
    assert pipe.accel.cuda_graphs
    kw = dict(width=64, height=64, steps=4, cfg_scale=7.5, seed=5, batch_size=2)
    graphed = np.stack([np.asarray(i, np.float64) for i in pipe.txt2img("a red brick wall", **kw)])
    pipe.accel.cuda_graphs = False
    eager = np.stack([np.asarray(i, np.float64) for i in pipe.txt2img("a red brick wall", **kw)])
    assert eager.std() > 5
    assert np.abs(graphed - eager).mean() < 0.05, np.abs(graphed - eager).mean()


@needs_cuda
def test_cuda_txt2img_with_a_controlnet_in_the_graphs_matches_eager(tiny_file, tmp_path):
    """The ControlNet residuals are graph inputs: replays with new residuals give the eager images."""
    from controlnet_fixtures import write_controlnet_file

    pipe = sd_core.load(tiny_file, device="cuda", dtype=torch.float32)
    net = sd_core.load_controlnet(write_controlnet_file(tmp_path / "cn.safetensors"), "cuda", torch.float32)
    hint = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3))
    kw = dict(width=64, height=64, steps=4, cfg_scale=7.5, seed=5, control=[sd_core.Control(net, hint, end=0.6)])
    graphed = np.asarray(pipe.txt2img("a red brick wall", **kw)[0], np.float64)
    pipe.accel.cuda_graphs = False
    eager = np.asarray(pipe.txt2img("a red brick wall", **kw)[0], np.float64)
    plain = np.asarray(pipe.txt2img("a red brick wall", **{**kw, "control": []})[0], np.float64)
    assert np.abs(eager - plain).mean() > 1.0
    assert np.abs(graphed - eager).mean() < 0.05, np.abs(graphed - eager).mean()
