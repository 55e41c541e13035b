"""A callback raising `sd_core.Interrupted` stops sampling and the run still returns its images (A1111's interrupt):
made from the estimate of the step it stopped at, decoded, pasted back for inpainting, with their parameters text and
`info["interrupted"] = True`. `sd_core.Cancelled` still aborts. The models and picture are tests/engine/conftest.py's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import sd_core
from sd_core import inpainting

STEPS = 4  # the steps that run in every mode below


@pytest.fixture(scope="module")
def grid_mask() -> Image.Image:
    """A mask on the 8-pixel latent grid (with mask_blur=0 the latent mask is all 0 or 1, so blended inpainting's
    estimate keeps the original latents outside it exactly, whatever the order of the blends)."""
    m = np.zeros((64, 64), np.uint8)
    m[16:40, 16:48] = 255
    return Image.fromarray(m, "L")


def interrupt_at(step: int, seen: list):
    def callback(info: sd_core.StepInfo) -> None:
        seen.append(info.step)
        if info.step == step:
            seen.append(info.denoised.clone())
            raise sd_core.Interrupted

    return callback


def run(mode: str, pipes: dict, photo, mask, **kw) -> list[Image.Image]:
    if mode == "txt2img":
        return pipes["sd1"].txt2img("a cat", width=64, height=64, steps=STEPS, **kw)
    if mode == "img2img":
        return pipes["sd1"].img2img(photo, "a cat", strength=0.5, steps=2 * STEPS, **kw)
    pipe = pipes["sd1_inpaint" if mode == "inpaint_9_channel" else "sd1"]
    return pipe.inpaint(photo, mask, "a cat", mask_blur=0, steps=STEPS, **kw)


def expected_images(mode: str, pipes: dict, photo, mask, denoised: torch.Tensor) -> list[np.ndarray]:
    """The step's estimate decoded (and, for inpainting, pasted back as a finished run is)."""
    pipe = pipes["sd1_inpaint" if mode == "inpaint_9_channel" else "sd1"]
    decoded = [np.asarray(img) for img in pipe.decode_latents(denoised)]
    if not mode.startswith("inpaint"):
        return decoded
    settings = sd_core.GenerationSettings.from_kwargs("a cat", mask_blur=0, steps=STEPS, seed=1)
    s = settings.resolve("inpaint", pipe.defaults, photo.size)
    return inpainting.paste_back(decoded, inpainting.prepare_region(photo, mask, s), s.inpaint)


@pytest.mark.parametrize("sampler", ["euler", "Euler a", "DPM++ 2M"])
@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint", "inpaint_9_channel"])
def test_interrupted_run_returns_the_step_s_estimate(sd1, sd1_inpaint, photo, grid_mask, mode, sampler):
    pipes = {"sd1": sd1, "sd1_inpaint": sd1_inpaint}
    seen: list = []
    imgs = run(mode, pipes, photo, grid_mask, seed=5, batch_size=2, sampler=sampler, callback=interrupt_at(2, seen))
    assert seen[:2] + seen[3:] == [1, 2], "sampling stopped at the interrupting step"
    assert len(imgs) == 2
    for img, expected, seed in zip(imgs, expected_images(mode, pipes, photo, grid_mask, seen[2]), [5, 6], strict=True):
        assert img.info["interrupted"] is True and img.info["seed"] == seed
        assert f"Seed: {seed}" in img.info["parameters"] and "Steps: " in img.info["parameters"]
        assert np.array_equal(np.asarray(img), expected)
    finished = run(mode, pipes, photo, grid_mask, seed=5, batch_size=2, sampler=sampler)
    assert "interrupted" not in finished[0].info
    assert finished[0].tobytes() != imgs[0].tobytes()  # (the tiny models' step-2 estimate is already close)


def test_an_interrupt_at_the_first_step_keeps_its_estimate(sd1):
    """The callback runs after each step's model call, so even the first one has an estimate to finish from."""
    seen: list = []
    imgs = sd1.txt2img("a cat", width=64, height=64, steps=STEPS, seed=5, callback=interrupt_at(1, seen))
    assert imgs[0].info["interrupted"] is True
    assert np.array_equal(np.asarray(imgs[0]), np.asarray(sd1.decode_latents(seen[1])[0]))


def test_an_interrupt_at_the_last_euler_step_is_the_finished_image(sd1):
    """Euler's last step goes to sigma 0 with the last estimate: the same image, only flagged."""
    imgs = sd1.txt2img("a cat", width=64, height=64, steps=STEPS, seed=5, callback=interrupt_at(STEPS, []))
    finished = sd1.txt2img("a cat", width=64, height=64, steps=STEPS, seed=5)
    assert imgs[0].info["interrupted"] is True
    assert imgs[0].tobytes() == finished[0].tobytes()
    assert imgs[0].info["parameters"] == finished[0].info["parameters"]


@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint"])
def test_cancelled_still_aborts(sd1, sd1_inpaint, photo, grid_mask, mode):
    def cancel(info):
        if info.step == 2:
            raise sd_core.Cancelled

    with pytest.raises(sd_core.Cancelled):
        run(mode, {"sd1": sd1, "sd1_inpaint": sd1_inpaint}, photo, grid_mask, callback=cancel)
