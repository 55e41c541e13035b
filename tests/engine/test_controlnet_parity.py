"""AC2: generation with ControlNets equals diffusers' ControlNet pipelines on the tiny random models (mean absolute
pixel difference under 1/255): txt2img with euler (same sigmas) and ddim, strengths 1.0 and 0.5, a start/end window,
two nets at once, guess mode, img2img, 9-channel inpainting, and SDXL. Each check also makes sure the control changed
the image by far more than the tolerance, so the parity is not that of two images the nets did not touch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from controlnet_fixtures import controlnet_folder, write_controlnet_file
from model_fixtures import _cached_folder, write_tiny_checkpoint
from PIL import Image

import sd_core

PROMPT, NEGATIVE, SEED, STEPS, SIZE = "a stone wall", "blurry", 4321, 8, 64


def control_map(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A structured control image of another size than the generation (resized by both sides)."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    disc = ((x - size[0] * 0.4 - 4 * seed) ** 2 + (y - size[1] * 0.5) ** 2 < (size[1] * 0.3) ** 2) * 200
    rgb = np.stack([disc + (x * 5) % 50, (y * 7 + 30 * seed) % 256, 255 - disc], -1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return sd_core.load(write_tiny_checkpoint(tmp_path_factory.mktemp("m") / "sd1.safetensors"), "cpu", torch.float32)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn")
    return [
        sd_core.load_controlnet(write_controlnet_file(root / f"cn{seed}.safetensors", seed=seed), "cpu", torch.float32)
        for seed in (0, 1)
    ]


def diffusers_nets(count: int = 1):
    from diffusers import ControlNetModel

    nets = [ControlNetModel.from_pretrained(str(controlnet_folder("sd1", seed))) for seed in range(count)]
    return nets[0] if count == 1 else nets


def reference(kind: str, count: int = 1, scheduler: str = "ddim", inpainting: bool = False):
    import diffusers

    cls = getattr(diffusers, kind)
    pipe = cls.from_pretrained(
        str(_cached_folder(0, False, inpainting)),
        controlnet=diffusers_nets(count),
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
    )
    if scheduler == "ddim":
        pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    else:
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="linspace"
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(img, dtype=np.float64) for img in images]


def diffusers_pixels(out) -> list[np.ndarray]:
    return [(img * 255).round().astype(np.float64) for img in out.images]


def assert_same(ours: list[np.ndarray], ref: list[np.ndarray], plain: list[np.ndarray]) -> float:
    """ours equals ref within 1/255 mean; the control moved the image (vs `plain`, the same run without it)."""
    worst = 0.0
    for a, b, c in zip(ours, ref, plain, strict=True):
        assert a.shape == b.shape
        diff = np.abs(a - b).mean()
        assert diff < 1.0, f"mean abs pixel difference {diff:.3f} >= 1/255"
        moved = np.abs(a - c).mean()
        assert moved > 2.0, f"the ControlNet moved the image by {moved:.2f} only: the parity would prove little"
        worst = max(worst, diff)
        print(f"parity: mean abs diff {diff:.4f}, max abs diff {np.abs(a - b).max():.0f}, control moved {moved:.2f}")
    return worst


def common(**kw) -> dict:
    return dict(negative_prompt=NEGATIVE, steps=STEPS, cfg_scale=7.5, seed=SEED) | kw


def diffusers_common(**kw) -> dict:
    base = dict(negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=7.5, output_type="np")
    return base | {"generator": torch.Generator("cpu").manual_seed(SEED)} | kw


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_txt2img_ddim_matches_diffusers(sd1, nets, strength):
    ref = reference("StableDiffusionControlNetPipeline")
    image = control_map()
    expected = diffusers_pixels(
        ref(PROMPT, image=image, width=SIZE, height=SIZE, controlnet_conditioning_scale=strength, **diffusers_common())
    )
    control = [sd_core.Control(nets[0], image, strength=strength)]
    ours = pixels(sd1.txt2img(PROMPT, width=SIZE, height=SIZE, sampler="ddim", control=control, **common()))
    plain = pixels(sd1.txt2img(PROMPT, width=SIZE, height=SIZE, sampler="ddim", **common()))
    assert_same(ours, expected, plain)


def test_txt2img_euler_with_the_same_sigmas_matches_diffusers(sd1, nets):
    ref = reference("StableDiffusionControlNetPipeline", scheduler="euler")
    sigmas = sd_core.samplers.resolve("euler").sigmas(STEPS, sd1.noise_schedule)
    image = control_map()
    expected = diffusers_pixels(
        ref(PROMPT, image=image, width=SIZE, height=SIZE, sigmas=sigmas[:-1].tolist(), **diffusers_common())
    )
    control = [sd_core.Control(nets[0], image)]
    ours = pixels(sd1.txt2img(PROMPT, width=SIZE, height=SIZE, sampler="euler", control=control, **common()))
    plain = pixels(sd1.txt2img(PROMPT, width=SIZE, height=SIZE, sampler="euler", **common()))
    assert_same(ours, expected, plain)


def test_start_end_window_matches_diffusers(sd1, nets):
    """start 0.2, end 0.8 of 10 steps: diffusers' rule guides steps 2-7; a whole-run control differs from it."""
    ref = reference("StableDiffusionControlNetPipeline")
    image = control_map()
    kw = dict(width=SIZE, height=SIZE, image=image, control_guidance_start=0.2, control_guidance_end=0.8)
    expected = diffusers_pixels(ref(PROMPT, **kw, **diffusers_common(num_inference_steps=10)))
    run = dict(width=SIZE, height=SIZE, sampler="ddim", **common(steps=10))
    ours = pixels(sd1.txt2img(PROMPT, control=[sd_core.Control(nets[0], image, start=0.2, end=0.8)], **run))
    whole = pixels(sd1.txt2img(PROMPT, control=[sd_core.Control(nets[0], image)], **run))
    assert_same(ours, expected, pixels(sd1.txt2img(PROMPT, **run)))
    assert np.abs(ours[0] - whole[0]).mean() > 1.0, "the window must change the image"


def test_two_controlnets_sum_like_diffusers(sd1, nets):
    ref = reference("StableDiffusionControlNetPipeline", count=2)
    images = [control_map(0), control_map(1, (64, 64))]
    expected = diffusers_pixels(
        ref(
            PROMPT,
            image=images,
            width=SIZE,
            height=SIZE,
            controlnet_conditioning_scale=[0.8, 0.6],
            **diffusers_common(),
        )
    )
    control = [sd_core.Control(nets[0], images[0], strength=0.8), sd_core.Control(nets[1], images[1], strength=0.6)]
    ours = pixels(sd1.txt2img(PROMPT, width=SIZE, height=SIZE, sampler="ddim", control=control, **common()))
    one = pixels(sd1.txt2img(PROMPT, width=SIZE, height=SIZE, sampler="ddim", control=control[:1], **common()))
    assert_same(ours, expected, one)


def test_guess_mode_matches_diffusers(sd1, nets):
    ref = reference("StableDiffusionControlNetPipeline")
    image = control_map()
    expected = diffusers_pixels(
        ref(PROMPT, image=image, width=SIZE, height=SIZE, guess_mode=True, **diffusers_common())
    )
    control = [sd_core.Control(nets[0], image, guess_mode=True)]
    ours = pixels(sd1.txt2img(PROMPT, width=SIZE, height=SIZE, sampler="ddim", control=control, **common()))
    balanced = [sd_core.Control(nets[0], image)]
    assert_same(
        ours,
        expected,
        pixels(sd1.txt2img(PROMPT, width=SIZE, height=SIZE, sampler="ddim", control=balanced, **common())),
    )


def test_img2img_matches_diffusers(sd1, nets):
    ref = reference("StableDiffusionControlNetImg2ImgPipeline")
    init, image = control_map(2, (64, 64)), control_map()
    size = dict(width=SIZE, height=SIZE, controlnet_conditioning_scale=1.0)  # its default is 0.8
    expected = diffusers_pixels(
        ref(PROMPT, image=init, control_image=image, strength=0.75, **size, **diffusers_common())
    )
    kw = dict(sampler="ddim", strength=0.75, **common())
    ours = pixels(sd1.img2img(init, PROMPT, control=[sd_core.Control(nets[0], image)], **kw))
    assert_same(ours, expected, pixels(sd1.img2img(init, PROMPT, **kw)))


def test_inpaint_9_channel_matches_diffusers(tmp_path, nets):
    """diffusers returns the raw decode; ours pastes the original back outside the mask (mask_blur 0)."""
    pipe = sd_core.load(write_tiny_checkpoint(tmp_path / "inp.safetensors", inpainting=True), "cpu", torch.float32)
    ref = reference("StableDiffusionControlNetInpaintPipeline", inpainting=True)
    init, image = control_map(2, (64, 64)), control_map()
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[12:44, 16:52] = 255
    mask_image = Image.fromarray(mask, "L")
    kw = dict(width=SIZE, height=SIZE, strength=1.0, controlnet_conditioning_scale=1.0)  # its default is 0.5
    raw = ref(PROMPT, image=init, mask_image=mask_image, control_image=image, **kw, **diffusers_common())
    m = (mask / 255.0)[:, :, None]
    expected = [np.asarray(init) * (1 - m) + px * m for px in diffusers_pixels(raw)]
    kw = dict(sampler="ddim", mask_blur=0, **common())
    ours = pixels(pipe.inpaint(init, mask_image, PROMPT, control=[sd_core.Control(nets[0], image)], **kw))
    assert_same(ours, expected, pixels(pipe.inpaint(init, mask_image, PROMPT, **kw)))


def test_sdxl_txt2img_matches_diffusers(tmp_path):
    """A tiny SDXL model with a tiny SDXL ControlNet (its vector `y` through the net's own `label_emb`), a batch of
    two (image k from generator seed + k), against StableDiffusionXLControlNetPipeline."""
    import diffusers
    from sdxl_fixtures import sdxl_folder, write_sdxl_checkpoint

    pipe = sd_core.load(write_sdxl_checkpoint(tmp_path / "base.safetensors"), "cpu", torch.float32)
    net = sd_core.load_controlnet(write_controlnet_file(tmp_path / "cn.safetensors", "sdxl"), "cpu", torch.float32)
    ref = diffusers.StableDiffusionXLControlNetPipeline.from_pretrained(
        str(sdxl_folder()),
        controlnet=diffusers.ControlNetModel.from_pretrained(str(controlnet_folder("sdxl"))),
        local_files_only=True,
    )
    ref.scheduler = diffusers.DDIMScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    image = control_map()
    expected = diffusers_pixels(
        ref(
            PROMPT,
            image=image,
            width=SIZE,
            height=SIZE,
            num_images_per_prompt=2,
            controlnet_conditioning_scale=0.7,
            **diffusers_common(generator=[torch.Generator("cpu").manual_seed(SEED + k) for k in range(2)]),
        )
    )
    kw = dict(width=SIZE, height=SIZE, sampler="ddim", batch_size=2, **common())
    ours = pixels(pipe.txt2img(PROMPT, control=[sd_core.Control(net, image, strength=0.7)], **kw))
    assert_same(ours, expected, pixels(pipe.txt2img(PROMPT, **kw)))
