"""`sd-core train --lora RANK` (acceptance 5): a few steps on a folder of captioned images write a kohya-format
LoRA that diffusers' `load_lora_weights` loads and that changes diffusers' images exactly as it changes sd_core's;
the base model's weights stay as they were."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from model_fixtures import _cached_folder, write_tiny_checkpoint
from PIL import Image

import sd_core
from sd_core import checkpoint
from sd_core.training import config, train

PROMPT = "a plain red square"
KW = dict(width=64, height=64, steps=6, sampler="ddim", cfg_scale=7.5, seed=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_train")
    base = write_tiny_checkpoint(root / "base.safetensors")
    folder = root / "images"
    folder.mkdir()
    for i, colour in enumerate(["red", "blue"]):
        arr = np.zeros((64, 64, 3), np.uint8)
        arr[..., i * 2] = 220
        arr[16:48, 16:48] = 30
        Image.fromarray(arr).save(folder / f"{colour}.png")
        (folder / f"{colour}.txt").write_text(f"a plain {colour} square\n", encoding="utf-8")
    cfg = config.TrainConfig(
        out=str(root / "out"), seed=3, size=64, init=str(base), data=str(folder), unet_steps=8, unet_batch=2,
        unet_lr=2e-2, warmup=1, save_every=4, log_every=100, lora=4, lora_alpha=2.0, lora_text=True,
    )  # fmt: skip
    before = {k: v.clone() for k, v in checkpoint.read_state_dict(base).items()}
    path = train.run(cfg)
    return base, path, before, cfg


def test_the_file_is_kohyas_format(trained):
    _, path, _, _ = trained
    tensors = checkpoint.read_state_dict(path)
    stems = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in tensors}
    assert any(s.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q") for s in stems)
    assert any(s.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for s in stems)
    for stem in stems:
        down, up = tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"]
        assert down.shape[0] == up.shape[1] == 4 and float(tensors[f"{stem}.alpha"]) == 2.0
    assert checkpoint.read_metadata(path)["ss_network_dim"] == "4"


def test_the_base_model_is_untouched(trained):
    base, _, before, _ = trained
    after = checkpoint.read_state_dict(base)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_diffusers_loads_it_and_draws_what_sd_core_draws(trained):
    from diffusers import StableDiffusionPipeline

    base, path, _, _ = trained
    pipe = sd_core.load(base, device="cpu", dtype=torch.float32, lora_dirs=[path.parent])
    plain = np.asarray(pipe.txt2img(PROMPT, **KW)[0], dtype=np.float64)
    mine = np.asarray(pipe.txt2img(f"{PROMPT} <lora:lora:1>", **KW)[0], dtype=np.float64)
    assert np.abs(mine - plain).mean() > 2.0, "the trained LoRA must change the image"

    ref = StableDiffusionPipeline.from_pretrained(
        str(_cached_folder(0, False, False)), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    ref.load_lora_weights(str(path), adapter_name="trained")
    out = ref(PROMPT, width=64, height=64, num_inference_steps=6, guidance_scale=7.5,
              generator=torch.Generator().manual_seed(4), output_type="np")  # fmt: skip
    theirs = (out.images[0] * 255).round()
    assert np.abs(mine - theirs).mean() < 1.0


def test_a_finished_run_resumes_to_the_same_file(trained, tmp_path):
    """Run again into the same folder: the finished state is read back, not trained again, and exported the same."""
    _, path, _, cfg = trained
    first = checkpoint.read_state_dict(path)
    again = train.run(dataclasses.replace(cfg))
    assert again == path and all(torch.equal(v, checkpoint.read_state_dict(again)[k]) for k, v in first.items())
