"""Inpainting with any model, seam-free and never touching pixels outside the (blurred) mask.

Steps: blur the mask (A1111 "mask blur"); choose the region (the whole image, or with `only_masked` the blurred
mask's box plus `padding`, enlarged to the working size's aspect ratio); resize it to the working size; optionally
prefill the masked content; generate (ordinary models: blended latent diffusion; 9-channel models: mask and
masked-image latents as extra input, as diffusers); resize back; optionally colour-match to the surroundings; paste
back with the blurred mask, so pixels where it is 0 keep their exact bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from . import images
from .pipeline import Callback, check_strength, resize_rgb, working_size

if TYPE_CHECKING:
    from .pipeline import StableDiffusion

# A1111 `inpainting_fill` 0..3 in order: what the masked area holds before sampling (matters when strength < 1).
FILLS = ("fill", "original", "latent_noise", "latent_nothing")
DEFAULT_WORKING_SIZE = 512


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    if mask.shape == (height, width):
        return mask
    return np.asarray(Image.fromarray(mask, "F").resize((width, height), Image.BILINEAR)).clip(0, 1)


def inpaint(
    pipe: StableDiffusion,
    image: Any,
    mask: Any,
    prompt: str,
    *,
    strength: float,
    mask_blur: float,
    only_masked: bool,
    padding: int,
    fill: str,
    color_match: bool,
    negative_prompt: str,
    width: int | None,
    height: int | None,
    steps: int,
    sampler: str,
    schedule: str | None,
    cfg_scale: float | None,
    seed: int | None,
    batch_size: int,
    clip_skip: int,
    tiling: Any,
    callback: Callback | None,
) -> list[Image.Image]:
    check_strength(strength)
    cfg_scale = pipe.cfg_scale_or_default(cfg_scale)
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
    if not isinstance(mask_blur, (int, float)) or mask_blur < 0:
        raise ValueError(f"mask_blur must be a number >= 0, got {mask_blur!r}")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an integer >= 0, got {padding!r}")
    arr = images.to_rgb_array(image)
    m = images.to_mask_array(mask)
    images.check_same_size(arr, m)
    if not (m > 0).any():
        raise ValueError("mask is empty: nothing to inpaint (white marks the area to repaint)")
    blurred = images.blur_mask(m, mask_blur)

    if only_masked:
        work_w, work_h = width or DEFAULT_WORKING_SIZE, height or DEFAULT_WORKING_SIZE
        images.check_size(work_w, work_h)
        x0, y0, x1, y1 = images.mask_bbox(blurred, padding, work_w, work_h)
    else:
        work_w, work_h = working_size(arr, width, height)
        x0, y0, x1, y1 = 0, 0, arr.shape[1], arr.shape[0]
    crop, crop_mask = arr[y0:y1, x0:x1], blurred[y0:y1, x0:x1]
    work_img, work_mask = resize_rgb(crop, work_w, work_h), resize_mask(crop_mask, work_w, work_h)
    if fill == "fill":
        work_img = images.fill_masked(work_img, work_mask)

    choice, seed, g, cond, uncond, axes = pipe._prepare(
        prompt, negative_prompt, steps, sampler, schedule, cfg_scale, seed, batch_size, clip_skip, tiling
    )
    with pipe._seamless(axes):
        latents = _generate(
            pipe,
            work_img,
            work_mask,
            choice=choice,
            steps=steps,
            strength=strength,
            fill=fill,
            batch=batch_size,
            generator=g,
            cond=cond,
            uncond=uncond,
            cfg_scale=cfg_scale,
            callback=callback,
        )
        generated = pipe.decode_latents(latents, seamless=axes)

    results = []
    for img in generated:
        region = resize_rgb(np.asarray(img), x1 - x0, y1 - y0)
        if color_match:
            region = images.color_match(region, crop, crop_mask)
        pasted = arr.copy()
        pasted[y0:y1, x0:x1] = region
        results.append(Image.fromarray(images.composite(arr, pasted, blurred)))
    settings = pipe._settings(
        choice,
        steps,
        cfg_scale,
        seed,
        arr.shape[1],
        arr.shape[0],
        **{
            "Denoising strength": strength,
            "Mask blur": mask_blur,
            "Masked content": fill,
            "Inpaint area": "Only masked" if only_masked else "Whole picture",
            "Masked area padding": padding if only_masked else None,
            "Color match": "on" if color_match else None,
        },
    )
    return pipe._finish(results, prompt, negative_prompt, settings)


def _generate(
    pipe: StableDiffusion,
    work_img: np.ndarray,
    work_mask: np.ndarray,
    *,
    choice: Any,
    steps: int,
    strength: float,
    fill: str,
    batch: int,
    generator: torch.Generator,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    cfg_scale: float,
    callback: Callback | None,
) -> torch.Tensor:
    """Latents for the working region. Random draws in diffusers' order: image posterior (when used), start
    noise, then the masked image's posterior for 9-channel models."""
    h, w = work_img.shape[0] // 8, work_img.shape[1] // 8
    needs_init = not pipe.config.inpainting or strength < 1.0
    init = pipe.encode_pixels(images.image_to_tensor(work_img), generator, batch) if needs_init else None
    noise = torch.randn((batch, 4, h, w), generator=generator)
    if init is not None and fill in ("latent_noise", "latent_nothing"):
        lm = images.latent_mask(work_mask, h, w)
        replacement = torch.randn(init.shape, generator=generator) if fill == "latent_noise" else 0.0
        init = init * (1 - lm) + replacement * lm
    extra = blend_mask = None
    if pipe.config.inpainting:
        mask_latent, masked_image = images.diffusers_inpaint_condition(work_img, work_mask)
        masked_latents = pipe.encode_pixels(masked_image, generator, batch)
        extra = torch.cat([mask_latent.expand(batch, -1, -1, -1), masked_latents], dim=1)
    else:
        blend_mask = images.latent_mask(work_mask, h, w)
    return pipe._denoise(
        choice=choice,
        steps=steps,
        strength=strength,
        noise=noise,
        init=init,
        cond=cond,
        uncond=uncond,
        cfg_scale=cfg_scale,
        generator=generator,
        callback=callback,
        extra=extra,
        blend_mask=blend_mask,
    )
