"""Hires fix as A1111 does it (`GenerationSettings.hires`, a `settings.HiresOptions`); `modes.generate` runs it.

1. First pass: txt2img at the settings' own size (A1111's `firstphase_width/height` are that size).
2. Upscale to `HiresOptions.upscale_size`. A latent mode ("Latent", "Latent (bicubic)", ...) resizes the first
   pass's latents (`upscalers.latent.upscale_latents`). A pixel or model (ESRGAN-family) upscaler decodes them to the
   images txt2img would return, resizes each with `upscalers.resize` (the upscaler while enlarging, then Lanczos to
   the exact size; sizes floored to multiples of 8, where A1111's VAE floors the odd pixels) and encodes it again,
   drawing its posterior from the image's second-pass generator as img2img does. With both hires sides given, the
   latents' centre is then cut to the target (A1111's truncation of the covering upscale).
3. Second pass: img2img from those latents (`modes.img2img_latents`, the path img2img itself takes) with
   `second_pass(s)`: the same settings at the target size, with the hires steps, strength, prompts, sampler and
   schedule, and `fixed_steps` (A1111's step rule for this pass: exactly the hires steps, the last of a schedule of
   `int(steps / min(strength, 0.999))`; strength 0 samples nothing, as A1111's empty schedule: the image is the
   upscaled first pass); fresh generators seeded seed + k, so image k draws new noise from its own
   seed again (A1111). The prompts are encoded again when they differ from the first pass's.

So, with a pixel or model upscaler, a hires image is exactly
`pipe.generate(second_pass(s), upscaled_first_pass_image)`: img2img of its upscaled first pass with those settings;
with a latent mode, img2img from the upscaled first-pass latents.

Progress: each pass is a sampling phase (`StepInfo.phase` 1 and 2 of `phases` 2), counting its own steps. An
`Interrupted` during the first pass returns the first pass's images (at the first pass's size; A1111 skips the second
pass then too); during the second, that pass's latest estimate. The parameters text is the hires run's either way.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from . import images, limits, upscalers
from .settings import GenerationSettings
from .upscalers import latent


def second_pass(s: GenerationSettings) -> GenerationSettings:
    """The img2img settings of the second pass of resolved txt2img settings `s` with `s.hires` (A1111's): everything
    of `s` at `HiresOptions.target_size`, with the hires prompts, sampler, schedule, steps (or the first pass's) and
    strength, and `fixed_steps`. A `SettingError` names the hires setting at fault."""
    h = s.hires
    assert h is not None and s.width is not None and s.height is not None, "resolved settings with hires"
    width, height = h.target_size(s.width, s.height)
    schedule = h.schedule
    if schedule is None and (h.sampler is None or s.choice.schedule_label != "Automatic"):
        schedule = s.schedule  # A1111: a hires scheduler left out is the first pass's ("Automatic" stays automatic)
    try:
        return replace(
            s,
            hires=None,
            prompt=s.prompt if h.prompt is None else h.prompt,
            negative_prompt=s.negative_prompt if h.negative_prompt is None else h.negative_prompt,
            width=width,
            height=height,
            steps=h.steps or s.steps,
            sampler=h.sampler or s.sampler,
            schedule=schedule,
            strength=h.strength or None,  # 0: nothing to sample (`modes` returns the upscaled latents)
            fixed_steps=True,
        )
    except limits.SettingError as exc:
        raise limits.SettingError(f"hires_{exc.setting}", f"hires fix's second pass: {exc}") from None


def upscale(pipe: Any, s: GenerationSettings, latents: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """The first pass's VP latents [B, 4, h, w] brought to the second pass's size by `s.hires.upscaler`; a pixel
    upscaler's encoding draws image k's posterior from `generators[k]`."""
    h = s.hires
    assert h is not None and s.width is not None and s.height is not None
    up_w, up_h = h.upscale_size(s.width, s.height)
    width, height = h.target_size(s.width, s.height)
    if h.latent_mode is not None:
        z = latent.upscale_latents(latents, up_h // 8, up_w // 8, h.latent_mode)
    else:
        size = (up_w // 8 * 8, up_h // 8 * 8)
        decoded = pipe.decode_latents(latents, seamless=s.tiling)
        pictures = [upscalers.resize(img, *size, h.upscaler, seamless=s.tiling) for img in decoded]
        z = torch.cat(
            [
                pipe.encode_pixels(images.image_to_tensor(images.to_rgb_array(img)), [generator], 1, seamless=s.tiling)
                for img, generator in zip(pictures, generators, strict=True)
            ]
        )
    return centre(z, height // 8, width // 8)


def centre(z: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The centre h x w of latents [B, C, H, W]; the odd row or column is cut at the bottom or right (A1111)."""
    cut_y, cut_x = z.shape[-2] - h, z.shape[-1] - w
    return z[..., cut_y // 2 : z.shape[-2] - (cut_y + 1) // 2, cut_x // 2 : z.shape[-1] - (cut_x + 1) // 2]


def infotext_fields(s: GenerationSettings) -> dict[str, Any]:
    """A1111's hires parameters of resolved settings `s`, in A1111's order (after its other fields; "Denoising
    strength" is among those): the second pass's sampler, prompts and schedule only where they differ from the first
    pass's, "Hires upscale" or "Hires resize", "Hires steps" only when given, the upscaler. None values are left out."""
    h = s.hires
    assert h is not None
    second = second_pass(s)
    by_scale = h.width is None and h.height is None

    def changed(first: Any, then: Any) -> Any:
        return None if then == first else then

    return {
        "Hires sampler": changed(s.choice.label, second.choice.label),
        "Hires prompt": changed(s.prompt, second.prompt),
        "Hires negative prompt": changed(s.negative_prompt, second.negative_prompt),
        "Hires schedule type": changed(s.choice.schedule_label, second.choice.schedule_label),
        "Hires upscale": h.scale if by_scale else None,
        "Hires resize": None if by_scale else f"{h.width or 0}x{h.height or 0}",
        "Hires steps": h.steps,
        "Hires upscaler": h.upscaler_name,
    }
