"""AC1: a random-weight ControlNet of the released SD1.5 ControlNets' size, written by sd_core in the original layout,
loads in diffusers' own `ControlNetModel.from_single_file` (offline, local config) and in sd_core, and the down and
middle residuals agree within 1e-4 (relative to each residual's largest value) in float32."""

from __future__ import annotations

import json

import pytest
import torch
from controlnet_fixtures import HINT_CHANNELS, randomize_zero_modules_
from model_fixtures import _perturb
from sd15_reference import UNET

pytestmark = pytest.mark.slow
REL_TOL = 1e-4
# lllyasviel/control_v11p_sd15_*: the SD1.5 UNet's encoder, the default hint block
SD15_CONTROLNET = {k: v for k, v in UNET.items() if k not in ("sample_size", "out_channels", "up_block_types")} | {
    "conditioning_embedding_out_channels": list(HINT_CHANNELS),
    "controlnet_conditioning_channel_order": "rgb",
}


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    from diffusers import ControlNetModel

    from sd_core.controlnet import load_controlnet, read_controlnet_state_dict, save_controlnet

    root = tmp_path_factory.mktemp("cn15")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    source = randomize_zero_modules_(_perturb(ControlNetModel(**SD15_CONTROLNET), g), g)
    source.save_pretrained(root / "folder")  # sd_core reads the folder and writes the original layout
    del source
    single = save_controlnet(root / "control_sd15_random.safetensors", read_controlnet_state_dict(root / "folder"))
    config = root / "config"
    config.mkdir()
    (config / "config.json").write_text(
        json.dumps({"_class_name": "ControlNetModel", **SD15_CONTROLNET}), encoding="utf-8"
    )
    ref = ControlNetModel.from_single_file(str(single), config=str(config), local_files_only=True)
    return ref.float().eval(), load_controlnet(single, "cpu", torch.float32)


def test_sizes_are_the_released_sd15_controlnets(nets):
    ref, ours = nets
    assert ours.family == "sd1" and ours.config["num_heads"] == 8 and ours.config["context_dim"] == 768
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert len(ours.zero_convs) == 12 and [c[1] for c in ours.controlnet_config.hint] == [
        16,
        16,
        32,
        32,
        96,
        96,
        256,
        320,
    ]


@torch.inference_mode()
def test_residuals_match_diffusers_from_single_file(nets):
    ref, ours = nets
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 32, 32, generator=g)
    context = torch.randn(1, 77, 768, generator=g)
    hint = torch.rand(1, 3, 256, 256, generator=g)
    t = torch.tensor([500.0])
    down, mid = ref(x, t, context, hint, return_dict=False)
    got = ours(x, t, context, hint)
    assert len(got) == len(down) + 1 == 13
    errors = []
    for n, (a, b) in enumerate(zip(got, [*down, mid], strict=True)):
        assert b.abs().max() > 1e-3, f"residual {n} is zero: the comparison would prove nothing"
        errors.append(float((a - b).abs().max() / b.abs().max()))
        assert errors[-1] < REL_TOL, f"residual {n}: relative error {errors[-1]:.2e}"
    print(f"largest relative error of the 13 residuals: {max(errors):.2e}")
