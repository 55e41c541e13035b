"""Full-size SD1.5 architecture: a random-weight checkpoint written by sd_core in the single-file layout loads in
diffusers' own `from_single_file` (offline, local config) and in sd_core, and the networks agree within 1e-4."""

from __future__ import annotations

import pytest
import torch
from sd15_reference import PARAMS, random_sd15_state_dict, write_config_folder

pytestmark = pytest.mark.slow
REL_TOL = 1e-4


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref.float()).abs().max() / ref.float().abs().max())


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import save_file

    import sd_core
    from sd_core.checkpoint import read_state_dict, write_safetensors

    root = tmp_path_factory.mktemp("sd15")
    config = write_config_folder(root / "config")
    weights = random_sd15_state_dict(seed=0)
    # A diffusers folder of the random weights, read back by sd_core in the LDM layout, written as one file.
    folder = write_config_folder(root / "folder")
    for name, sd in weights.items():
        fname = "model.safetensors" if name == "text_encoder" else "diffusion_pytorch_model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / name / fname))
    del weights
    single = root / "sd15-random.safetensors"
    write_safetensors(single, read_state_dict(folder))
    ref = StableDiffusionPipeline.from_single_file(
        str(single), config=str(config), local_files_only=True, torch_dtype=torch.float32
    )
    assert isinstance(ref.unet, UNet2DConditionModel) and isinstance(ref.vae, AutoencoderKL)
    ours = sd_core.load(single, device="cpu", dtype=torch.float32)
    return ref, ours


def test_parameter_counts_are_sd15(sd15):
    _, ours = sd15
    counts = {"unet": ours.unet, "vae": ours.vae, "text_encoder": ours.text_encoder}
    for name, module in counts.items():
        n = sum(p.numel() for p in module.parameters())
        assert abs(n - PARAMS[name]) / PARAMS[name] < 0.001, (name, n)


@torch.inference_mode()
def test_unet_matches_diffusers(sd15):
    ref, ours = sd15
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 32, 32, generator=g)
    context = torch.randn(1, 77, 768, generator=g)
    t = torch.tensor([500.0])
    expected = ref.unet(x, t, encoder_hidden_states=context).sample
    assert rel_err(ours.unet(x, t, context), expected) < REL_TOL


@torch.inference_mode()
def test_vae_encode_decode_match_diffusers(sd15):
    ref, ours = sd15
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    dist = ref.vae.encode(image).latent_dist
    mean, logvar = ours.vae.encode(image)
    assert rel_err(mean, dist.mean) < REL_TOL
    assert rel_err(logvar, dist.logvar) < REL_TOL
    z = torch.randn(1, 4, 16, 16, generator=g)
    assert rel_err(ours.vae.decode(z), ref.vae.decode(z).sample) < REL_TOL


@torch.inference_mode()
def test_text_encoder_matches_transformers(sd15):
    ref, ours = sd15
    tokens = ref.tokenizer(
        "a photograph of an astronaut riding a horse", padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    expected = ref.text_encoder(tokens).last_hidden_state
    assert rel_err(ours.text_encoder(tokens), expected) < REL_TOL
