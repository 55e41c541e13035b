"""txt2img, img2img and inpainting composed from the pipeline's steps (`StableDiffusion.generate` calls `generate`).

Seeds follow A1111: image k of a batch has the seed `seed + k` and draws everything random from its own CPU generator
seeded with it (diffusers' list of generators), in diffusers' order: the image posterior (when an input image is
encoded), the start noise, then (inpainting) the latent fill's noise and the masked image's posterior for 9-channel
models, then the sampler's noise. So each image of a batch is made again alone from the seed in its infotext. The start
noise takes A1111's variation seed and seed resize (`sd_core.noise`).

The input image is brought to the generation size by `resize_mode` (`sd_core.resize`): for img2img always; for
whole-picture inpainting "crop" and "fill" make the fitted picture (and mask) the input, where "resize" keeps
inpainting's own way (the region worked at the generation size, put back at the input's size).

img2img starts from latents in one way (`img2img_latents`: the start noise, then `pipe.denoise`), whether they come
from its input image (resized, or with resize_mode "latent" encoded at its own size and the latents resized: A1111's
"latent upscale") or from hires fix's upscale of a txt2img first pass (`sd_core.hires`, with its own seeds rule).

A callback raising `sd_core.Interrupted` ends sampling early; the run finishes from the latest estimate as usual
(decode, paste back, parameters), and each image gets `info["interrupted"] = True`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import embeddings, extra_networks, hires, images, inpainting, masks, resize, sdxl, tiling
from .controlnet import runner as controlnet_runner
from .noise import image_seeds, image_subseeds, start_noise
from .pnginfo import format_parameters
from .progress import Callback, LastStep, in_phase
from .settings import GenerationSettings, image_side
from .upscalers import latent


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
    sdxl.check_settings(s, pipe.config, mode)
    controlnet_runner.check_family(s.control, pipe.config.unet, pipe.family, pipe.name)
    if mode == "inpaint" and s.resize_mode != "resize":  # the fitted picture and mask become the input
        assert arr is not None
        arr, mask = _fit(arr, s), _fit(images.to_mask_array(mask), s)
        size = (s.width, s.height)
    second = None if s.hires is None else hires.second_pass(s)  # its errors before any work
    region = None if mode != "inpaint" else inpainting.prepare_region(arr, mask, s)
    networks = pipe.extra_networks.activate(s, compiled=pipe.accel.compiled_unet is not None)
    if region is not None and s.control and region.box != (0, 0, region.image.shape[1], region.image.shape[0]):
        s = replace(s, control=controlnet_runner.crop_to_region(s.control, region.image.shape, region.box))
    generators = _generators(s)
    steps = LastStep(callback)  # did it interrupt sampling? (`pipe.denoise` then returns the latest estimate)
    text = pipe.encode_prompt(s.prompt, s.negative_prompt, s.clip_skip, s.empty_negative, tags=s.extra_networks)
    refiner = [] if s.refiner is None else [s.refiner.unet]
    nets = list(dict.fromkeys(unit.net for unit in s.control))
    with tiling.seamless([pipe.unet, pipe.vae, *refiner, *nets], s.tiling):
        if region is not None:
            latents = _inpaint(pipe, s, region, text, generators, steps)
        elif arr is not None:
            latents = _img2img(pipe, s, arr, text, generators, steps)
        elif second is None:
            latents = _txt2img(pipe, s, text, generators, steps)
        else:
            latents = _txt2img(pipe, s, text, generators, in_phase(steps, 1, 2))
            if not steps.interrupted:  # interrupted in the first pass: its images, as A1111
                networks = _hires_networks(pipe, s, second, networks)
                latents = _hires(pipe, s, second, latents, text, in_phase(steps, 2, 2))
        imgs = pipe.decode_latents(latents, seamless=s.tiling)
    if region is not None:
        assert s.inpaint is not None
        pasted = inpainting.paste_back([np.asarray(img) for img in imgs], region, s.inpaint)
        imgs = [Image.fromarray(img) for img in pasted]
    out_size = (s.width, s.height) if size is None or mode == "img2img" else size
    fields = extra_networks.infotext_fields(networks)
    used = pipe.prompt_embeddings(s.prompt, s.negative_prompt, tags=s.extra_networks)
    fields.update(embeddings.infotext_fields(used))
    return _with_parameters(imgs, s, mode, pipe.name, out_size, interrupted=steps.interrupted, networks=fields)


def _hires_networks(pipe: Any, s: GenerationSettings, second: GenerationSettings, first: list) -> list:
    """A hires prompt's own LoRA tags apply to the second pass (A1111); the LoRAs of both passes are recorded."""
    if second.prompt == s.prompt:
        return first
    compiled = pipe.accel.compiled_unet is not None
    active = pipe.extra_networks.activate(second, second.prompt, compiled=compiled)
    return first + [a for a in active if a.applied.lora.identity not in {f.applied.lora.identity for f in first}]


def _fit(arr: np.ndarray, s: GenerationSettings) -> np.ndarray:
    """An input picture (uint8 HxWx3) or mask (float32 HxW) brought to the generation size by `s.resize_mode`."""
    assert s.width is not None and s.height is not None
    if s.resize_mode == "resize" and arr.ndim == 3:
        return images.resize_rgb(arr, s.width, s.height)
    fitted = resize.fit(Image.fromarray(arr), s.width, s.height, s.resize_mode)  # a float32 mask: mode "F"
    return np.asarray(fitted).clip(0, 1) if arr.ndim == 2 else np.asarray(fitted)


def _generators(s: GenerationSettings) -> list[torch.Generator]:
    """Image k's CPU generator, seeded with its seed."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in image_seeds(s)]


def _txt2img(
    pipe: Any, s: GenerationSettings, text: tuple, generators: list[torch.Generator], callback: Any
) -> torch.Tensor:
    noise = start_noise((s.batch_size, 4, s.height // 8, s.width // 8), s, generators)
    extra = None
    if pipe.config.inpainting:  # everything masked, the masked image all zeros (diffusers too)
        h, w = s.height // 8, s.width // 8
        masked = pipe.encode_pixels(torch.zeros(1, 3, s.height, s.width), None, s.batch_size)
        extra = torch.cat([torch.ones(s.batch_size, 1, h, w), masked], dim=1)
    return pipe.denoise(s, noise, text, generators, callback, extra=extra)


def _img2img(
    pipe: Any, s: GenerationSettings, arr: np.ndarray, text: tuple, generators: list[torch.Generator], callback: Any
) -> torch.Tensor:
    """The input image fitted to the size by `s.resize_mode`, encoded (image k's posterior from generator k)."""
    if s.resize_mode == "latent":  # A1111's "latent upscale": encoded at its own size, the latents resized
        own = images.resize_rgb(arr, image_side(arr.shape[1]), image_side(arr.shape[0]))
        init = pipe.encode_pixels(images.image_to_tensor(own), generators, s.batch_size, seamless=s.tiling)
        init = latent.upscale_latents(init, s.height // 8, s.width // 8, "Latent")
    else:
        init = pipe.encode_pixels(images.image_to_tensor(_fit(arr, s)), generators, s.batch_size, seamless=s.tiling)
    return img2img_latents(pipe, s, init, text, generators, callback)


def img2img_latents(
    pipe: Any, s: GenerationSettings, init: torch.Tensor, text: tuple, generators: list[torch.Generator], callback: Any
) -> torch.Tensor:
    """img2img from VP latents `init` [B, 4, h, w] at the settings' size: image k's start noise from generator k (with
    the variation seed, seed resize and noise multiplier: `noise.start_noise`), then `pipe.denoise` (9-channel
    models: nothing masked, the latents as the masked-image input)."""
    noise = start_noise(tuple(init.shape), s, generators)
    extra = None
    if pipe.config.inpainting:
        extra = torch.cat([torch.zeros(init.shape[0], 1, *init.shape[-2:]), init], dim=1)
    return pipe.denoise(s, noise, text, generators, callback, init=init, extra=extra)


def _hires(
    pipe: Any, s: GenerationSettings, second: GenerationSettings, latents: torch.Tensor, text: tuple, callback: Any
) -> torch.Tensor:
    """Hires fix's upscale and second pass (`sd_core.hires`): fresh generators from the same seeds, the prompts
    encoded again where they changed."""
    generators = _generators(second)
    init = hires.upscale(pipe, s, latents, generators)
    if second.strength is None:  # hires strength 0: A1111's second pass samples nothing
        return init
    if (second.prompt, second.negative_prompt) != (s.prompt, s.negative_prompt):
        negative, skip = second.negative_prompt, second.clip_skip
        text = pipe.encode_prompt(second.prompt, negative, skip, second.empty_negative, tags=second.extra_networks)
    return img2img_latents(pipe, second, init, text, generators, callback)


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
    noise = start_noise((s.batch_size, 4, h, w), s, generators)
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
    if s.subseed_strength:
        fields.update({"Variation seed": s.subseed, "Variation seed strength": s.subseed_strength})
    if s.seed_resize_from is not None:
        fields["Seed resize from"] = "{}x{}".format(*s.seed_resize_from)
    if mode != "txt2img":
        fields["Denoising strength"] = s.strength
    elif s.hires is not None:
        fields["Denoising strength"] = s.hires.strength
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
    if s.refiner is not None:  # A1111's fields
        fields["Refiner"] = s.refiner.name
        fields["Refiner switch at"] = 0.8 if s.refiner_switch_at is None else s.refiner_switch_at
    for name, label in (("original_size", "original size"), ("crops_coords_top_left", "crop"),
                        ("target_size", "target size")):  # fmt: skip
        if getattr(s, name) is not None:
            fields[f"SDXL {label}"] = "{}x{}".format(*getattr(s, name))
    for name, label in (("aesthetic_score", "Aesthetic score"), ("negative_aesthetic_score", "Negative aesthetic")):
        if getattr(s, name) is not None:
            fields[label] = getattr(s, name)
    if s.tiling:
        fields["Tiling"] = s.tiling
    if s.initial_noise_multiplier != 1.0:
        fields["Noise multiplier"] = s.initial_noise_multiplier
    options = s.sampler_options()
    eta_default = s.choice.options.get("eta")
    if options.get("eta", eta_default) != eta_default:  # A1111: "Eta DDIM" where the default is DDIM's 0
        fields["Eta DDIM" if eta_default == 0 else "Eta"] = options["eta"]
    for name, label in (("s_churn", "churn"), ("s_tmin", "tmin"), ("s_tmax", "tmax"), ("s_noise", "noise")):
        if name in options:
            fields[f"Sigma {label}"] = options[name]
    if s.hires is not None:
        fields.update(hires.infotext_fields(s))
    fields.update(controlnet_runner.infotext_fields(s.control))
    made = size if s.hires is None else s.hires.target_size(s.width, s.height)  # hires: the second pass is tiled
    if s.tile is not None and s.tile.applies(*made):
        fields["Tile size"] = f"{s.tile.width}x{s.tile.height}"
        fields["Tile overlap"] = s.tile.overlap
    return fields


def _with_parameters(
    imgs: list[Image.Image],
    s: GenerationSettings,
    mode: str,
    model: str,
    size: tuple[int, int],
    *,
    interrupted: bool,
    networks: dict[str, Any],
) -> list[Image.Image]:
    """Attach the A1111 parameters text and each image's own seed to each image's `info` (and `interrupted`: True
    when sampling was interrupted). LoRAs given as `settings.loras` are written into the text's prompt as tags, the
    only way A1111 records them."""
    fields = {**infotext_fields(s, mode, model, size), **networks}
    tags = [replace(tag, name=Path(tag.name).stem).text for tag in s.loras]
    prompt = " ".join([s.prompt, *tags]) if tags else s.prompt
    subseeds = image_subseeds(s)
    for pos, (img, seed) in enumerate(zip(imgs, image_seeds(s), strict=True)):
        extra = {"Batch size": len(imgs), "Batch pos": pos} if len(imgs) > 1 else {}
        if subseeds is not None:
            extra["Variation seed"] = img.info["subseed"] = subseeds[pos]
        img.info["parameters"] = format_parameters(prompt, s.negative_prompt, {**fields, "Seed": seed, **extra})
        img.info["seed"] = seed
        if interrupted:
            img.info["interrupted"] = True
    return imgs
