"""Single-step samplers: each step uses only the current x (no history), so all of them run on `_core.walk`.

Heun takes its own step; the others go through `_walk`, which splits the step into a deterministic part down to
sigma_down and fresh noise of size sigma_up (`ancestral_split`), and moves with a `Move`. The moves differ in how many
model calls a step spends: Euler (1), DPM2 (2, derivative at the log-midpoint), DPM++ 2S (2, exponential integrator at
the log-midpoint). Without noise (sigma_up = 0) the ancestral samplers are their ODE counterparts, and:

- DDIM (eta) is Euler-ancestral on DDIM's discrete sigmas: in k-diffusion space DDIM's sigma_t of the noise term is
  exactly the ancestral sigma_up with the same eta.
- DDPM (the ancestral sampler of Ho et al.: posterior mean and variance) is DDIM with eta = 1.
- LCM estimates x0 and re-noises it to the next level with fresh noise (sigma_down = 0, sigma_up = sigma_next).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._core import (
    Callback,
    Denoiser,
    NoiseSampler,
    ancestral_split,
    denoise,
    gaussian_noise,
    to_d,
    toward,
    walk,
)

# (denoiser, x, denoised, sigma, sigma_to) -> x at sigma_to (> 0)
Move = Callable[[Denoiser, torch.Tensor, torch.Tensor, float, float], torch.Tensor]
Split = Callable[[float, float], tuple[float, float]]


def _euler_move(denoiser: Denoiser, x: torch.Tensor, denoised: torch.Tensor, sigma: float, to: float) -> torch.Tensor:
    return toward(x, denoised, to / sigma)


def _dpm2_move(denoiser: Denoiser, x: torch.Tensor, denoised: torch.Tensor, sigma: float, to: float) -> torch.Tensor:
    """DPM-Solver-2 in k-diffusion's form: the derivative taken at the log-midpoint is used for the whole step."""
    mid = math.exp(0.5 * (math.log(sigma) + math.log(to)))
    x_mid = x + to_d(x, denoised, sigma) * (mid - sigma)
    return x + to_d(x_mid, denoise(denoiser, x_mid, mid), mid) * (to - sigma)


def _dpmpp_2s_move(
    denoiser: Denoiser, x: torch.Tensor, denoised: torch.Tensor, sigma: float, to: float
) -> torch.Tensor:
    """DPM-Solver++(2S): x0 re-estimated at the log-midpoint, then an exponential-integrator step with it."""
    mid = math.exp(0.5 * (math.log(sigma) + math.log(to)))
    x_mid = toward(x, denoised, mid / sigma)
    return toward(x, denoise(denoiser, x_mid, mid), to / sigma)


def _heun_step(
    denoiser: Denoiser, x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float
) -> torch.Tensor:
    """Euler, then the mean of the derivatives at both ends; the step to sigma = 0 stays Euler (no model call at 0)."""
    d = to_d(x, denoised, sigma)
    x_euler = x + d * (sigma_next - sigma)
    if sigma_next == 0:
        return x_euler
    d_next = to_d(x_euler, denoise(denoiser, x_euler, sigma_next), sigma_next)
    return x + (d + d_next) * (0.5 * (sigma_next - sigma))


def _ode(sigma: float, sigma_next: float) -> tuple[float, float]:
    return sigma_next, 0.0


def _walk(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None,
    move: Move,
    split: Split = _ode,
    noise: NoiseSampler | None = None,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """`walk` with each step split in two: `move` to sigma_down, then sigma_up of fresh noise. A step to
    sigma_down = 0 returns the x0 estimate whatever the move."""

    def step(
        denoiser: Denoiser, x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float
    ) -> torch.Tensor:
        down, up = split(sigma, sigma_next)
        x = denoised if down == 0 else move(denoiser, x, denoised, sigma, down)
        if up > 0:
            x = x + noise(sigma, sigma_next) * (s_noise * up)
        return x

    return walk(denoiser, x, sigmas, callback, step)


def _ancestral(eta: float) -> Split:
    return lambda sigma, sigma_next: ancestral_split(sigma, sigma_next, eta)


def sample_euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without churn)."""
    return _walk(denoiser, x, sigmas, callback, _euler_move)


def sample_euler_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """The "Euler a" sampler: an Euler step to sigma_down, then fresh noise (one draw per step that has noise)."""
    noise = noise_sampler or gaussian_noise(x, generator)
    return _walk(denoiser, x, sigmas, callback, _euler_move, _ancestral(eta), noise, s_noise)


def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1); the step to sigma = 0 is a plain Euler step."""
    return walk(denoiser, x, sigmas, callback, _heun_step)


def sample_dpm_2(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DPM2 (k-diffusion): a midpoint method with the midpoint taken in log sigma; Euler for the step to 0."""
    return _walk(denoiser, x, sigmas, callback, _dpm2_move)


def sample_dpm_2_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """The "DPM2 a" sampler: a DPM2 step to sigma_down, then fresh noise."""
    noise = noise_sampler or gaussian_noise(x, generator)
    return _walk(denoiser, x, sigmas, callback, _dpm2_move, _ancestral(eta), noise, s_noise)


def sample_dpmpp_2s_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """The "DPM++ 2S a" sampler: a DPM-Solver++(2S) step to sigma_down, then fresh noise."""
    noise = noise_sampler or gaussian_noise(x, generator)
    return _walk(denoiser, x, sigmas, callback, _dpmpp_2s_move, _ancestral(eta), noise, s_noise)


def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2020). With eta = 0 it is Euler on DDIM's sigmas; with eta > 0 noise is drawn every step,
    the last one included (its target, alphas_cumprod[0], is not noise-free), as diffusers' DDIMScheduler does."""
    noise = noise_sampler or gaussian_noise(x, generator)
    return _walk(denoiser, x, sigmas, callback, _euler_move, _ancestral(eta), noise)


def sample_ddpm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DDPM's ancestral sampler (Ho et al. 2020): sample the posterior q(x_prev | x, x0) with its mean and its
    "fixed small" variance. In sigma space that is DDIM with eta = 1 (also for strided timesteps)."""
    return sample_ddim(
        denoiser, x, sigmas, callback=callback, generator=generator, eta=1.0, noise_sampler=noise_sampler
    )


def sample_lcm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Latent Consistency Model sampling: take the x0 estimate, re-noise it to the next level with fresh noise."""
    noise = noise_sampler or gaussian_noise(x, generator)
    return _walk(denoiser, x, sigmas, callback, _euler_move, lambda sigma, sigma_next: (0.0, sigma_next), noise)
