"""LoRAs give diffusers' images (`load_lora_weights`, the PEFT backend) on tiny random-weight SD1 and SD2 models:
kohya-format files over the UNet (attention, feed-forward, 1x1 and 3x3 convs) and the text encoder with alpha !=
rank, at weights 1.0 and 0.6, two at once (one negative), separate text-encoder and UNet weights, and PEFT-format
files whose alpha is in the metadata. Acceptance: mean absolute pixel difference under 1/255."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lora_files import kohya_lora, peft_lora, peft_metadata, save
from lora_parity import PROMPT, ParityRun, assert_same
from model_fixtures import _cached_folder

import sd_core

RUN = ParityRun(steps=8)
ours, theirs = RUN.ours, RUN.theirs


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def folder(family):
    return _cached_folder(0, family == "sd2", False)


@pytest.fixture(scope="module")
def reference(folder):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        str(folder), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, reference):
    d = tmp_path_factory.mktemp("loras")
    save(d / "style.safetensors", kohya_lora(reference.unet, reference.text_encoder, seed=1))
    # UNet only: diffusers 0.42 with transformers 5 re-initialises the first adapter's text-encoder weights when a
    # second file with text-encoder layers loads ("newly initialized because missing from the checkpoint"), so two
    # text-encoder LoRAs cannot be compared with it unfused
    other = kohya_lora(reference.unet, reference.text_encoder, seed=2, rank=2, alpha=8.0, text_endings=("none",))
    save(d / "other.safetensors", other)
    save(
        d / "peft.safetensors",
        peft_lora(reference.unet, reference.text_encoder, seed=3, rank=4),
        peft_metadata(rank=4, alpha=2.0),
    )
    return d


@pytest.fixture(scope="module")
def pipe(folder, lora_dir):
    return sd_core.load(folder, device="cpu", dtype=torch.float32, lora_dirs=[lora_dir])


@pytest.fixture(scope="module")
def base(pipe):
    return ours(pipe)


def test_kohya_lora_at_weight_1_matches_diffusers(pipe, reference, lora_dir, base):
    assert_same(ours(pipe, f"{PROMPT} <lora:style:1>"), theirs(reference, {"style": 1.0}, lora_dir), base)


def test_kohya_lora_at_weight_0_6_matches_diffusers(pipe, reference, lora_dir, base):
    assert_same(ours(pipe, f"{PROMPT} <lora:style:0.6>"), theirs(reference, {"style": 0.6}, lora_dir), base)


def test_two_loras_one_negative_match_diffusers(pipe, reference, lora_dir, base):
    mine = ours(pipe, f"{PROMPT} <lora:style:0.8> <lora:other:-0.5>")
    assert_same(mine, theirs(reference, {"style": 0.8, "other": -0.5}, lora_dir), base)


def test_text_encoder_and_unet_weights_match_diffusers(pipe, reference, lora_dir, base):
    """A1111's order: `<lora:name:te:unet>`; diffusers takes a weight per component."""
    mine = ours(pipe, f"{PROMPT} <lora:style:0.3:1.2>")
    assert_same(mine, theirs(reference, {"style": {"text_encoder": 0.3, "unet": 1.2}}, lora_dir), base)


def test_peft_lora_with_alpha_in_metadata_matches_diffusers(pipe, reference, lora_dir, base):
    assert_same(ours(pipe, f"{PROMPT} <lora:peft:0.7>"), theirs(reference, {"peft": 0.7}, lora_dir), base)


def test_loras_argument_is_the_tag(pipe, lora_dir):
    """`loras={name_or_path: weight}` applies the same LoRA as the prompt tag, a path as well as a name."""
    tagged = ours(pipe, f"{PROMPT} <lora:style:0.6>")
    assert np.array_equal(ours(pipe, loras={"style": 0.6}), tagged)
    assert np.array_equal(ours(pipe, loras={str(lora_dir / "style.safetensors"): 0.6}), tagged)
