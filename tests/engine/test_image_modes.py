"""img2img, inpainting, outpainting and seamless tiling: parity with diffusers, pixels outside masks untouched,
wrap-around, and every mode with every sampler, batches, progress and cancel. The models, picture and mask are the
fixtures of tests/engine/conftest.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import _cached_folder
from seamless_checks import rolled_pair

import sd_core

SIZE, SEED, BATCH = 64, 77, 2


def reference(inpainting: bool = False):
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    cls = StableDiffusionInpaintPipeline if inpainting else StableDiffusionImg2ImgPipeline
    pipe = cls.from_pretrained(
        str(_cached_folder(0, False, inpainting)),
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def as_array(img) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


def assert_same_image(ours: np.ndarray, ref: np.ndarray) -> None:
    diff = np.abs(ours - ref).mean()
    assert diff < 1.0, f"mean abs pixel difference {diff:.3f} >= 1/255"


def generators() -> list[torch.Generator]:
    """diffusers' list of generators for a batch: image k's seeded `SEED + k`, as our image k's seed."""
    return [torch.Generator("cpu").manual_seed(SEED + k) for k in range(BATCH)]


# --- parity -----------------------------------------------------------------------------------------------------


def test_img2img_matches_diffusers(sd1, photo):
    """A batch of two: each image's posterior sample and start noise from its own generator."""
    ref = reference()
    expected = ref(
        "a red brick wall",
        image=photo,
        strength=0.6,
        num_inference_steps=10,
        guidance_scale=7.5,
        negative_prompt="blurry",
        num_images_per_prompt=BATCH,
        generator=generators(),
        output_type="np",
    ).images
    ours = sd1.img2img(
        photo,
        "a red brick wall",
        strength=0.6,
        steps=10,
        sampler="ddim",
        cfg_scale=7.5,
        negative_prompt="blurry",
        seed=SEED,
        batch_size=BATCH,
    )
    for img, exp in zip(ours, expected, strict=True):
        assert_same_image(as_array(img), (exp * 255).round())
    assert np.abs(as_array(ours[0]) - as_array(ours[1])).mean() > 1.0


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_inpaint_9_channel_matches_diffusers(sd1_inpaint, photo, square_mask, strength):
    """A batch of two, each image with its own generator: its posterior sample (below strength 1), start noise and
    masked-image posterior. diffusers samples the posteriors of a single input image from the first generator only
    and repeats them, so it gets the image and mask once per image (and the prompt once per image), which gives
    each image its own draws. diffusers returns the raw decode; ours pastes the original back outside the mask, so
    diffusers' output is composited with the same (unblurred) mask before comparing."""
    ref = reference(inpainting=True)
    expected = ref(
        ["a cat"] * BATCH,
        image=[photo] * BATCH,
        mask_image=[square_mask] * BATCH,
        strength=strength,
        num_inference_steps=10,
        guidance_scale=7.5,
        generator=generators(),
        output_type="np",
    ).images
    m = (np.asarray(square_mask) / 255.0)[:, :, None]
    kw = {"mask_blur": 0, "steps": 10, "sampler": "ddim", "seed": SEED, "batch_size": BATCH, "strength": strength}
    ours = sd1_inpaint.inpaint(photo, square_mask, "a cat", **kw)
    for img, exp in zip(ours, expected, strict=True):
        assert_same_image(as_array(img), np.asarray(photo) * (1 - m) + (exp * 255).round() * m)
    assert np.abs(as_array(ours[0]) - as_array(ours[1])).mean() > 1.0


# --- inpainting guarantees -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["sd1", "sd1_inpaint"])
@pytest.mark.parametrize("only_masked", [False, True])
def test_pixels_outside_blurred_mask_are_unchanged(request, model, only_masked, photo, square_mask):
    pipe = request.getfixturevalue(model)
    kw = {"width": 64, "height": 64} if only_masked else {}
    out = np.asarray(
        pipe.inpaint(photo, square_mask, "a cat", steps=3, seed=1, only_masked=only_masked, padding=8, **kw)[0]
    )
    blurred = sd_core.masks.blur_mask(sd_core.images.to_mask_array(square_mask), 4)
    original = np.asarray(photo)
    outside = blurred == 0
    assert outside.sum() > 1000
    assert np.array_equal(out[outside], original[outside])
    inside = blurred > 0.99
    assert np.abs(out[inside].astype(int) - original[inside]).mean() > 5


def test_soft_mask_blends(sd1, photo):
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[:, 32:] = 1.0
    mask[:, 28:32] = 0.5
    out = np.asarray(sd1.inpaint(photo, mask, "a cat", mask_blur=0, steps=3, seed=2)[0]).astype(float)
    full = np.asarray(
        sd1.inpaint(photo, np.where(mask > 0, 1.0, 0.0), "a cat", mask_blur=0, steps=3, seed=2)[0]
    ).astype(float)
    original = np.asarray(photo).astype(float)
    # half-masked columns lie between the original and a fully repainted result
    half = np.s_[:, 28:32]
    assert np.array_equal(out[:, :28], original[:, :28])
    between = np.abs(out[half] - (original[half] + full[half]) / 2).mean()
    assert between < np.abs(full[half] - original[half]).mean() / 2 + 2


def test_color_match_keeps_outside_and_runs(sd1, photo, square_mask):
    out = np.asarray(sd1.inpaint(photo, square_mask, "a cat", steps=2, seed=3, color_match=True)[0])
    blurred = sd_core.masks.blur_mask(sd_core.images.to_mask_array(square_mask), 4)
    assert np.array_equal(out[blurred == 0], np.asarray(photo)[blurred == 0])


@pytest.mark.parametrize("fill", ["fill", "original", "latent_noise", "latent_nothing"])
def test_masked_content_options(sd1, photo, square_mask, fill):
    out = sd1.inpaint(photo, square_mask, "a cat", strength=0.7, steps=4, seed=4, fill=fill)[0]
    assert out.size == photo.size and f"Masked content: {fill}" in out.info["parameters"]


def test_empty_mask_is_a_clear_error(sd1, photo):
    with pytest.raises(ValueError, match="mask is empty"):
        sd1.inpaint(photo, np.zeros((SIZE, SIZE), np.uint8), "a cat", steps=2)


def test_mask_size_mismatch_is_a_clear_error(sd1, photo):
    with pytest.raises(ValueError, match="64x64.*32x32|32x32.*64x64"):
        sd1.inpaint(photo, np.ones((32, 32), np.uint8), "a cat", steps=2)


def test_rgba_input_alpha_is_ignored(sd1, photo):
    rgba = photo.convert("RGBA")
    rgba.putalpha(0)
    a = sd1.img2img(rgba, "x", steps=2, seed=5, strength=0.5)[0]
    b = sd1.img2img(photo, "x", steps=2, seed=5, strength=0.5)[0]
    assert a.tobytes() == b.tobytes()


def test_img2img_numpy_input_and_size(sd1, photo):
    out = sd1.img2img(np.asarray(photo), "x", steps=2, seed=5, strength=0.5, width=128, height=64)[0]
    assert out.size == (128, 64)


def test_img2img_strength_too_small_for_steps(sd1, photo):
    with pytest.raises(ValueError, match="strength"):
        sd1.img2img(photo, "x", steps=2, strength=0.2)


# --- outpainting -------------------------------------------------------------------------------------------------


def test_outpaint_extends_and_keeps_the_original(sd1, photo):
    out = np.asarray(sd1.outpaint(photo, "a wall", right=32, bottom=13, steps=3, seed=6)[0])
    assert out.shape == (64 + 16, 64 + 32, 3)
    keep = 64 - 8 - 12  # the mask reaches 8 px into the original, its blur (sigma 4, cut at 3 sigma) 12 more
    assert np.array_equal(out[:keep, :keep], np.asarray(photo)[:keep, :keep])
    assert out[:, 64:].std() > 3


# --- seamless tiling ---------------------------------------------------------------------------------------------


def test_seamless_x_output_lives_on_a_cylinder(sd1):
    """With circular padding on x, rolling the noise rolls the image: the left and right edges are neighbours."""
    a, b = rolled_pair(sd1, "x", 2)
    assert np.abs(np.roll(a, 16, axis=1) - b).mean() < 0.5
    plain_a, plain_b = rolled_pair(sd1, None, 2)
    assert np.abs(np.roll(plain_a, 16, axis=1) - plain_b).mean() > 2


def test_tiling_is_restored_after_generation(sd1):
    sd1.txt2img("x", width=64, height=64, steps=1, seed=1, tiling="xy")
    assert all(v is None for v in sd_core.tiling.seamless_axes(sd1.unet).values())
    with pytest.raises(ValueError, match="tiling"):
        sd1.txt2img("x", width=64, height=64, steps=1, tiling="z")


def test_wrap_edge_difference_like_interior(sd1):
    """The statistic the issue names: |last column - first column| is like |column k+1 - column k| with tiling."""
    img = as_array(sd1.txt2img("stripes", width=128, height=64, steps=4, seed=11, tiling="x")[0])
    interior = np.abs(np.diff(img, axis=1)).mean(axis=(0, 2))
    wrap = np.abs(img[:, -1] - img[:, 0]).mean()
    assert wrap <= np.percentile(interior, 95)


# --- every sampler, every mode -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", sd_core.samplers.SAMPLERS)
def test_every_sampler_in_every_mode(sd1, sd1_inpaint, photo, square_mask, sampler):
    steps = []
    kw = {"steps": 4, "seed": 12, "sampler": sampler, "batch_size": 2, "callback": lambda i: steps.append(i.step)}
    results = [
        sd1.txt2img("a cat", width=64, height=64, **kw),
        sd1.img2img(photo, "a cat", strength=0.5, **kw),
        sd1.inpaint(photo, square_mask, "a cat", **kw),
        sd1_inpaint.inpaint(photo, square_mask, "a cat", **kw),
    ]
    for imgs in results:
        assert len(imgs) == 2 and all(np.asarray(i).std() > 1 for i in imgs)
    assert steps == [1, 2, 3, 4] + [1, 2] + [1, 2, 3, 4] * 2

    def cancel(info):
        raise sd_core.Cancelled

    for run in (
        lambda: sd1.txt2img("a", width=64, height=64, steps=3, sampler=sampler, callback=cancel),
        lambda: sd1.img2img(photo, "a", steps=3, sampler=sampler, callback=cancel),
        lambda: sd1.inpaint(photo, square_mask, "a", steps=3, sampler=sampler, callback=cancel),
    ):
        with pytest.raises(sd_core.Cancelled):
            run()
