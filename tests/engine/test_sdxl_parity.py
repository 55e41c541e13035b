"""SDXL generation equals diffusers' SDXL pipelines on tiny random models of the real architecture: txt2img with
DDIM and Euler (same sigma list) from the single file and the folder, the size conditioning overrides, both meanings
of an empty negative prompt, clip skip, img2img (base and refiner, with aesthetic scores) and 9-channel inpainting
(inside the mask; outside it the input's own pixels). A batch of two, image k from the generator seeded `seed + k`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sdxl_fixtures import sdxl_folder, write_sdxl_checkpoint

import sd_core

PROMPT, NEGATIVE = "a red brick wall, highly detailed", "blurry, low quality"
SIZE, STEPS, CFG, SEED, BATCH = 64, 8, 7.5, 1234, 2


def generators() -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(SEED + k) for k in range(BATCH)]


def reference(cls_name: str, scheduler: str = "ddim", **kind):
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(str(sdxl_folder(**kind)), local_files_only=True)
    if scheduler == "euler":
        config = pipe.scheduler.config
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(config, timestep_spacing="linspace")
    return pipe


@pytest.fixture(scope="module")
def txt2img_ref():
    return reference("StableDiffusionXLPipeline")


@pytest.fixture(scope="module")
def single_file(tmp_path_factory):
    path = write_sdxl_checkpoint(tmp_path_factory.mktemp("sdxl") / "base.safetensors")
    return sd_core.load(path, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def from_folder():
    return sd_core.load(sdxl_folder(), device="cpu", dtype=torch.float32)


def as_arrays(images) -> list[np.ndarray]:
    return [np.asarray(img, dtype=np.float64) for img in images]


def diffusers_arrays(out) -> list[np.ndarray]:
    return [(img * 255).round().astype(np.float64) for img in out.images]


def assert_same_images(ours: list[np.ndarray], ref: list[np.ndarray]) -> None:
    assert len(ours) == len(ref) == BATCH
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape
        assert b.std() > 5, "reference image is flat: the comparison would prove nothing"
        assert np.abs(a - b).mean() < 1.0, f"mean abs pixel difference {np.abs(a - b).mean():.3f} >= 1/255"
    assert np.abs(ref[0] - ref[1]).mean() > 1.0, "the batch's images must differ (each has its own seed)"


def ours_txt2img(pipe, sampler: str = "ddim", negative: str = NEGATIVE, **kw) -> list[np.ndarray]:
    imgs = pipe.txt2img(
        PROMPT,
        negative_prompt=negative,
        width=SIZE,
        height=SIZE,
        steps=STEPS,
        sampler=sampler,
        cfg_scale=CFG,
        seed=SEED,
        batch_size=BATCH,
        **kw,
    )
    return as_arrays(imgs)


def diffusers_txt2img(pipe, **kw) -> list[np.ndarray]:
    kw.setdefault("negative_prompt", NEGATIVE)
    out = pipe(
        PROMPT,
        width=SIZE,
        height=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        num_images_per_prompt=BATCH,
        generator=generators(),
        output_type="np",
        **kw,
    )
    return diffusers_arrays(out)


@pytest.mark.parametrize("source", ["single_file", "from_folder"])
def test_txt2img_ddim_matches_diffusers(request, txt2img_ref, source):
    assert_same_images(ours_txt2img(request.getfixturevalue(source)), diffusers_txt2img(txt2img_ref))


@pytest.mark.parametrize("source", ["single_file", "from_folder"])
def test_txt2img_euler_matches_diffusers_given_same_sigmas(request, source):
    pipe = request.getfixturevalue(source)
    sigmas = sd_core.samplers.resolve("euler").sigmas(STEPS, pipe.noise_schedule)
    expected = diffusers_txt2img(reference("StableDiffusionXLPipeline", "euler"), sigmas=sigmas[:-1].tolist())
    assert_same_images(ours_txt2img(pipe, "euler"), expected)


def test_size_conditioning_overrides_match_diffusers(txt2img_ref, single_file):
    sizes = {"original_size": (512, 384), "crops_coords_top_left": (16, 48), "target_size": (1024, 768)}
    expected = diffusers_txt2img(txt2img_ref, **sizes)
    ours = ours_txt2img(single_file, **sizes)
    assert_same_images(ours, expected)
    assert np.abs(ours[0] - ours_txt2img(single_file)[0]).mean() > 1.0, "the size numbers must change the image"


def test_empty_negative_prompt_zeros_as_a1111_and_diffusers_without_negative(txt2img_ref, single_file):
    """sd_core's default for SDXL: an empty negative prompt zeroes the negative text conditioning (A1111), as
    diffusers does when given no negative prompt (`force_zeros_for_empty_prompt`)."""
    assert_same_images(ours_txt2img(single_file, negative=""), diffusers_txt2img(txt2img_ref, negative_prompt=None))


def test_empty_negative_prompt_encoded_on_request(txt2img_ref, single_file):
    ours = ours_txt2img(single_file, negative="", empty_negative="encode")
    assert_same_images(ours, diffusers_txt2img(txt2img_ref, negative_prompt=""))
    assert np.abs(ours[0] - ours_txt2img(single_file, negative="")[0]).mean() > 1.0


def test_clip_skip_moves_both_towers_as_diffusers(txt2img_ref, single_file):
    """sd_core's clip_skip 2 (A1111's numbering) is diffusers' clip_skip 1: both towers one layer earlier, for the
    prompt and the negative prompt alike. (diffusers' SDXL `encode_prompt` applies `clip_skip` to the prompt only
    and always takes the negative prompt's penultimate layer, so the reference encodes each text as a prompt.)"""

    def encode(text: str) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _, pooled, _ = txt2img_ref.encode_prompt(
            text, device="cpu", num_images_per_prompt=BATCH, do_classifier_free_guidance=False, clip_skip=1
        )
        return embeds, pooled

    (embeds, pooled), (negative, negative_pooled) = encode(PROMPT), encode(NEGATIVE)
    out = txt2img_ref(
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=negative,
        negative_pooled_prompt_embeds=negative_pooled,
        width=SIZE,
        height=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        generator=generators(),
        output_type="np",
    )
    ours = ours_txt2img(single_file, clip_skip=2)
    assert_same_images(ours, diffusers_arrays(out))
    assert np.abs(ours[0] - ours_txt2img(single_file)[0]).mean() > 1.0


# --- img2img and inpainting --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo():
    from PIL import Image

    y, x = np.mgrid[0:SIZE, 0:SIZE]
    b = np.where((x - 40) ** 2 + (y - 24) ** 2 < 150, 230, 40) + ((x // 4) % 2) * 20
    return Image.fromarray(np.stack([(x * 4) % 256, (y * 4) % 256, b], -1).astype(np.uint8))


@pytest.fixture(scope="module")
def square_mask():
    from PIL import Image

    m = np.zeros((SIZE, SIZE), np.uint8)
    m[16:40, 20:48] = 255
    return Image.fromarray(m, "L")


def img2img_kwargs(**kw) -> dict:
    return {"strength": 0.6, "steps": 10, "sampler": "ddim", "cfg_scale": CFG, "negative_prompt": NEGATIVE,
            "seed": SEED, "batch_size": BATCH, **kw}  # fmt: skip


def diffusers_img2img(pipe, photo, **kw) -> list[np.ndarray]:
    out = pipe(
        PROMPT,
        image=photo,
        strength=0.6,
        num_inference_steps=10,
        guidance_scale=CFG,
        negative_prompt=NEGATIVE,
        num_images_per_prompt=BATCH,
        generator=generators(),
        output_type="np",
        **kw,
    )
    return diffusers_arrays(out)


def test_img2img_matches_diffusers(single_file, photo):
    expected = diffusers_img2img(reference("StableDiffusionXLImg2ImgPipeline"), photo)
    assert_same_images(as_arrays(single_file.img2img(photo, PROMPT, **img2img_kwargs())), expected)


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    path = write_sdxl_checkpoint(tmp_path_factory.mktemp("sdxl") / "refiner.safetensors", refiner=True)
    return sd_core.load(path, device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("scores", [{}, {"aesthetic_score": 8.0, "negative_aesthetic_score": 1.0}])
def test_refiner_img2img_matches_diffusers(refiner, photo, scores):
    """The refiner's vector: original size, crop and aesthetic score (6.0 / 2.5 unless given)."""
    ref = reference("StableDiffusionXLImg2ImgPipeline", refiner=True)
    assert ref.config.requires_aesthetics_score
    expected = diffusers_img2img(ref, photo, **scores)
    assert_same_images(as_arrays(refiner.img2img(photo, PROMPT, **img2img_kwargs(**scores))), expected)


@pytest.fixture(scope="module")
def inpaint_model(tmp_path_factory):
    path = write_sdxl_checkpoint(tmp_path_factory.mktemp("sdxl") / "inpaint.safetensors", inpainting=True)
    return sd_core.load(path, device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_9_channel_inpaint_matches_diffusers_inside_and_keeps_outside(inpaint_model, photo, square_mask, strength):
    """diffusers gets the image and mask once per image (so each image's posteriors come from its own generator, as
    ours) and returns the raw decode: compared inside the mask; outside it ours is the input's own pixels."""
    ref = reference("StableDiffusionXLInpaintPipeline", inpainting=True)
    out = ref(
        [PROMPT] * BATCH,
        image=[photo] * BATCH,
        mask_image=[square_mask] * BATCH,
        strength=strength,
        num_inference_steps=10,
        guidance_scale=CFG,
        negative_prompt=[NEGATIVE] * BATCH,
        generator=generators(),
        output_type="np",
    )
    kw = img2img_kwargs(strength=strength, mask_blur=0)
    ours = as_arrays(inpaint_model.inpaint(photo, square_mask, PROMPT, **kw))
    inside = np.asarray(square_mask) > 127
    original = np.asarray(photo, dtype=np.float64)
    for img, exp in zip(ours, diffusers_arrays(out), strict=True):
        assert np.abs(img[inside] - exp[inside]).mean() < 1.0
        assert np.array_equal(img[~inside], original[~inside])
    assert np.abs(ours[0] - ours[1]).mean() > 1.0
