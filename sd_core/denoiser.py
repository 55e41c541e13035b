"""The bridge between a UNet and the samplers: `denoiser(x, sigma) -> x0` in k-diffusion space.

The UNet sees `x * c_in` at the training timestep that matches sigma; its eps or v output becomes the clean-latent
estimate. Classifier-free guidance runs uncond and cond as one batched call. Blended inpainting (ordinary models) and
the 9-channel inpainting input live here too, so samplers stay ignorant of models.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .schedules import NoiseSchedule


@dataclass
class InpaintBlend:
    """Blended latent diffusion: outside the mask, the original latents noised to the current sigma replace the sample
    at every model call, and the original latents replace the estimate. `mask` is 1 where the model repaints
    (latent size, [1 or B, 1, h, w]); `noise` is the run's initial noise."""

    mask: torch.Tensor
    latents: torch.Tensor
    noise: torch.Tensor

    def to(self, device: torch.device) -> InpaintBlend:
        return InpaintBlend(self.mask.to(device), self.latents.to(device), self.noise.to(device))

    def apply(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, 1, 1, 1)
        return x * self.mask + (self.latents + self.noise * s) * (1 - self.mask)

    def restore(self, x0: torch.Tensor) -> torch.Tensor:
        return x0 * self.mask + self.latents * (1 - self.mask)


class GuidedDenoiser:
    """A UNet with classifier-free guidance as a k-diffusion denoiser.

    `cond` and `uncond` are text embeddings [1 or B, L, C]; `extra` are channels concatenated to the UNet input
    (the inpainting model's mask and masked-image latents, [B, 5, h, w]); `vectors` (SDXL) the UNet's vectors `y`
    (cond, uncond), [1 or B, adm], batched like the text.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        schedule: NoiseSchedule,
        prediction: str,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        cfg_scale: float,
        *,
        extra: torch.Tensor | None = None,
        blend: InpaintBlend | None = None,
        vectors: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', not {prediction!r}")
        self.unet, self.schedule, self.prediction = unet, schedule, prediction
        self.cond, self.uncond, self.cfg_scale = cond, uncond, float(cfg_scale)
        self.extra, self.blend = extra, blend
        self.guided = self.cfg_scale != 1.0
        self.dtype = next(unet.parameters()).dtype
        self.vectors = vectors
        self._contexts: dict[tuple[int, bool], torch.Tensor] = {}
        self._vectors: dict[tuple[int, bool], torch.Tensor] = {}

    def context(self, batch: int, pair: bool | None = None) -> torch.Tensor:
        """The UNet's text context for `batch` images, in the model dtype: `[uncond, cond]` batched for CFG (`pair`,
        by default when guided). Built once per run, not at every step."""
        pair = self.guided if pair is None else pair
        if (batch, pair) not in self._contexts:
            cond, uncond = (_rows(c, batch) for c in (self.cond, self.uncond))
            if pair:
                cond = torch.cat([uncond, cond])
            self._contexts[batch, pair] = cond.to(self.dtype)
        return self._contexts[batch, pair]

    def vector(self, batch: int, pair: bool | None = None) -> torch.Tensor | None:
        """The UNet's vector `y` for `batch` images, batched as `context` (None for models without one)."""
        if self.vectors is None:
            return None
        pair = self.guided if pair is None else pair
        if (batch, pair) not in self._vectors:
            cond, uncond = (_rows(v, batch) for v in self.vectors)
            self._vectors[batch, pair] = (torch.cat([uncond, cond]) if pair else cond).to(self.dtype)
        return self._vectors[batch, pair]

    def for_tiles(self, extra: torch.Tensor | None) -> GuidedDenoiser:
        """This denoiser for a stack of tiles of the canvas (`sd_core.tiled_denoising`): the same model, text and
        guidance; `extra` cropped to the tiles; no blend (the tiled denoiser applies it to the whole canvas)."""
        tiles = copy.copy(self)
        tiles.extra, tiles.blend = extra, None
        return tiles

    def _unet(self, x_in: torch.Tensor, t: torch.Tensor, batch: int, pair: bool) -> torch.Tensor:
        if self.extra is not None:
            x_in = torch.cat([x_in, self.extra.to(x_in)], dim=1)
        # x once, the context twice: the UNet runs its text-free first layers once for both halves
        y = self.vector(batch, pair)
        if y is None:
            return self.unet(x_in.to(self.dtype), t, self.context(batch, pair)).float()
        return self.unet(x_in.to(self.dtype), t, self.context(batch, pair), y).float()

    def model_output(self, x_in: torch.Tensor, t: torch.Tensor, batch: int) -> torch.Tensor:
        """The UNet's raw prediction with guidance applied (one call for both halves)."""
        out = self._unet(x_in, t, batch, self.guided)
        if not self.guided:
            return out
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + self.cfg_scale * (out_cond - out_uncond)

    def _prepare(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x with the inpainting blend applied, sigma as [B, 1, 1, 1], the timesteps); the UNet sees `x * c_in`."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        if self.blend is not None:
            x = self.blend.apply(x, sigma)
        return x, sigma.reshape(-1, 1, 1, 1), self.schedule.sigma_to_t(sigma.cpu()).to(x.device)

    def _x0(self, x: torch.Tensor, s: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.prediction == "eps":
            x0 = x - s * out
        else:
            x0 = x / (s**2 + 1) - out * s / (s**2 + 1).sqrt()
        return x0 if self.blend is None else self.blend.restore(x0)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x, s, t = self._prepare(x, sigma)
        c_in = 1 / (s**2 + 1).sqrt()
        return self._x0(x, s, self.model_output(x * c_in, t, x.shape[0]))

    def with_uncond(
        self, x: torch.Tensor, sigma: torch.Tensor, cfg_factor: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided x0, unconditional x0) from one UNet call, the guidance scale multiplied by `cfg_factor`: the
        optional call CFG++ samplers make (`sd_core.samplers._core.denoise_with_uncond`). Both halves run even at
        scale 1, where `__call__` skips the unconditional one."""
        x, s, t = self._prepare(x, sigma)
        c_in = 1 / (s**2 + 1).sqrt()
        out_uncond, out_cond = self._unet(x * c_in, t, x.shape[0], True).chunk(2)
        guided = out_uncond + (self.cfg_scale * cfg_factor) * (out_cond - out_uncond)
        return self._x0(x, s, guided), self._x0(x, s, out_uncond)


class Handoff:
    """A1111's refiner switch: `first` denoises while the sampled fraction of the noise schedule, `(999 - t) / 1000`
    with t the training timestep nearest to sigma, is below `switch_at`; `second` (the refiner) from then on, on the
    same latents, inside the same sampler run (a multistep sampler keeps its history). diffusers' `denoising_end` /
    `denoising_start` split the steps at the same timestep (base: t >= 1000 * (1 - switch_at))."""

    def __init__(self, first: GuidedDenoiser, second: GuidedDenoiser, schedule: NoiseSchedule, switch_at: float):
        self.first, self.second, self.schedule, self.switch_at = first, second, schedule, switch_at
        self.blend = first.blend

    def pick(self, sigma: torch.Tensor) -> GuidedDenoiser:
        level = torch.as_tensor(sigma, dtype=torch.float32).max().cpu()
        t = int(torch.argmin((self.schedule.sigmas - level).abs()))
        return self.second if (999 - t) / 1000 >= self.switch_at else self.first

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.pick(sigma)(x, sigma)

    def with_uncond(
        self, x: torch.Tensor, sigma: torch.Tensor, cfg_factor: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pick(sigma).with_uncond(x, sigma, cfg_factor)


def _rows(text: torch.Tensor, batch: int) -> torch.Tensor:
    """Text embeddings (or vectors) for `batch` rows: one row broadcast, or k rows (one per image) repeated for
    stacked tiles."""
    if text.shape[0] in (1, batch):
        return text.expand(batch, *text.shape[1:])
    return text.repeat(batch // text.shape[0], *[1] * (text.ndim - 1))
