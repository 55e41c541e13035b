"""Base + refiner as A1111 does it: one sampler run on the same latents, the refiner's UNet (with its own text,
vectors and aesthetic scores) taking over once the sampled fraction of the schedule reaches `refiner_switch_at`.

The reference is diffusers' documented "ensemble of expert denoisers": the base pipeline with `denoising_end`
returning latents, the refiner's img2img pipeline continuing them with `denoising_start`. Both split the steps at
the same timestep (base while t >= 1000 * (1 - switch)), and Euler keeps no state between steps, so with the same
sigma list the two-pipeline run and our single run with a handoff do the same operations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sdxl_fixtures import sdxl_folder, write_sdxl_checkpoint

import sd_core
from sd_core.limits import SettingError

PROMPT, NEGATIVE = "a red brick wall, highly detailed", "blurry, low quality"
SIZE, STEPS, CFG, SEED, BATCH = 64, 8, 7.5, 99, 2


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return sd_core.load(
        write_sdxl_checkpoint(tmp_path_factory.mktemp("x") / "base.safetensors"), device="cpu", dtype=torch.float32
    )


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    path = write_sdxl_checkpoint(tmp_path_factory.mktemp("x") / "refiner.safetensors", refiner=True)
    return sd_core.load(path, device="cpu", dtype=torch.float32)


def ours(base, refiner, switch_at: float) -> list[np.ndarray]:
    kw = {"width": SIZE, "height": SIZE, "steps": STEPS, "sampler": "euler", "cfg_scale": CFG, "seed": SEED}
    imgs = base.txt2img(
        PROMPT, negative_prompt=NEGATIVE, batch_size=BATCH, refiner=refiner, refiner_switch_at=switch_at, **kw
    )
    assert "Refiner: refiner" in imgs[0].info["parameters"]
    return [np.asarray(img, dtype=np.float64) for img in imgs]


@pytest.mark.parametrize("switch_at", [0.8, 0.25])
def test_handoff_matches_diffusers_ensemble_of_experts(base, refiner, switch_at):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    sigmas = sd_core.samplers.resolve("euler").sigmas(STEPS, base.noise_schedule)[:-1].tolist()
    pipes = []
    for cls, kind in ((StableDiffusionXLPipeline, {}), (StableDiffusionXLImg2ImgPipeline, {"refiner": True})):
        pipe = cls.from_pretrained(str(sdxl_folder(**kind)), local_files_only=True)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
        pipes.append(pipe)
    generators = [torch.Generator().manual_seed(SEED + k) for k in range(BATCH)]
    common = {"negative_prompt": [NEGATIVE] * BATCH, "guidance_scale": CFG, "sigmas": sigmas, "generator": generators}
    latents = pipes[0]([PROMPT] * BATCH, width=SIZE, height=SIZE, denoising_end=switch_at, output_type="latent",
                       **common).images  # fmt: skip
    out = pipes[1]([PROMPT] * BATCH, image=latents, denoising_start=switch_at, output_type="np", **common).images
    expected = [(img * 255).round() for img in out]
    mine = ours(base, refiner, switch_at)
    for a, b in zip(mine, expected, strict=True):
        assert b.std() > 5
        assert np.abs(a - b).mean() < 1.0, f"mean abs pixel difference {np.abs(a - b).mean():.3f}"
    if switch_at > 0.25:
        return  # late handoffs change a tiny model's image by less than the tolerance
    alone = np.asarray(base.txt2img(PROMPT, negative_prompt=NEGATIVE, width=SIZE, height=SIZE, steps=STEPS,
                                    sampler="euler", cfg_scale=CFG, seed=SEED)[0], dtype=np.float64)  # fmt: skip
    assert np.abs(alone - mine[0]).mean() > 1.0, "the refiner must change the image"


def test_switch_at_1_is_the_base_alone(base, refiner):
    kw = {"width": 32, "height": 32, "steps": 4, "seed": 3, "sampler": "euler"}
    with_refiner = base.txt2img("a cat", refiner=refiner, refiner_switch_at=1.0, **kw)[0]
    assert np.array_equal(np.asarray(with_refiner), np.asarray(base.txt2img("a cat", **kw)[0]))


def test_img2img_with_refiner_runs(base, refiner, photo):
    (img,) = base.img2img(photo, "a cat", strength=0.6, steps=4, seed=1, refiner=refiner, refiner_switch_at=0.5)
    assert img.size == photo.size and "Refiner switch at: 0.5" in img.info["parameters"]


def test_aesthetic_score_is_accepted_with_a_refiner(base, refiner):
    (img,) = base.txt2img("a cat", width=32, height=32, steps=2, seed=1, refiner=refiner, aesthetic_score=7.0)
    assert "Aesthetic score: 7.0" in img.info["parameters"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"refiner_switch_at": 0.5}, "needs a refiner"),
        ({"refiner": "refiner.safetensors"}, "loaded pipeline"),
        ({"refiner": "sd1"}, "latent space"),
        ({"refiner": "refiner", "hires": sd_core.HiresOptions()}, "hires"),
    ],
)
def test_bad_refiner_settings_name_the_setting(request, base, refiner, kwargs, match):
    kwargs = dict(kwargs)
    if kwargs.get("refiner") in ("refiner", "sd1"):
        kwargs["refiner"] = request.getfixturevalue(kwargs["refiner"])
    with pytest.raises(SettingError, match=match) as err:
        base.txt2img("a cat", width=32, height=32, steps=1, **kwargs)
    assert err.value.setting in ("refiner", "refiner_switch_at")
