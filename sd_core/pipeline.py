"""StableDiffusion: a loaded model and the steps every generation is made of. Knows nothing of files.

`generate(settings, image, mask)` is the one entry point; `txt2img`, `img2img`, `inpaint` and `outpaint` build the
`GenerationSettings` from keyword arguments and call it. The steps (text conditioning, VAE encode/decode, denoising)
are public methods, composed per mode by `sd_core.modes`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from . import embeddings, images, limits, masks, modes, sdxl, tiled_denoising, tiling
from .accel import Accelerator
from .denoiser import GuidedDenoiser, Handoff, InpaintBlend
from .errors import Interrupted
from .extra_networks import ExtraNetworks, lora_networks
from .lora.tags import strip_tags
from .model_config import ModelConfig
from .progress import Callback, LastStep
from .prompt import encode_with_weights, tokenize_prompt_with_embeddings
from .samplers._core import Generators, randn
from .schedules import NoiseSchedule
from .settings import GenerationSettings, ModelDefaults
from .tokenizer import CLIPTokenizer


class StableDiffusion:
    """A loaded model: `generate` and the four modes. Build it with `sd_core.load(path)`.

    `defaults` are the model's own (CFG scale, native size), used wherever a setting is left out; `accel` holds the
    speed levers in force on this pipeline (`sd_core.accel`); `extra_networks` its LoRA folders and the LoRAs merged
    into its weights (`sd_core.extra_networks`)."""

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
        defaults: ModelDefaults | None = None,
        lora_dirs: tuple = (),
        embedding_dirs: tuple = (),
    ) -> None:
        self.unet, self.vae, self.text_encoder = unet.eval(), vae.eval(), text_encoder.eval()
        self.config, self.device, self.dtype, self.name = config, device, dtype, name
        self.defaults = defaults or ModelDefaults()
        self.tokenizer = CLIPTokenizer()
        self.noise_schedule = NoiseSchedule()
        self.accel = Accelerator(device)
        self.extra_networks = ExtraNetworks(
            config.family, lora_networks(config.family, unet, text_encoder), lora_dirs, embedding_dirs
        )

    @property
    def family(self) -> str:
        """The model family: "sd1", "sd2", "sd1-inpaint", "sd2-inpaint", "sdxl", "sdxl-refiner", "sdxl-inpaint"."""
        return self.config.family

    # --- the entry point and the four modes ---------------------------------------------------------------------

    def generate(
        self,
        settings: GenerationSettings,
        image: Any = None,
        mask: Any = None,
        *,
        callback: Callback | None = None,
    ) -> list[Image.Image]:
        """Images for `settings`: from text alone, restyling `image` (img2img), or repainting where `mask` is white
        (inpainting). Each image's `info["seed"]` and `info["parameters"]` (A1111 text) record what made it. A
        callback gets a `StepInfo` per step and cancels the run by raising `sd_core.Cancelled`, or stops sampling and
        keeps the images made from the current estimate by raising `sd_core.Interrupted` (they then carry
        `info["interrupted"] = True`)."""
        return modes.generate(self, settings, image, mask, callback)

    def txt2img(self, prompt: str, *, callback: Callback | None = None, **settings: Any) -> list[Image.Image]:
        """Images from text. Keyword arguments are `GenerationSettings` fields (negative_prompt, width, height, steps,
        sampler, schedule, cfg_scale, seed, batch_size, clip_skip, tiling; A1111's sampler options eta, s_churn,
        s_tmin, s_tmax, s_noise and variation seeds subseed, subseed_strength, seed_resize_from); left out, they
        take the model's or the engine's defaults."""
        return self.generate(GenerationSettings(prompt=prompt, **settings), callback=callback)

    def img2img(
        self, image: Any, prompt: str, *, strength: float = 0.75, callback: Callback | None = None, **settings: Any
    ) -> list[Image.Image]:
        """Restyle an image (PIL or numpy; RGBA alpha is ignored), resized to `width`x`height` if given, else to its
        own size rounded to a multiple of 8 (`resize_mode`: "resize" stretches, "crop" covers and crops, "fill" fits
        and fills, as A1111). Strength as diffusers: 0 keeps the image, 1 ignores it; `int(steps * strength)` steps
        run; `initial_noise_multiplier` scales the start noise (A1111's)."""
        return self.generate(GenerationSettings(prompt=prompt, strength=strength, **settings), image, callback=callback)

    def inpaint(
        self,
        image: Any,
        mask: Any,
        prompt: str,
        *,
        strength: float = 1.0,
        callback: Callback | None = None,
        **settings: Any,
    ) -> list[Image.Image]:
        """Repaint where `mask` is white (soft grey values blend); everything outside the blurred mask keeps the
        input's exact pixels. The `InpaintOptions` (mask_blur, only_masked, padding, fill, color_match) may be given
        as keyword arguments with the other settings; see `sd_core.inpainting` for the steps."""
        chosen = GenerationSettings.from_kwargs(prompt, strength=strength, **settings)
        return self.generate(chosen, image, mask, callback=callback)

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
        **settings: Any,
    ) -> list[Image.Image]:
        """Extend the canvas by the margins (rounded up so the size stays a multiple of 8) and fill the new area.

        The new area is prefilled (`masks.extend_canvas`) and repainted with the seam; `strength` defaults to 1.0
        for inpainting models and 0.9 for ordinary ones, which then continue the prefill's colours.
        """
        if not any((left, top, right, bottom)):
            raise ValueError("outpaint needs at least one of left, top, right, bottom > 0")
        canvas, mask = masks.extend_canvas(image, left, top, right, bottom, fill=prefill)
        if strength is None:
            strength = 1.0 if self.config.inpainting else 0.9
        return self.inpaint(canvas, mask, prompt, strength=strength, **settings)

    # --- the steps ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_prompt(
        self,
        prompt: str,
        negative_prompt: str = "",
        clip_skip: int = 1,
        empty_negative: str | None = None,
        *,
        tags: bool = True,
    ) -> tuple[torch.Tensor, ...]:
        """Text embeddings (cond, uncond) with A1111 emphasis; both padded to the same number of 77-token chunks.
        SDXL models add their pooled outputs: (cond, uncond, pooled, pooled_uncond) (`sd_core.sdxl`).

        `clip_skip` follows A1111: 1 = the model's usual layer, 2 = one layer earlier, ... `empty_negative`: for an
        empty `negative_prompt`, "zeros" gives all-zero uncond embeddings, "encode" the encoded empty text; None: the
        model's rule (`sdxl.empty_negative`: zeros for SDXL as A1111, encoded for SD1/SD2). The prompt's LoRA tags
        (`<lora:...>`) are taken out (generations apply them: `extra_networks`); the negative prompt's stay text, as
        in A1111 (`tags=False`: the prompt's too). Textual-inversion embeddings of the model's folders are used by
        name in both (`sd_core.embeddings`; SDXL: those with `clip_l`/`clip_g`).
        """
        limits.check_prompt("prompt", prompt)
        limits.check_prompt("negative_prompt", negative_prompt)
        limits.check_int("clip_skip", clip_skip, limits.MIN_CLIP_SKIP, limits.MAX_CLIP_SKIP)
        if empty_negative is not None:
            limits.check_choice("empty_negative", empty_negative, limits.EMPTY_NEGATIVE)
        prompt = strip_tags(prompt) if tags else prompt
        zeros = negative_prompt == "" and sdxl.empty_negative(empty_negative, self.config) == "zeros"
        if self.config.sdxl:  # zeros: the towers do not run for the empty text
            lookup = self.extra_networks.embeddings.lookup(self.config.text_widths, self.tokenizer)
            text: tuple[torch.Tensor, ...] = sdxl.encode_prompt(
                self, prompt, negative_prompt, clip_skip, zero_negative=zeros, lookup=lookup
            )
        else:
            text = self._encode_prompt(prompt, negative_prompt, clip_skip)
        if zeros:
            # the uncond halves: text [1] and (SDXL) pooled output [3]
            text = tuple(torch.zeros_like(t) if n % 2 else t for n, t in enumerate(text))
        return text

    def _encode_prompt(self, prompt: str, negative_prompt: str, clip_skip: int) -> tuple[torch.Tensor, torch.Tensor]:
        """SD1/SD2: one CLIP tower, textual-inversion vectors written into its token embeddings."""
        (tokens_c, weights_c, fixes_c), (tokens_u, weights_u, fixes_u) = self._tokenize(prompt, negative_prompt)
        skip = self.config.text_skip + clip_skip - 1
        token_embedding = self.text_encoder.text_model.embeddings.token_embedding

        def encoder(fixes: list) -> Callable[[torch.Tensor], torch.Tensor]:
            def encode(tokens: torch.Tensor) -> torch.Tensor:
                embeds = None
                if fixes:  # textual inversion: on the embedding's device (LowVRAM brings the encoder in after)
                    at = token_embedding.weight.device
                    embeds = embeddings.token_embeddings(token_embedding, tokens.to(at), fixes).to(self.device)
                return self.text_encoder(tokens.to(self.device), skip=skip, token_embeds=embeds).float()

            return encode

        return (
            encode_with_weights(encoder(fixes_c), tokens_c, weights_c),
            encode_with_weights(encoder(fixes_u), tokens_u, weights_u),
        )

    def _tokenize(self, prompt: str, negative_prompt: str) -> tuple[tuple, tuple]:
        """(ids, weights, embedding fixes) of the prompt and the negative prompt, padded to the same number of chunks
        (SDXL: the first tower's padding; the fixes are the same for both towers)."""
        pad = self.config.pad_token
        lookup = self.extra_networks.embeddings.lookup(self.config.text_widths, self.tokenizer)

        def tokenize(text: str, chunks: int) -> tuple:
            return tokenize_prompt_with_embeddings(
                text, self.tokenizer, pad_token=pad, min_chunks=chunks, embeddings=lookup or None
            )

        cond = tokenize(prompt, 1)
        uncond = tokenize(negative_prompt, len(cond[0]))
        if len(uncond[0]) > len(cond[0]):
            cond = tokenize(prompt, len(uncond[0]))
        return cond, uncond

    def prompt_embeddings(
        self, prompt: str, negative_prompt: str = "", *, tags: bool = True
    ) -> list[embeddings.Embedding]:
        """The textual-inversion embeddings the two prompts use (for A1111's `TI hashes`)."""
        (_, _, fixes_c), (_, _, fixes_u) = self._tokenize(strip_tags(prompt) if tags else prompt, negative_prompt)
        return embeddings.used(fixes_c + fixes_u)

    @torch.inference_mode()
    def decode_latents(
        self, latents: torch.Tensor, *, seamless: str | None = None, tile: bool | None = None
    ) -> list[Image.Image]:
        """VP latents -> PIL images, one image at a time (the decoder's activations for one image, not for the whole
        batch: measured at 512x512 batch 4 in float32 on the CPU, 1.9 GB lower peak RSS and no slower); tiled when
        large or out of memory (`sd_core.tiling`). A float16 VAE that overflows to NaN is upcast to float32 once and
        retried (the black-image failure of half precision)."""
        z = latents / self.config.latent_scale
        with self.accel.decoding(self.vae) as decode:
            for _attempt in range(2):
                vae_dtype = next(self.vae.parameters()).dtype
                pixels = torch.cat(
                    [
                        tiling.decode_with_fallback(
                            decode, one.to(self.device, vae_dtype), tile=tile, seamless=seamless
                        )
                        .float()
                        .cpu()
                        for one in z.split(1)
                    ]
                )
                if vae_dtype != torch.float16 or torch.isfinite(pixels).all():
                    break
                self.vae.to(torch.float32)
        return images.tensor_to_images(pixels)  # on the CPU already: each image moved as it was decoded

    @torch.inference_mode()
    def encode_pixels(
        self, pixels: torch.Tensor, generator: Generators, batch: int = 1, *, seamless: str | None = None
    ) -> torch.Tensor:
        """[-1,1] pixels [1,3,H,W] -> scaled VP latents [batch,4,h,w]. Samples the posterior with `generator` (one
        per image, or one for the batch; diffusers' order of draws), or takes its mean when `generator` is None or the
        image needs tiled encoding (`seamless`: the image wraps on those axes, so the tiles do, `sd_core.tiling`)."""
        vae_dtype = next(self.vae.parameters()).dtype
        x = pixels.to(self.device, vae_dtype)
        if tiling.should_tile(x.shape[-2], x.shape[-1], vae_dtype, self.device):
            mean = tiling.tiled_encode(lambda t: self.vae.encode(t)[0], x, seamless=seamless).float().cpu()
            return mean.expand(batch, -1, -1, -1) * self.config.latent_scale
        mean, logvar = self.vae.encode(x)
        mean, logvar = mean.float().cpu().expand(batch, -1, -1, -1), logvar.float().cpu()
        if generator is not None:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            mean = mean + std * randn(mean.shape, generator)
        return mean * self.config.latent_scale

    def denoise(
        self,
        settings: GenerationSettings,
        noise: torch.Tensor,
        text: tuple[torch.Tensor, torch.Tensor],
        generator: Generators,
        callback: Callback | None = None,
        *,
        init: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
        blend_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample latents for resolved `settings` with `text` = (cond, uncond) (SDXL: and their pooled outputs, made
        into the UNet's vectors for this size, `sdxl.vectors`); returns VP latents on the CPU.

        From pure noise (no `init`, or strength 1) or from `init` noised to the strength's level: the last steps of
        a sigma schedule run (`GenerationSettings.denoising_steps`: diffusers' rule, the last `int(steps * strength)`
        of `steps`, or with `fixed_steps` A1111's), starting from `init + noise * sigma_start` (with `fixed_steps`
        at strength 1 too, as A1111). `extra` are channels the UNet gets beside the latents (the 9-channel inpainting
        input); `blend_mask` (latent size, 1 = repaint) keeps `init` outside the mask at every step (blended latent
        diffusion for ordinary models). With `settings.tile` the UNet sees overlapping tiles of the latents at every
        step, their estimates blended (`sd_core.tiled_denoising`; seamless axes wrap around the whole canvas). A
        stochastic sampler draws its noise from `generator`: one per image (image k of the batch from generator k) or
        one for the whole batch.

        A callback that raises `sd_core.Interrupted` ends sampling at its step: the result is then that step's clean
        estimate (`StepInfo.denoised`, kept outside `blend_mask`'s area as at the end of a run), not an exception.
        """
        choice, steps = settings.choice, settings.steps
        strength = 1.0 if settings.strength is None else settings.strength
        schedule, run = settings.denoising_steps()
        if run < 1:
            raise ValueError(
                f"strength {strength} with {steps} steps leaves no step to run: "
                "raise strength or steps (strength * steps must be at least 1)"
            )
        sigmas = choice.sigmas(schedule, self.noise_schedule)[schedule - run :]
        if init is None or (strength >= 1.0 and not settings.fixed_steps):
            x = noise * choice.initial_noise_scale(sigmas)
        else:
            x = init + noise * sigmas[0]
        steps_seen, end = LastStep(callback), sigmas[-1:]
        blend = None if blend_mask is None else InpaintBlend(blend_mask, init, noise).to(self.device)
        with contextlib.ExitStack() as stack:
            sampling = stack.enter_context(self.accel.sampling(self.unet))
            denoiser = self.guided_denoiser(sampling.unet, settings, text, x.shape, extra=extra, blend=blend)
            refiner = settings.refiner
            if refiner is not None:  # A1111's refiner: its own text, vectors and speed levers
                text_r = refiner.encode_prompt(
                    settings.prompt, settings.negative_prompt, settings.clip_skip, settings.empty_negative
                )
                unet_r = stack.enter_context(refiner.accel.sampling(refiner.unet)).unet
                switch_at = 0.8 if settings.refiner_switch_at is None else settings.refiner_switch_at
                second = refiner.guided_denoiser(unet_r, settings, text_r, x.shape)
                denoiser = Handoff(denoiser, second, self.noise_schedule, switch_at)
            with torch.inference_mode():
                try:
                    x = choice.fn(
                        denoiser,
                        x.to(self.device),
                        sigmas.to(self.device),
                        callback=sampling.callback(steps_seen),
                        generator=generator,
                        **settings.sampler_options(),
                    )
                except Interrupted:
                    if steps_seen.info is None:
                        raise
                    # the latest clean estimate: where a last Euler step from this step to sigma 0 lands
                    x, end = steps_seen.info.denoised, torch.zeros_like(end)
                if denoiser.blend is not None:
                    x = denoiser.blend.apply(x, end.to(x.device).expand(x.shape[0]))
        return (x / math.sqrt(1.0 + float(end) ** 2)).float().cpu()

    def guided_denoiser(
        self,
        unet: torch.nn.Module,
        settings: GenerationSettings,
        text: tuple[torch.Tensor, ...],
        shape: tuple[int, ...],
        *,
        extra: torch.Tensor | None = None,
        blend: InpaintBlend | None = None,
    ) -> Any:
        """This model's guided denoiser over `unet` (its sampling context's) for latents of `shape`: the text
        (SDXL: with the vectors for this size), CFG, `extra` input channels, the inpainting blend, tiles."""
        cond, uncond, *pooled = text
        vectors = None
        if pooled:
            h, w = shape[-2] * 8, shape[-1] * 8
            vectors = tuple(v.to(self.device) for v in sdxl.vectors(self.config, settings, *pooled, h, w))
        denoiser: Any = GuidedDenoiser(
            unet,
            self.noise_schedule,
            self.config.prediction,
            cond.to(self.device),
            uncond.to(self.device),
            settings.cfg_scale,
            extra=None if extra is None else extra.to(self.device),
            blend=blend,
            vectors=vectors,
        )
        if settings.tile is not None:
            tile = settings.tile.resolve(self.defaults)
            denoiser = tiled_denoising.wrap(denoiser, tile, shape, settings.tiling, self.unet, self.device)
        return denoiser
