"""Pieces every sampler shares: calling the denoiser, reporting progress, drawing noise, the basic moves.

Samplers work in k-diffusion space (`x = x0 + sigma * eps`) on float32 tensors; sigmas are read once into Python
floats so that step coefficients cost nothing and match across devices.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..progress import Callback, StepInfo

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[float, float], torch.Tensor]
# (denoiser, x, denoised, sigma, sigma_next) -> x at sigma_next
Step = Callable[[Denoiser, torch.Tensor, torch.Tensor, float, float], torch.Tensor]
# one CPU generator for the whole batch, or one per image (image k of the batch draws from generator k)
Generators = torch.Generator | Sequence[torch.Generator] | None


def prepare(x: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """float32 latents and the sigmas as Python floats."""
    return x.to(torch.float32), [float(s) for s in torch.as_tensor(sigmas).reshape(-1).tolist()]


def _sigma_batch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)


def denoise(denoiser: Denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The denoiser's x0 estimate at one noise level, given as a [B] tensor on x's device."""
    return denoiser(x, _sigma_batch(x, sigma)).to(torch.float32)


def denoise_with_uncond(
    denoiser: Denoiser, x: torch.Tensor, sigma: float, cfg_factor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The guided x0 estimate with the guidance scale multiplied by `cfg_factor`, and the unconditional x0 estimate
    of the same model call: what CFG++ samplers need.

    A denoiser that runs classifier-free guidance offers this as an optional method, `denoiser.with_uncond(x,
    sigma, cfg_factor) -> (x0_guided, x0_uncond)` (`sd_core.denoiser.GuidedDenoiser` has it). A denoiser without it
    is taken as unguided: its one estimate is both (a CFG++ sampler then is its plain counterpart).
    """
    s = _sigma_batch(x, sigma)
    with_uncond = getattr(denoiser, "with_uncond", None)
    if with_uncond is None:
        x0 = denoiser(x, s).to(torch.float32)
        return x0, x0
    x0, x0_uncond = with_uncond(x, s, cfg_factor)
    return x0.to(torch.float32), x0_uncond.to(torch.float32)


def report(
    callback: Callback | None,
    i: int,
    total: int,
    x: torch.Tensor,
    sigma: float,
    sigma_next: float,
    denoised: torch.Tensor,
) -> None:
    """One progress call per step (`sd_core.progress.StepInfo`, step `i + 1`). A callback stops the run by raising;
    we let it through."""
    if callback is not None:
        callback(StepInfo(i + 1, total, x, denoised, sigma, sigma_next))


@dataclass(frozen=True)
class Churn:
    """Stochastic churn (Karras et al. 2022, Algorithm 2), as k-diffusion's Euler, Heun and DPM2 take it: before each
    step from sigma whose sigma lies in [tmin, tmax], x is taken up to sigma_hat = sigma * (1 + gamma) with fresh
    noise of size s_noise * sqrt(sigma_hat**2 - sigma**2), gamma = min(churn / n, sqrt(2) - 1) for a run of n steps;
    the step then starts from sigma_hat. With churn > 0 one normal draw is made per step, inside the window or not
    (k-diffusion's order, so A1111's); churn 0 draws nothing and changes nothing."""

    churn: float = 0.0
    tmin: float = 0.0
    tmax: float = math.inf
    noise: float = 1.0
    generator: Generators = None

    def apply(self, x: torch.Tensor, sigma: float, steps: int) -> tuple[torch.Tensor, float]:
        """(x, sigma) raised to sigma_hat for one step of a run of `steps` steps."""
        if self.churn <= 0:
            return x, sigma
        eps = randn_like(x, self.generator)
        gamma = min(self.churn / steps, math.sqrt(2.0) - 1.0) if self.tmin <= sigma <= self.tmax else 0.0
        if gamma <= 0:
            return x, sigma
        sigma_hat = sigma * (1.0 + gamma)
        return x + eps * (self.noise * math.sqrt(sigma_hat**2 - sigma**2)), sigma_hat


def walk(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None,
    step: Step,
    churn: Churn | None = None,
) -> torch.Tensor:
    """The loop of every sampler that keeps no history between steps: estimate x0 at each sigma, report it, and let
    `step` take x to the next sigma. With `churn`, each step first raises x to its sigma_hat (`Churn`) and starts
    from there (the report then names sigma_hat, the level of the latents it carries)."""
    x, sig = prepare(x, sigmas)
    n = len(sig) - 1
    for i in range(n):
        sigma, sigma_next = sig[i], sig[i + 1]
        if churn is not None:
            x, sigma = churn.apply(x, sigma, n)
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, n, x, sigma, sigma_next, denoised)
        x = step(denoiser, x, denoised, sigma, sigma_next)
    return x


def to_d(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE (equal to the eps estimate)."""
    return (x - denoised) / sigma


def toward(x: torch.Tensor, denoised: torch.Tensor, ratio: float) -> torch.Tensor:
    """The ODE solution from sigma to `ratio * sigma` with the x0 estimate held fixed: an Euler step, which is also
    DPM-Solver++'s first-order step and DDIM's eta=0 step."""
    return denoised + ratio * (x - denoised)


def ancestral_split(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step: go deterministically to sigma_down, then add sigma_up of fresh
    noise, so the total is sigma_next. eta=1 is DDPM's posterior variance, eta=0 the ODE."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def randn(shape: Sequence[int], generator: Generators) -> torch.Tensor:
    """Standard normal float32 noise of `shape` = [B, ...] drawn on the CPU. With a list of B generators, image k of
    the batch is drawn from generator k alone (diffusers' `randn_tensor` with a list of generators), so each image's
    draws are those of a batch of one with its own generator."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}: one generator per image")
    one = (1, *shape[1:])
    return torch.cat([torch.randn(one, generator=g, dtype=torch.float32) for g in generator])


def randn_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn on the CPU (reproducible on every device), moved to x's device;
    one generator per image when `generator` is a list (`randn`)."""
    return randn(x.shape, generator).to(x.device)


def gaussian_noise(x: torch.Tensor, generator: Generators) -> NoiseSampler:
    """Fresh independent noise for every call, in call order (what diffusers' ancestral schedulers draw)."""
    return lambda sigma, sigma_next: randn_like(x, generator)


class BrownianNoise:
    """A Brownian motion W(sigma), one per latent element, drawn lazily from a CPU generator as it is queried.

    `noise(sigma, sigma_next) = (W(hi) - W(lo)) / sqrt(hi - lo)` is standard normal; increments over disjoint
    intervals are independent and over overlapping ones correlated, which is what the SDE solvers' sub-steps assume.
    A point beyond the known ones is a fresh Gaussian increment, a point between two known ones comes from the
    Brownian bridge. For decreasing, non-overlapping queries the result is exactly the generator's normals in order.
    Same distribution as k-diffusion's torchsde Brownian tree, not the same numbers. With one generator per image,
    each image's path is the one a batch of one draws from its own generator.
    """

    def __init__(self, x: torch.Tensor, generator: Generators) -> None:
        self.like, self.generator = x, generator
        self.points: list[float] = []
        self.values: list[torch.Tensor] = []

    def _at(self, s: float) -> torch.Tensor:
        pts, vals = self.points, self.values
        i = bisect.bisect_left(pts, s)
        if i < len(pts) and pts[i] == s:
            return vals[i]
        if not pts:
            w = torch.zeros_like(self.like, dtype=torch.float32)
        else:
            z = randn_like(self.like, self.generator)
            if i == 0:
                w = vals[0] - math.sqrt(pts[0] - s) * z
            elif i == len(pts):
                w = vals[-1] + math.sqrt(s - pts[-1]) * z
            else:
                a, b = pts[i - 1], pts[i]
                frac = (s - a) / (b - a)
                w = vals[i - 1] + frac * (vals[i] - vals[i - 1]) + math.sqrt((s - a) * (b - s) / (b - a)) * z
        pts.insert(i, s)
        vals.insert(i, w)
        return w

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        hi, lo = max(sigma, sigma_next), min(sigma, sigma_next)
        if hi == lo:
            return torch.zeros_like(self.like, dtype=torch.float32)
        w_hi = self._at(hi)
        return (w_hi - self._at(lo)) / math.sqrt(hi - lo)
