"""txt2img gives diffusers' image for the same model, prompt, negative prompt, guidance, seed and size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import _cached_folder, write_tiny_checkpoint

import sd_core

PROMPT, NEGATIVE = "a red brick wall, highly detailed", "blurry, (low quality:1.0)"
SIZE, STEPS, CFG, SEED = 64, 8, 7.5, 1234


@pytest.fixture(scope="module")
def reference():
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        str(_cached_folder(0, False, False)), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )


@pytest.fixture(scope="module")
def single_file(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")
    return sd_core.load(path, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def from_folder():
    return sd_core.load(_cached_folder(0, False, False), device="cpu", dtype=torch.float32)


def diffusers_image(pipe, **kw) -> np.ndarray:
    out = pipe(
        PROMPT,
        negative_prompt="blurry, low quality",
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
        **kw,
    )
    return (out.images[0] * 255).round().astype(np.float64)


def ours(pipe, sampler: str) -> np.ndarray:
    # "(low quality:1.0)" is A1111 syntax for weight 1: the same conditioning as diffusers' plain text.
    img = pipe.txt2img(
        PROMPT,
        negative_prompt=NEGATIVE,
        width=SIZE,
        height=SIZE,
        steps=STEPS,
        sampler=sampler,
        cfg_scale=CFG,
        seed=SEED,
    )[0]
    return np.asarray(img, dtype=np.float64)


def assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert b.std() > 5, "reference image is flat: the comparison would prove nothing"
    assert np.abs(a - b).mean() < 1.0, f"mean abs pixel difference {np.abs(a - b).mean():.3f} >= 1/255"


@pytest.mark.parametrize("source", ["single_file", "from_folder"])
def test_ddim_matches_diffusers(request, reference, source):
    from diffusers import DDIMScheduler

    reference.scheduler = DDIMScheduler.from_config(reference.scheduler.config)
    assert_same_image(ours(request.getfixturevalue(source), "ddim"), diffusers_image(reference))


@pytest.mark.parametrize("source", ["single_file", "from_folder"])
def test_euler_matches_diffusers_given_same_sigmas(request, reference, source):
    from diffusers import EulerDiscreteScheduler

    pipe = request.getfixturevalue(source)
    sigmas = sd_core.samplers.resolve("euler").sigmas(STEPS, pipe.noise_schedule)
    reference.scheduler = EulerDiscreteScheduler.from_config(reference.scheduler.config, timestep_spacing="linspace")
    assert float(sigmas[-1]) == 0.0
    expected = diffusers_image(reference, sigmas=sigmas[:-1].tolist())
    assert_same_image(ours(pipe, "euler"), expected)


def test_different_samplers_give_different_images(single_file):
    """The parity threshold is meaningful: two samplers on the same model differ by far more than it."""
    assert np.abs(ours(single_file, "ddim") - ours(single_file, "euler")).mean() > 1.0
