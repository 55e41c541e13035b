"""Per-image seeds, as A1111: image k of a batch has the seed `seed + k`, named in its infotext and `info["seed"]`,
and draws everything random from its own generator, so each image of a batch is made again alone from that seed. In
every mode and with a stochastic sampler of each kind (ancestral: fresh noise per step; SDE: a Brownian path).
The models, picture and mask are the fixtures of tests/engine/conftest.py."""

from __future__ import annotations

import numpy as np
import pytest

import sd_core
from sd_core.pnginfo import parse_parameters

SEED, BATCH, STEPS = 3, 4, 5


def generate(mode: str, pipes: dict, photo, mask, **kw) -> list:
    """One generation of `mode`; the inpaintings below strength 1, so the image's posterior is sampled too."""
    if mode == "txt2img":
        return pipes["sd1"].txt2img("a cat", width=64, height=64, **kw)
    if mode == "img2img":
        return pipes["sd1"].img2img(photo, "a cat", strength=0.6, **kw)
    if mode == "inpaint":  # the latent fill draws noise too
        return pipes["sd1"].inpaint(photo, mask, "a cat", strength=0.8, fill="latent_noise", **kw)
    return pipes["sd1_inpaint"].inpaint(photo, mask, "a cat", strength=0.8, **kw)  # 9 channels: masked posterior


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE"])
@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint", "inpaint_9_channel"])
def test_each_image_of_a_batch_is_made_again_alone_from_its_seed(sd1, sd1_inpaint, photo, square_mask, mode, sampler):
    pipes = {"sd1": sd1, "sd1_inpaint": sd1_inpaint}
    batch = generate(mode, pipes, photo, square_mask, seed=SEED, batch_size=BATCH, steps=STEPS, sampler=sampler)
    seeds = [int(parse_parameters(img.info["parameters"])["Seed"]) for img in batch]
    assert seeds == [img.info["seed"] for img in batch] == [SEED + k for k in range(BATCH)]
    pixels = [np.asarray(img, dtype=np.float64) for img in batch]
    for k, seed in enumerate(seeds):
        alone = generate(mode, pipes, photo, square_mask, seed=seed, steps=STEPS, sampler=sampler)
        assert len(alone) == 1 and alone[0].info["seed"] == seed
        diff = np.abs(np.asarray(alone[0], dtype=np.float64) - pixels[k]).mean()
        assert diff < 1.0, f"image {k} (seed {seed}) alone differs from its batch's by {diff:.3f} >= 1/255"
    for k in range(1, BATCH):  # the comparison means something: the batch's images differ from each other
        assert np.abs(pixels[k] - pixels[0]).mean() > 1.0


def test_the_batch_s_last_seed_must_be_a_valid_seed():
    last = sd_core.limits.MAX_SEED
    assert sd_core.GenerationSettings(seed=last - 3, batch_size=4).seed == last - 3
    with pytest.raises(sd_core.limits.SettingError, match="seed \\+ batch_size - 1") as caught:
        sd_core.GenerationSettings(seed=last - 2, batch_size=4)
    assert caught.value.setting == "seed"
