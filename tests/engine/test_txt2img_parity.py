"""txt2img gives diffusers' images for the same model, prompt, negative prompt, guidance, seed and size: a batch of
two, image k drawn from its own generator seeded `seed + k` (diffusers' list of generators, A1111's batch seeds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import _cached_folder, write_tiny_checkpoint

import sd_core

PROMPT, NEGATIVE = "a red brick wall, highly detailed", "blurry, (low quality:1.0)"
SIZE, STEPS, CFG, SEED, BATCH = 64, 8, 7.5, 1234, 2


@pytest.fixture(scope="module")
def reference():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(_cached_folder(0, False, False)), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.folder_scheduler_config = pipe.scheduler.config  # the tests swap schedulers: each starts from the folder's
    return pipe


@pytest.fixture(scope="module")
def single_file(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")
    return sd_core.load(path, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def from_folder():
    return sd_core.load(_cached_folder(0, False, False), device="cpu", dtype=torch.float32)


def diffusers_images(pipe, size: tuple[int, int] = (SIZE, SIZE), **kw) -> list[np.ndarray]:
    out = pipe(
        PROMPT,
        negative_prompt="blurry, low quality",
        width=size[0],
        height=size[1],
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        num_images_per_prompt=BATCH,
        generator=[torch.Generator("cpu").manual_seed(SEED + k) for k in range(BATCH)],
        output_type="np",
        **kw,
    )
    return [(img * 255).round().astype(np.float64) for img in out.images]


def ours(pipe, sampler: str, size: tuple[int, int] = (SIZE, SIZE)) -> list[np.ndarray]:
    # "(low quality:1.0)" is A1111 syntax for weight 1: the same conditioning as diffusers' plain text.
    imgs = pipe.txt2img(
        PROMPT,
        negative_prompt=NEGATIVE,
        width=size[0],
        height=size[1],
        steps=STEPS,
        sampler=sampler,
        cfg_scale=CFG,
        seed=SEED,
        batch_size=BATCH,
    )
    assert [img.info["seed"] for img in imgs] == [SEED + k for k in range(BATCH)]
    return [np.asarray(img, dtype=np.float64) for img in imgs]


def assert_same_images(ours: list[np.ndarray], ref: list[np.ndarray]) -> None:
    assert len(ours) == len(ref) == BATCH
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape
        assert b.std() > 5, "reference image is flat: the comparison would prove nothing"
        assert np.abs(a - b).mean() < 1.0, f"mean abs pixel difference {np.abs(a - b).mean():.3f} >= 1/255"
    assert np.abs(ref[0] - ref[1]).mean() > 1.0, "the batch's images must differ (each has its own seed)"


@pytest.mark.parametrize("source", ["single_file", "from_folder"])
def test_ddim_matches_diffusers(request, reference, source):
    from diffusers import DDIMScheduler

    reference.scheduler = DDIMScheduler.from_config(reference.folder_scheduler_config)
    assert_same_images(ours(request.getfixturevalue(source), "ddim"), diffusers_images(reference))


@pytest.mark.parametrize("source", ["single_file", "from_folder"])
def test_euler_matches_diffusers_given_same_sigmas(request, reference, source):
    from diffusers import EulerDiscreteScheduler

    pipe = request.getfixturevalue(source)
    sigmas = sd_core.samplers.resolve("euler").sigmas(STEPS, pipe.noise_schedule)
    reference.scheduler = EulerDiscreteScheduler.from_config(
        reference.folder_scheduler_config, timestep_spacing="linspace"
    )
    assert float(sigmas[-1]) == 0.0
    expected = diffusers_images(reference, sigmas=sigmas[:-1].tolist())
    assert_same_images(ours(pipe, "euler"), expected)


@pytest.mark.parametrize("size", [(40, 24), (72, 56)])
def test_sizes_below_64_and_odd_latent_sizes_match_diffusers(reference, single_file, size):
    """A1111 generates any multiple of 8 (`limits.MIN_SIDE` is 8): latents of odd sides go through the UNet's
    down- and upsampling with the skip connections' sizes kept, as diffusers'."""
    from diffusers import DDIMScheduler

    reference.scheduler = DDIMScheduler.from_config(reference.folder_scheduler_config)
    mine = ours(single_file, "ddim", size)
    assert mine[0].shape == (size[1], size[0], 3)
    assert_same_images(mine, diffusers_images(reference, size))


def test_different_samplers_give_different_images(single_file):
    """The parity threshold is meaningful: two samplers on the same model differ by far more than it."""
    assert np.abs(ours(single_file, "ddim")[0] - ours(single_file, "euler")[0]).mean() > 1.0
