"""StableDiffusion: text conditioning, sampling and decoding around the three networks. Knows nothing of files."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from . import images, samplers
from .denoiser import GuidedDenoiser, InpaintBlend
from .model_config import ModelConfig
from .pnginfo import format_parameters
from .prompt import encode_with_weights, tokenize_prompt
from .schedules import NoiseSchedule
from .tokenizer import CLIPTokenizer

Callback = Callable[[dict[str, Any]], None]
MAX_BATCH = 64


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
    ) -> None:
        self.unet, self.vae, self.text_encoder = unet.eval(), vae.eval(), text_encoder.eval()
        self.config, self.device, self.dtype, self.name = config, device, dtype, name
        self.tokenizer = CLIPTokenizer()
        self.noise_schedule = NoiseSchedule()

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
    def decode_latents(self, latents: torch.Tensor) -> list[Image.Image]:
        """VP latents -> PIL images. A float16 VAE that overflows to NaN is upcast to float32 once and retried."""
        z = latents / self.config.latent_scale
        vae_dtype = next(self.vae.parameters()).dtype
        pixels = self.vae.decode(z.to(self.device, vae_dtype)).float()
        if vae_dtype == torch.float16 and not torch.isfinite(pixels).all():
            self.vae.to(torch.float32)
            pixels = self.vae.decode(z.to(self.device, torch.float32)).float()
        return images.tensor_to_images(pixels.cpu())

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """[-1,1] pixels [B,3,H,W] -> scaled VP latents; samples the posterior with `generator` (diffusers' order),
        or takes its mean when `generator` is None."""
        vae_dtype = next(self.vae.parameters()).dtype
        mean, logvar = self.vae.encode(pixels.to(self.device, vae_dtype))
        mean, logvar = mean.float().cpu(), logvar.float().cpu()
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
        denoiser = GuidedDenoiser(
            self.unet, self.noise_schedule, self.config.prediction, cond.to(self.device), uncond.to(self.device),
            cfg_scale, extra=None if extra is None else extra.to(self.device), blend=blend,
        )
        total = len(sigmas) - 1

        def on_step(info: dict[str, Any]) -> None:
            if callback is not None:
                callback({"step": info["i"] + 1, "total": total, "latents": info["x"], "denoised": info["denoised"],
                          "sigma": float(info["sigma"])})

        with torch.inference_mode():
            x = choice.fn(denoiser, x.to(self.device), sigmas.to(self.device), callback=on_step, generator=generator)
            if blend is not None:
                x = blend.apply(x, sigmas[-1].reshape(1).to(x.device).expand(x.shape[0]))
        return (x / math.sqrt(1.0 + float(sigmas[-1]) ** 2)).float().cpu()

    def _settings(self, choice: samplers.SamplerChoice, steps: int, cfg_scale: float, seed: int, width: int,
                  height: int, **more: Any) -> dict[str, Any]:
        return {"Steps": steps, "Sampler": choice.label, "Schedule type": choice.schedule, "CFG scale": cfg_scale,
                "Seed": seed, "Size": f"{width}x{height}", "Model": self.name, **more}

    def _finish(self, imgs: list[Image.Image], prompt: str, negative_prompt: str, settings: dict[str, Any]
                ) -> list[Image.Image]:
        """Attach the A1111 parameters text (and the seed) to each image's `info`."""
        for pos, img in enumerate(imgs):
            extra = {"Batch size": len(imgs), "Batch pos": pos} if len(imgs) > 1 else {}
            img.info["parameters"] = format_parameters(prompt, negative_prompt, {**settings, **extra})
            img.info["seed"] = settings["Seed"]
        return imgs

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
        cfg_scale: float = 7.5,
        seed: int | None = None,
        batch_size: int = 1,
        clip_skip: int = 1,
        callback: Callback | None = None,
    ) -> list[Image.Image]:
        """Images from text. `seed=None` (or -1) picks a random seed; each image's `info["seed"]` and
        `info["parameters"]` (A1111 text) record what made it. A callback cancels by raising `sd_core.Cancelled`."""
        images.check_size(width, height)
        check_generation_args(steps, cfg_scale, batch_size)
        choice = samplers.resolve(sampler, schedule)
        seed = random_seed() if seed is None or seed == -1 else int(seed)
        cond, uncond = self.encode_prompt(prompt, negative_prompt, clip_skip)
        sigmas = choice.sigmas(steps, self.noise_schedule)
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn((batch_size, 4, height // 8, width // 8), generator=generator)
        x = noise * choice.initial_noise_scale(sigmas)
        latents = self._sample(choice=choice, sigmas=sigmas, x=x, cond=cond, uncond=uncond, cfg_scale=cfg_scale,
                               generator=generator, callback=callback, extra=self._txt2img_extra(batch_size, height,
                                                                                                  width))
        settings = self._settings(choice, steps, cfg_scale, seed, width, height,
                                  **({"Clip skip": clip_skip} if clip_skip != 1 else {}))
        return self._finish(self.decode_latents(latents), prompt, negative_prompt, settings)

    def _txt2img_extra(self, batch: int, height: int, width: int) -> torch.Tensor | None:
        """An inpainting model generating from scratch: everything masked, masked image all zeros (diffusers too)."""
        if not self.config.inpainting:
            return None
        h, w = height // 8, width // 8
        masked = self.encode_pixels(torch.zeros(1, 3, height, width), None)
        return torch.cat([torch.ones(batch, 1, h, w), masked.expand(batch, -1, -1, -1)], dim=1)
