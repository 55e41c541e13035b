"""StableDiffusion: text conditioning, sampling and decoding around the three networks. Knows nothing of files."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import cuda_graphs, heap, images, samplers, tiling
from .denoiser import GuidedDenoiser, InpaintBlend
from .model_config import ModelConfig
from .pnginfo import format_parameters
from .prompt import encode_with_weights, tokenize_prompt
from .schedules import NoiseSchedule
from .tokenizer import CLIPTokenizer

Callback = Callable[[dict[str, Any]], None]
MAX_BATCH = 64
DEFAULT_CFG_SCALE = 7.5
"""The CFG scale when neither the caller nor the model file names one (diffusers' default; A1111's is 7)."""
CFG_SCALE_KEY = "sd_core.cfg_scale"
"""`.safetensors` metadata key with a model's own default CFG scale (a decimal string, e.g. "3")."""


def random_seed() -> int:
    """A fresh seed in A1111's range, for `seed=None` or -1."""
    return random.randrange(2**32)


def check_generation_args(steps: int, cfg_scale: float, batch_size: int) -> None:
    """Clear errors for settings that cannot produce an image."""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 1000:
        raise ValueError(f"steps must be an integer from 1 to 1000, got {steps!r}")
    if not isinstance(cfg_scale, (int, float)) or not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be an integer from 1 to {MAX_BATCH}, got {batch_size!r}")


class StableDiffusion:
    """A loaded model: `txt2img`, `img2img`, `inpaint`. Build it with `sd_core.load(path)`."""

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        config: ModelConfig,
        *,
        device: torch.device,
        dtype: torch.dtype,
        name: str = "model",
        default_cfg_scale: float = DEFAULT_CFG_SCALE,
    ) -> None:
        self.unet, self.vae, self.text_encoder = unet.eval(), vae.eval(), text_encoder.eval()
        self.config, self.device, self.dtype, self.name = config, device, dtype, name
        self.tokenizer = CLIPTokenizer()
        self.noise_schedule = NoiseSchedule()
        self.low_vram: Any = None  # sd_core.perf.LowVRAM when weights are offloaded between uses (GPU)
        self.cuda_graphs = False  # UNet steps replayed as CUDA graphs (`sd_core.cuda_graphs`): `perf.optimize`, CUDA
        self.default_cfg_scale = default_cfg_scale  # the model file's own (`sd_core.cfg_scale`) when it names one

    def cfg_scale_or_default(self, cfg_scale: float | None) -> float:
        """`cfg_scale`, or this model's default when None: most models work at 7-7.5 (A1111's and diffusers'
        default), but some ask for less, e.g. the built-in model (best at 3) or distilled models."""
        return self.default_cfg_scale if cfg_scale is None else cfg_scale

    # --- conditioning -------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_prompt(self, prompt: str, negative_prompt: str = "", clip_skip: int = 1) -> tuple[torch.Tensor, ...]:
        """Text embeddings (cond, uncond) with A1111 emphasis; both padded to the same number of 77-token chunks.

        `clip_skip` follows A1111: 1 = the model's usual layer, 2 = one layer earlier, ...
        """
        if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
            raise ValueError("prompt and negative_prompt must be strings")
        if not isinstance(clip_skip, int) or not 1 <= clip_skip <= 12:
            raise ValueError(f"clip_skip must be an integer from 1 to 12, got {clip_skip!r}")
        pad = self.config.pad_token
        tokens_c, weights_c = tokenize_prompt(prompt, self.tokenizer, pad_token=pad)
        tokens_u, weights_u = tokenize_prompt(negative_prompt, self.tokenizer, pad_token=pad, min_chunks=len(tokens_c))
        if len(tokens_u) > len(tokens_c):
            tokens_c, weights_c = tokenize_prompt(prompt, self.tokenizer, pad_token=pad, min_chunks=len(tokens_u))
        skip = self.config.text_skip + clip_skip - 1

        def encode(tokens: torch.Tensor) -> torch.Tensor:
            return self.text_encoder(tokens.to(self.device), skip=skip).float()

        return encode_with_weights(encode, tokens_c, weights_c), encode_with_weights(encode, tokens_u, weights_u)

    # --- latents <-> pixels -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode_latents(
        self, latents: torch.Tensor, *, seamless: str | None = None, tile: bool | None = None
    ) -> list[Image.Image]:
        """VP latents -> PIL images, one image at a time (the decoder's activations for one image, not for the whole
        batch: measured at 512x512 batch 4 in float32 on the CPU, 1.9 GB lower peak RSS and no slower); tiled when
        large or out of memory (`sd_core.tiling`). A float16 VAE that overflows to NaN is upcast to float32 once and
        retried (the black-image failure of half precision)."""
        if self.device.type == "cpu":
            heap.release_free_heap()  # the sampler's freed buffers out of RSS before the decoder's come in
        z = latents / self.config.latent_scale
        for _attempt in range(2):
            vae_dtype = next(self.vae.parameters()).dtype
            pixels = torch.cat(
                [
                    tiling.decode_with_fallback(
                        self.vae.decode, one.to(self.device, vae_dtype), tile=tile, seamless=seamless
                    )
                    .float()
                    .cpu()
                    for one in z.split(1)
                ]
            )
            if vae_dtype != torch.float16 or torch.isfinite(pixels).all():
                break
            self.vae.to(torch.float32)
        if self.low_vram is not None:
            self.low_vram.release()
        return images.tensor_to_images(pixels)  # on the CPU already: each image moved as it was decoded

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor, generator: torch.Generator | None, batch: int = 1) -> torch.Tensor:
        """[-1,1] pixels [1,3,H,W] -> scaled VP latents [batch,4,h,w]. Samples the posterior with `generator`
        (diffusers' order of draws), or takes its mean when `generator` is None or the image needs tiled encoding."""
        vae_dtype = next(self.vae.parameters()).dtype
        x = pixels.to(self.device, vae_dtype)
        if tiling.should_tile(x.shape[-2], x.shape[-1], vae_dtype, self.device):
            mean = tiling.tiled_encode(lambda t: self.vae.encode(t)[0], x).float().cpu()
            return mean.expand(batch, -1, -1, -1) * self.config.latent_scale
        mean, logvar = self.vae.encode(x)
        mean, logvar = mean.float().cpu().expand(batch, -1, -1, -1), logvar.float().cpu()
        if generator is not None:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            mean = mean + std * torch.randn(mean.shape, generator=generator, dtype=torch.float32)
        return mean * self.config.latent_scale

    # --- sampling -----------------------------------------------------------------------------------------------

    def _sample(
        self,
        *,
        choice: samplers.SamplerChoice,
        sigmas: torch.Tensor,
        x: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        cfg_scale: float,
        generator: torch.Generator,
        callback: Callback | None,
        extra: torch.Tensor | None = None,
        blend: InpaintBlend | None = None,
    ) -> torch.Tensor:
        """Run the sampler in k-diffusion space; return VP latents on the CPU."""
        graphed = self.cuda_graphs and cuda_graphs.graphs_usable(self.device, self.low_vram)
        unet = cuda_graphs.GraphedUNet(self.unet) if graphed else self.unet
        denoiser = GuidedDenoiser(
            unet,
            self.noise_schedule,
            self.config.prediction,
            cond.to(self.device),
            uncond.to(self.device),
            cfg_scale,
            extra=None if extra is None else extra.to(self.device),
            blend=None if blend is None else blend.to(self.device),
        )
        total = len(sigmas) - 1
        heap_kept = contextlib.ExitStack()

        def on_step(info: dict[str, Any]) -> None:
            if info["i"] == 0 and self.device.type == "cpu":
                # from the second step on, each step's buffers stay mapped for the next instead of being faulted in
                # again (`heap`); not in the first, which packs the weights for this shape: its temporaries go back
                heap_kept.enter_context(heap.freed_memory_kept())
            if callback is not None:
                callback(
                    {
                        "step": info["i"] + 1,
                        "total": total,
                        "latents": info["x"],
                        "denoised": info["denoised"],
                        "sigma": float(info["sigma"]),
                    }
                )

        # text K/V memo: not under CUDA graphs, whose replays would keep K/V tensors the memo may drop (and replays
        # launch those projections for free)
        reuse = getattr(self.unet, "reusing_text_projections", contextlib.nullcontext)
        if graphed:
            reuse = contextlib.nullcontext
        with torch.inference_mode(), reuse(), heap_kept:
            x = choice.fn(denoiser, x.to(self.device), sigmas.to(self.device), callback=on_step, generator=generator)
            if denoiser.blend is not None:
                x = denoiser.blend.apply(x, sigmas[-1].reshape(1).to(x.device).expand(x.shape[0]))
        return (x / math.sqrt(1.0 + float(sigmas[-1]) ** 2)).float().cpu()

    def _denoise(
        self,
        *,
        choice: samplers.SamplerChoice,
        steps: int,
        strength: float,
        noise: torch.Tensor,
        init: torch.Tensor | None,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        cfg_scale: float,
        generator: torch.Generator,
        callback: Callback | None,
        extra: torch.Tensor | None = None,
        blend_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sampling from pure noise (strength 1) or from `init` noised to the strength's level.

        Strength follows diffusers: of the `steps` sigmas, the last `int(steps * strength)` steps run, starting
        from `init + noise * sigma_start`. Strength 1 starts from pure noise, as diffusers' inpainting does.
        """
        sigmas = choice.sigmas(steps, self.noise_schedule)
        run = min(int(steps * strength), steps)
        if run < 1:
            raise ValueError(
                f"strength {strength} with {steps} steps leaves no step to run: "
                "raise strength or steps (strength * steps must be at least 1)"
            )
        sigmas = sigmas[steps - run :]
        if init is None or strength >= 1.0:
            x = noise * choice.initial_noise_scale(sigmas)
        else:
            x = init + noise * sigmas[0]
        blend = None if blend_mask is None else InpaintBlend(blend_mask, init, noise)
        return self._sample(
            choice=choice,
            sigmas=sigmas,
            x=x,
            cond=cond,
            uncond=uncond,
            cfg_scale=cfg_scale,
            generator=generator,
            callback=callback,
            extra=extra,
            blend=blend,
        )

    def _settings(
        self,
        choice: samplers.SamplerChoice,
        steps: int,
        cfg_scale: float,
        seed: int,
        width: int,
        height: int,
        **more: Any,
    ) -> dict[str, Any]:
        return {
            "Steps": steps,
            "Sampler": choice.label,
            "Schedule type": choice.schedule_label,
            "CFG scale": cfg_scale,
            "Seed": seed,
            "Size": f"{width}x{height}",
            "Model": self.name,
            **more,
        }

    def _finish(
        self, imgs: list[Image.Image], prompt: str, negative_prompt: str, settings: dict[str, Any]
    ) -> list[Image.Image]:
        """Attach the A1111 parameters text (and the seed) to each image's `info`."""
        for pos, img in enumerate(imgs):
            extra = {"Batch size": len(imgs), "Batch pos": pos} if len(imgs) > 1 else {}
            img.info["parameters"] = format_parameters(prompt, negative_prompt, {**settings, **extra})
            img.info["seed"] = settings["Seed"]
        return imgs

    def _prepare(
        self,
        prompt: str,
        negative_prompt: str,
        steps: int,
        sampler: str,
        schedule: str | None,
        cfg_scale: float,
        seed: int | None,
        batch_size: int,
        clip_skip: int,
        tiling_axes: Any,
    ) -> tuple[samplers.SamplerChoice, int, torch.Generator, torch.Tensor, torch.Tensor, str | None]:
        """Validation and the pieces every mode shares: sampler, seed and its generator, text embeddings."""
        check_generation_args(steps, cfg_scale, batch_size)
        choice = samplers.resolve(sampler, schedule)
        axes = seamless_axes(tiling_axes)
        seed = random_seed() if seed is None or seed == -1 else int(seed)
        if not 0 <= seed < 2**63:
            raise ValueError(f"seed must be -1 (random) or from 0 to 2**63-1, got {seed}")
        cond, uncond = self.encode_prompt(prompt, negative_prompt, clip_skip)
        return choice, seed, torch.Generator("cpu").manual_seed(seed), cond, uncond, axes

    # --- modes --------------------------------------------------------------------------------------------------

    def txt2img(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        width: int = 512,
        height: int = 512,
        steps: int = 20,
        sampler: str = "euler",
        schedule: str | None = None,
        cfg_scale: float | None = None,
        seed: int | None = None,
        batch_size: int = 1,
        clip_skip: int = 1,
        tiling: str | bool | None = None,
        callback: Callback | None = None,
    ) -> list[Image.Image]:
        """Images from text. `seed=None` (or -1) picks a random seed; each image's `info["seed"]` and
        `info["parameters"]` (A1111 text) record what made it. `tiling` "x", "y" or "xy" makes the image wrap
        seamlessly on those axes. `cfg_scale=None` takes the model's default (`default_cfg_scale`). A callback
        cancels by raising `sd_core.Cancelled`."""
        images.check_size(width, height)
        cfg_scale = self.cfg_scale_or_default(cfg_scale)
        choice, seed, g, cond, uncond, axes = self._prepare(
            prompt, negative_prompt, steps, sampler, schedule, cfg_scale, seed, batch_size, clip_skip, tiling
        )
        noise = torch.randn((batch_size, 4, height // 8, width // 8), generator=g)
        with self._seamless(axes):
            extra = self._blank_inpaint_input(batch_size, height, width)
            latents = self._denoise(
                choice=choice,
                steps=steps,
                strength=1.0,
                noise=noise,
                init=None,
                cond=cond,
                uncond=uncond,
                cfg_scale=cfg_scale,
                generator=g,
                callback=callback,
                extra=extra,
            )
            imgs = self.decode_latents(latents, seamless=axes)
        settings = self._settings(choice, steps, cfg_scale, seed, width, height, **_optional(clip_skip, axes))
        return self._finish(imgs, prompt, negative_prompt, settings)

    def img2img(
        self,
        image: Any,
        prompt: str,
        *,
        strength: float = 0.75,
        negative_prompt: str = "",
        width: int | None = None,
        height: int | None = None,
        steps: int = 20,
        sampler: str = "euler",
        schedule: str | None = None,
        cfg_scale: float | None = None,
        seed: int | None = None,
        batch_size: int = 1,
        clip_skip: int = 1,
        tiling: str | bool | None = None,
        callback: Callback | None = None,
    ) -> list[Image.Image]:
        """Restyle an image (PIL or numpy; RGBA alpha is ignored). The image is resized to `width`x`height` if
        given, else to its own size rounded to a multiple of 8. Strength as diffusers: 0 keeps the image, 1 ignores
        it; `int(steps * strength)` steps run."""
        check_strength(strength)
        cfg_scale = self.cfg_scale_or_default(cfg_scale)
        arr = images.to_rgb_array(image)
        width, height = working_size(arr, width, height)
        arr = resize_rgb(arr, width, height)
        choice, seed, g, cond, uncond, axes = self._prepare(
            prompt, negative_prompt, steps, sampler, schedule, cfg_scale, seed, batch_size, clip_skip, tiling
        )
        with self._seamless(axes):
            init = self.encode_pixels(images.image_to_tensor(arr), g, batch_size)
            noise = torch.randn(init.shape, generator=g)
            extra = self._image_inpaint_input(init)
            latents = self._denoise(
                choice=choice,
                steps=steps,
                strength=strength,
                noise=noise,
                init=init,
                cond=cond,
                uncond=uncond,
                cfg_scale=cfg_scale,
                generator=g,
                callback=callback,
                extra=extra,
            )
            imgs = self.decode_latents(latents, seamless=axes)
        settings = self._settings(
            choice,
            steps,
            cfg_scale,
            seed,
            width,
            height,
            **{"Denoising strength": strength},
            **_optional(clip_skip, axes),
        )
        return self._finish(imgs, prompt, negative_prompt, settings)

    def inpaint(
        self,
        image: Any,
        mask: Any,
        prompt: str,
        *,
        strength: float = 1.0,
        mask_blur: float = 4,
        only_masked: bool = False,
        padding: int = 32,
        fill: str = "original",
        color_match: bool = False,
        negative_prompt: str = "",
        width: int | None = None,
        height: int | None = None,
        steps: int = 20,
        sampler: str = "euler",
        schedule: str | None = None,
        cfg_scale: float | None = None,
        seed: int | None = None,
        batch_size: int = 1,
        clip_skip: int = 1,
        tiling: str | bool | None = None,
        callback: Callback | None = None,
    ) -> list[Image.Image]:
        """Repaint where `mask` is white (soft grey values blend); everything outside the blurred mask keeps the
        input's exact pixels. See `sd_core.inpainting` for the steps and options."""
        from .inpainting import inpaint

        return inpaint(
            self,
            image,
            mask,
            prompt,
            strength=strength,
            mask_blur=mask_blur,
            only_masked=only_masked,
            padding=padding,
            fill=fill,
            color_match=color_match,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            steps=steps,
            sampler=sampler,
            schedule=schedule,
            cfg_scale=cfg_scale,
            seed=seed,
            batch_size=batch_size,
            clip_skip=clip_skip,
            tiling=tiling,
            callback=callback,
        )

    def outpaint(
        self,
        image: Any,
        prompt: str,
        *,
        left: int = 0,
        top: int = 0,
        right: int = 0,
        bottom: int = 0,
        prefill: str = "edge_noise",
        strength: float | None = None,
        **options: Any,
    ) -> list[Image.Image]:
        """Extend the canvas by the margins (rounded up so the size stays a multiple of 8) and fill the new area.

        The new area is prefilled (`images.extend_canvas`) and repainted with the seam; `strength` defaults to 1.0
        for inpainting models and 0.9 for ordinary ones, which then continue the prefill's colours.
        """
        if not any((left, top, right, bottom)):
            raise ValueError("outpaint needs at least one of left, top, right, bottom > 0")
        canvas, mask = images.extend_canvas(image, left, top, right, bottom, fill=prefill)
        if strength is None:
            strength = 1.0 if self.config.inpainting else 0.9
        return self.inpaint(canvas, mask, prompt, strength=strength, **options)

    # --- helpers ------------------------------------------------------------------------------------------------

    def _seamless(self, axes: str | None):
        return tiling.seamless([self.unet, self.vae], axes)

    def _blank_inpaint_input(self, batch: int, height: int, width: int) -> torch.Tensor | None:
        """An inpainting model generating from scratch: everything masked, masked image all zeros (diffusers too)."""
        if not self.config.inpainting:
            return None
        h, w = height // 8, width // 8
        masked = self.encode_pixels(torch.zeros(1, 3, height, width), None, batch)
        return torch.cat([torch.ones(batch, 1, h, w), masked], dim=1)

    def _image_inpaint_input(self, init: torch.Tensor) -> torch.Tensor | None:
        """img2img with an inpainting model: nothing masked, the whole image as the masked-image input."""
        if not self.config.inpainting:
            return None
        return torch.cat([torch.zeros(init.shape[0], 1, *init.shape[-2:]), init], dim=1)


def check_strength(strength: float) -> None:
    if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")


def seamless_axes(value: str | bool | None) -> str | None:
    """`tiling` argument -> "x", "y", "xy" or None (True means both axes)."""
    if value is None or value is False or value == "":
        return None
    if value is True:
        return "xy"
    if isinstance(value, str) and value.lower() in ("x", "y", "xy", "yx"):
        return "xy" if value.lower() == "yx" else value.lower()
    raise ValueError(f"tiling must be None, True, 'x', 'y' or 'xy', got {value!r}")


def working_size(arr: np.ndarray, width: int | None, height: int | None) -> tuple[int, int]:
    """The generation size: as given, or the image's own size rounded to the nearest multiple of 8."""
    h, w = arr.shape[:2]
    width = images.round_to_multiple(w) if width is None else width
    height = images.round_to_multiple(h) if height is None else height
    images.check_size(width, height)
    return width, height


def resize_rgb(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos resize (diffusers' choice for PIL inputs); the array itself when the size already matches."""
    if arr.shape[1] == width and arr.shape[0] == height:
        return arr
    return np.asarray(Image.fromarray(arr).resize((width, height), Image.LANCZOS))


def _optional(clip_skip: int, axes: str | None) -> dict[str, Any]:
    """Infotext keys written only when they differ from the default."""
    out: dict[str, Any] = {}
    if clip_skip != 1:
        out["Clip skip"] = clip_skip
    if axes:
        out["Tiling"] = axes
    return out
