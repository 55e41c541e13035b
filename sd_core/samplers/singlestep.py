"""Single-step samplers: each step uses only the current x (no history), so all of them run on `_core.walk`.

Heun takes its own step; the others go through `_walk`, which splits the step into a deterministic part down to
sigma_down and fresh noise of size sigma_up (`ancestral_split`), and moves with a `Move`. The moves differ in how many
model calls a step spends: Euler (1), DPM2 (2, derivative at the log-midpoint), DPM++ 2S (2, exponential integrator at
the log-midpoint). Without noise (sigma_up = 0) the ancestral samplers are their ODE counterparts, and:

- DDIM (eta) is Euler-ancestral on DDIM's discrete sigmas: in k-diffusion space DDIM's sigma_t of the noise term is
  exactly the ancestral sigma_up with the same eta.
- DDPM (the ancestral sampler of Ho et al.: posterior mean and variance) is DDIM with eta = 1.
- LCM estimates x0 and re-noises it to the next level with fresh noise (sigma_down = 0, sigma_up = sigma_next).
- DDIM CFG++ is DDIM whose direction term uses the unconditional noise estimate.
- Restart (A1111's) is Heun with jumps back up to a higher noise level, re-noised.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..schedules import karras
from ._core import (
    Callback,
    Churn,
    Denoiser,
    Generators,
    NoiseSampler,
    ancestral_split,
    denoise,
    denoise_with_uncond,
    gaussian_noise,
    prepare,
    report,
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
    churn: Churn | None = None,
) -> torch.Tensor:
    """`walk` with each step split in two: `move` to sigma_down, then sigma_up of fresh noise. A step to
    sigma_down = 0 returns the x0 estimate whatever the move. `churn`: see `_core.Churn`."""

    def step(
        denoiser: Denoiser, x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float
    ) -> torch.Tensor:
        down, up = split(sigma, sigma_next)
        x = denoised if down == 0 else move(denoiser, x, denoised, sigma, down)
        if up > 0:
            x = x + noise(sigma, sigma_next) * (s_noise * up)
        return x

    return walk(denoiser, x, sigmas, callback, step, churn)


def _ancestral(eta: float) -> Split:
    return lambda sigma, sigma_next: ancestral_split(sigma, sigma_next, eta)


def sample_euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: Generators = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 with Euler steps): with
    `s_churn` > 0, each step whose sigma lies in [s_tmin, s_tmax] starts from a level raised with fresh noise
    (`_core.Churn`; `s_noise` scales that noise)."""
    churn = Churn(s_churn, s_tmin, s_tmax, s_noise, generator)
    return _walk(denoiser, x, sigmas, callback, _euler_move, churn=churn)


def sample_euler_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: Generators = None,
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
    generator: Generators = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 2); the step to sigma = 0 is a plain Euler step.
    Churn as in `sample_euler`."""
    return walk(denoiser, x, sigmas, callback, _heun_step, Churn(s_churn, s_tmin, s_tmax, s_noise, generator))


def sample_dpm_2(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: Generators = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM2 (k-diffusion): a midpoint method with the midpoint taken in log sigma; Euler for the step to 0. Churn as
    in `sample_euler` (the midpoint is then taken between sigma_hat and the next sigma)."""
    churn = Churn(s_churn, s_tmin, s_tmax, s_noise, generator)
    return _walk(denoiser, x, sigmas, callback, _dpm2_move, churn=churn)


def sample_dpm_2_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: Generators = None,
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
    generator: Generators = None,
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
    generator: Generators = None,
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
    generator: Generators = None,
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
    generator: Generators = None,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Latent Consistency Model sampling: take the x0 estimate, re-noise it to the next level with fresh noise."""
    noise = noise_sampler or gaussian_noise(x, generator)
    return _walk(denoiser, x, sigmas, callback, _euler_move, lambda sigma, sigma_next: (0.0, sigma_next), noise)


A1111_CFG_PP_FACTOR = 1 / 12.5
"""A1111's DDIM CFG++ multiplies the CFG scale by this: scales 0 to 12.5 become CFG++'s guidance 0 to 1."""


def sample_ddim_cfg_pp(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: Generators = None,
    eta: float = 0.0,
    cfg_factor: float = A1111_CFG_PP_FACTOR,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DDIM with CFG++ (Chung et al. 2024), as A1111's "DDIM CFG++": at each step the x0 estimate is the guided one
    with the guidance scale multiplied by `cfg_factor` (A1111: 1/12.5, so CFG 7 guides with 0.56), and the step keeps
    the *unconditional* noise estimate for the direction to the next level:
    `x_next = x0_guided + sigma_down * (x - x0_uncond) / sigma`, plus `sigma_up` of fresh noise when eta > 0 (as DDIM).

    The unconditional estimate comes from the denoiser's optional `with_uncond` call (`_core.denoise_with_uncond`);
    an unguided denoiser makes this plain DDIM. The progress payload's `denoised` is the guided estimate."""
    noise = noise_sampler or gaussian_noise(x, generator)
    x, sig = prepare(x, sigmas)
    n = len(sig) - 1
    for i in range(n):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised, uncond = denoise_with_uncond(denoiser, x, sigma, cfg_factor)
        report(callback, i, n, x, sigma, sigma_next, denoised)
        down, up = ancestral_split(sigma, sigma_next, eta)
        x = denoised + (down / sigma) * (x - uncond)
        if up > 0:
            x = x + noise(sigma, sigma_next) * up
    return x


def _nearest(sigmas: list[float], target: float) -> int:
    return min(range(len(sigmas)), key=lambda i: abs(sigmas[i] - target))


def restart_segments(sigmas: list[float]) -> list[tuple[float, float]]:
    """The (sigma, sigma_next) steps of A1111's Restart sampler for a schedule of n = len(sigmas) - 1 steps.

    Under 20 steps: the schedule's own steps. From 20 on the schedule is replaced: restart over r = 9 steps once
    (from 36 steps: r = n // 4, twice), main schedule Karras with n - r * times steps between sigmas[-2] and
    sigmas[0]. After the main step that ends at the sigma nearest 0.1, jump back up to the main sigma nearest 2 and
    come down again over r Karras steps (between those two sigmas), `times` times. The total stays n steps.
    """
    n = len(sigmas) - 1
    if n < 20:
        return list(zip(sigmas[:-1], sigmas[1:], strict=True))
    length, times = (n // 4, 2) if n >= 36 else (9, 1)
    main = karras(n - length * times, sigmas[-2], sigmas[0]).tolist()
    low, high = _nearest(main, 0.1), _nearest(main, 2.0)
    steps = []
    for i in range(len(main) - 1):
        steps.append((main[i], main[i + 1]))
        if i + 1 == low and high < low:
            again = karras(length + 1, main[low], main[high]).tolist()[:-1]
            steps += list(zip(again[:-1], again[1:], strict=True)) * times
    return steps


def sample_restart(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: Generators = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """A1111's "Restart" (Xu et al. 2023, "Restart Sampling for Improving Generative Processes"): Heun steps (Euler
    into 0) over `restart_segments`; where a step starts above where the last one ended, fresh noise of
    sqrt(sigma**2 - sigma_last**2) * s_noise first takes x up to it. Under 20 steps this is `sample_heun`. Progress
    is one report per Heun step (`total` = n), with that step's own sigmas."""
    noise = noise_sampler or gaussian_noise(x, generator)
    x, sig = prepare(x, sigmas)
    steps = restart_segments(sig)
    last = steps[0][0] if steps else 0.0
    for i, (sigma, sigma_next) in enumerate(steps):
        if sigma > last:
            x = x + noise(last, sigma) * (s_noise * math.sqrt(sigma**2 - last**2))
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, len(steps), x, sigma, sigma_next, denoised)
        x = _heun_step(denoiser, x, denoised, sigma, sigma_next)
        last = sigma_next
    return x
