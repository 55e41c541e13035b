"""txt2img, img2img and inpainting composed from the pipeline's steps (`StableDiffusion.generate` calls `generate`).

Seeds follow A1111: image k of a batch has the seed `seed + k` and draws everything random from its own CPU generator
seeded with it (diffusers' list of generators), in diffusers' order: the image posterior (when an input image is
encoded), the start noise, then (inpainting) the latent fill's noise and the masked image's posterior for 9-channel
models, then the sampler's noise. So each image of a batch is made again alone from the seed in its infotext.

A callback raising `sd_core.Interrupted` ends sampling early; the run finishes from the latest estimate as usual
(decode, paste back, parameters), and each image gets `info["interrupted"] = True`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from . import images, inpainting, masks, tiling
from .pnginfo import format_parameters
from .progress import Callback, LastStep
from .samplers._core import randn
from .settings import GenerationSettings


def generate(
    pipe: Any, settings: GenerationSettings, image: Any, mask: Any, callback: Callback | None
) -> list[Image.Image]:
    """Images for `settings` on `pipe` (a `StableDiffusion`): txt2img without `image`, img2img with it, inpainting
    with `image` and `mask`."""
    if mask is not None and image is None:
        raise ValueError("a mask was given without an image: inpainting needs both")
    mode = "txt2img" if image is None else ("img2img" if mask is None else "inpaint")
    arr = None if image is None else images.to_rgb_array(image)
    size = None if arr is None else (arr.shape[1], arr.shape[0])
    s = settings.resolve(mode, pipe.defaults, size)
    region = None if mode != "inpaint" else inpainting.prepare_region(arr, mask, s)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in image_seeds(s)]
    steps = LastStep(callback)  # did it interrupt sampling? (`pipe.denoise` then returns the latest estimate)
    text = pipe.encode_prompt(s.prompt, s.negative_prompt, s.clip_skip)
    with tiling.seamless([pipe.unet, pipe.vae], s.tiling):
        if region is not None:
            latents = _inpaint(pipe, s, region, text, generators, steps)
        elif arr is not None:
            latents = _img2img(pipe, s, images.resize_rgb(arr, s.width, s.height), text, generators, steps)
        else:
            latents = _txt2img(pipe, s, text, generators, steps)
        imgs = pipe.decode_latents(latents, seamless=s.tiling)
    if region is not None:
        assert s.inpaint is not None
        pasted = inpainting.paste_back([np.asarray(img) for img in imgs], region, s.inpaint)
        imgs = [Image.fromarray(img) for img in pasted]
    out_size = (s.width, s.height) if size is None or mode == "img2img" else size
    return _with_parameters(imgs, s, mode, pipe.name, out_size, interrupted=steps.interrupted)


def image_seeds(s: GenerationSettings) -> list[int]:
    """The seed of each image of a batch (A1111): `seed + k` for image k."""
    assert s.seed is not None, "settings must be resolved"
    return [s.seed + k for k in range(s.batch_size)]


def _txt2img(
    pipe: Any, s: GenerationSettings, text: tuple, generators: list[torch.Generator], callback: Any
) -> torch.Tensor:
    noise = randn((s.batch_size, 4, s.height // 8, s.width // 8), generators)
    extra = None
    if pipe.config.inpainting:  # everything masked, the masked image all zeros (diffusers too)
        h, w = s.height // 8, s.width // 8
        masked = pipe.encode_pixels(torch.zeros(1, 3, s.height, s.width), None, s.batch_size)
        extra = torch.cat([torch.ones(s.batch_size, 1, h, w), masked], dim=1)
    return pipe.denoise(s, noise, text, generators, callback, extra=extra)


def _img2img(
    pipe: Any, s: GenerationSettings, arr: np.ndarray, text: tuple, generators: list[torch.Generator], callback: Any
) -> torch.Tensor:
    init = pipe.encode_pixels(images.image_to_tensor(arr), generators, s.batch_size, seamless=s.tiling)
    noise = randn(init.shape, generators)
    extra = None
    if pipe.config.inpainting:  # nothing masked, the whole image as the masked-image input
        extra = torch.cat([torch.zeros(init.shape[0], 1, *init.shape[-2:]), init], dim=1)
    return pipe.denoise(s, noise, text, generators, callback, init=init, extra=extra)


def _inpaint(
    pipe: Any,
    s: GenerationSettings,
    region: inpainting.Region,
    text: tuple,
    generators: list[torch.Generator],
    callback: Any,
) -> torch.Tensor:
    """Latents for the working region."""
    assert s.inpaint is not None and s.strength is not None
    work_img, work_mask = region.work_image, region.work_mask
    h, w = work_img.shape[0] // 8, work_img.shape[1] // 8
    needs_init = not pipe.config.inpainting or s.strength < 1.0
    pixels = images.image_to_tensor(work_img)
    init = pipe.encode_pixels(pixels, generators, s.batch_size, seamless=s.tiling) if needs_init else None
    noise = randn((s.batch_size, 4, h, w), generators)
    if init is not None:  # image k's fill noise from its own generator
        rows = zip(init.split(1), generators, strict=True)
        init = torch.cat([inpainting.fill_latents(one, work_mask, s.inpaint.fill, g) for one, g in rows])
    extra = blend_mask = None
    if pipe.config.inpainting:
        mask_latent, masked_image = masks.diffusers_inpaint_condition(work_img, work_mask)
        masked_latents = pipe.encode_pixels(masked_image, generators, s.batch_size, seamless=s.tiling)
        extra = torch.cat([mask_latent.expand(s.batch_size, -1, -1, -1), masked_latents], dim=1)
    else:
        blend_mask = masks.latent_mask(work_mask, h, w)
    return pipe.denoise(s, noise, text, generators, callback, init=init, extra=extra, blend_mask=blend_mask)


def infotext_fields(s: GenerationSettings, mode: str, model: str, size: tuple[int, int]) -> dict[str, Any]:
    """A1111's generation parameters for resolved settings, in A1111's order; None values are left out."""
    fields: dict[str, Any] = {
        "Steps": s.steps,
        "Sampler": s.choice.label,
        "Schedule type": s.choice.schedule_label,
        "CFG scale": s.cfg_scale,
        "Seed": s.seed,
        "Size": f"{size[0]}x{size[1]}",
        "Model": model,
    }
    if mode != "txt2img":
        fields["Denoising strength"] = s.strength
    if mode == "inpaint":
        assert s.inpaint is not None
        fields.update(
            {
                "Mask blur": s.inpaint.mask_blur,
                "Masked content": s.inpaint.fill,
                "Inpaint area": "Only masked" if s.inpaint.only_masked else "Whole picture",
                "Masked area padding": s.inpaint.padding if s.inpaint.only_masked else None,
                "Color match": "on" if s.inpaint.color_match else None,
            }
        )
    if s.clip_skip != 1:
        fields["Clip skip"] = s.clip_skip
    if s.tiling:
        fields["Tiling"] = s.tiling
    if s.tile is not None and s.tile.applies(s.width, s.height):
        fields["Tile size"] = f"{s.tile.width}x{s.tile.height}"
        fields["Tile overlap"] = s.tile.overlap
    return fields


def _with_parameters(
    imgs: list[Image.Image], s: GenerationSettings, mode: str, model: str, size: tuple[int, int], *, interrupted: bool
) -> list[Image.Image]:
    """Attach the A1111 parameters text and each image's own seed to each image's `info` (and `interrupted`: True
    when sampling was interrupted)."""
    fields = infotext_fields(s, mode, model, size)
    for pos, (img, seed) in enumerate(zip(imgs, image_seeds(s), strict=True)):
        extra = {"Batch size": len(imgs), "Batch pos": pos} if len(imgs) > 1 else {}
        img.info["parameters"] = format_parameters(s.prompt, s.negative_prompt, {**fields, "Seed": seed, **extra})
        img.info["seed"] = seed
        if interrupted:
            img.info["interrupted"] = True
    return imgs
