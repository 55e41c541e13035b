"""ControlNet files and network: the original layout (with and without `control_model.`, .safetensors and .pth),
diffusers folders and diffusers-named files all load into the same network, whose residuals are diffusers'; the
family comes from the shapes."""

from __future__ import annotations

import pytest
import torch
from controlnet_fixtures import controlnet_folder, diffusers_controlnet, write_controlnet_file

import sd_core
from sd_core.checkpoint import CheckpointError
from sd_core.controlnet import load_controlnet, read_controlnet_state_dict

TEXT = {"sd1": 128, "sd2": 128, "sdxl": 192}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref.float()).abs().max() / ref.float().abs().max())


def inputs(family: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {
        "x": torch.randn(2, 4, 8, 8, generator=g),
        "t": torch.tensor([700.0, 700.0]),
        "context": torch.randn(2, 7, TEXT[family], generator=g),
        "hint": torch.rand(2, 3, 64, 64, generator=g),
    }
    if family == "sdxl":
        out["text_embeds"] = torch.randn(2, 128, generator=g)
        out["time_ids"] = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
    return out


def reference(family: str, inp: dict) -> list[torch.Tensor]:
    net = diffusers_controlnet(family)
    kw = {}
    if family == "sdxl":
        kw["added_cond_kwargs"] = {"text_embeds": inp["text_embeds"], "time_ids": inp["time_ids"]}
    down, mid = net(inp["x"], inp["t"], inp["context"], inp["hint"], return_dict=False, **kw)
    return [*down, mid]


def ours(net, family: str, inp: dict) -> list[torch.Tensor]:
    y = None
    if family == "sdxl":
        from sd_core.models.conditioner import size_vector

        y = size_vector(inp["text_embeds"], inp["time_ids"], 256)
    return net(inp["x"], inp["t"], inp["context"], inp["hint"], y)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@torch.inference_mode()
def test_residuals_match_diffusers_from_folder_and_single_file(tmp_path, family):
    inp = inputs(family)
    expected = reference(family, inp)
    for net in (
        load_controlnet(controlnet_folder(family), "cpu", torch.float32),
        load_controlnet(write_controlnet_file(tmp_path / "cn.safetensors", family), "cpu", torch.float32),
        load_controlnet(
            write_controlnet_file(tmp_path / "bare.safetensors", family, prefix=False), "cpu", torch.float32
        ),
    ):
        assert net.family == family
        got = ours(net, family, inp)
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert b.abs().max() > 1e-3, "a zero residual would prove nothing"
            assert rel_err(a, b) < 1e-5


@torch.inference_mode()
def test_pth_and_diffusers_named_single_file_load(tmp_path):
    from safetensors.torch import load_file, save_file

    inp = inputs("sd1")
    expected = reference("sd1", inp)
    original = read_controlnet_state_dict(controlnet_folder("sd1"))
    torch.save({"state_dict": {"control_model." + k: v for k, v in original.items()}}, tmp_path / "cn.pth")
    diffusers_named = load_file(str(controlnet_folder("sd1") / "diffusion_pytorch_model.safetensors"))
    save_file(diffusers_named, str(tmp_path / "diffusers_named.safetensors"))
    for path in (tmp_path / "cn.pth", tmp_path / "diffusers_named.safetensors"):
        got = ours(load_controlnet(path, "cpu", torch.float32), "sd1", inp)
        assert max(rel_err(a, b) for a, b in zip(got, expected, strict=True)) < 1e-5


def test_pickle_with_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"control_model.x": Evil()}, f)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_controlnet(path, "cpu", torch.float32)


def test_public_api_exports_load_controlnet(tmp_path):
    net = sd_core.load_controlnet(write_controlnet_file(tmp_path / "cn.safetensors"), device="cpu", dtype="float32")
    assert net.family == "sd1" and net.name == "cn"
    assert net.config["num_heads"] == 8 and net.config["context_dim"] == 128


def test_a_stable_diffusion_model_is_not_a_controlnet(tmp_path):
    from model_fixtures import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: this is a Stable Diffusion model"):
        load_controlnet(path, "cpu", torch.float32)


def test_a_controlnet_is_not_a_model_for_load(tmp_path):
    path = write_controlnet_file(tmp_path / "cn.safetensors")
    with pytest.raises(CheckpointError, match="ControlNet"):
        sd_core.load(path, device="cpu", dtype=torch.float32)
