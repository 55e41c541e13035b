"""DPM-Solver++ samplers (Lu et al. 2022) in k-diffusion's form: exponential integrators in lambda = -log(sigma) on
the x0 estimate. "2M" reuses the previous step's estimate (multistep), "SDE" adds noise inside the step."""

from __future__ import annotations

import math

import torch

from ._core import (
    BrownianNoise,
    Callback,
    Denoiser,
    NoiseSampler,
    ancestral_split,
    denoise,
    prepare,
    report,
    toward,
    walk,
)


def _multistep(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None,
    *,
    eta: float,
    s_noise: float,
    solver_type: str,
    noise: NoiseSampler | None,
) -> torch.Tensor:
    """DPM-Solver++(2M); with eta > 0 its SDE variant (the noise keeps the marginals of the forward process).

    The correction from the previous estimate uses the midpoint or the heun coefficient; the first step and the step
    to sigma = 0 are first order (the latter returns the x0 estimate), as in k-diffusion and diffusers.
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', not {solver_type!r}")
    x, sig = prepare(x, sigmas)
    n = len(sig) - 1
    old, h_last = None, 0.0
    for i in range(n):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, n, x, sigma, sigma_next, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            eta_h = eta * h
            phi = -math.expm1(-h - eta_h)
            x = (sigma_next / sigma * math.exp(-eta_h)) * x + phi * denoised
            if old is not None:
                r = h_last / h
                coef = (phi / (-h - eta_h) + 1) / r if solver_type == "heun" else 0.5 * phi / r
                x = x + coef * (denoised - old)
            if eta > 0:
                x = x + noise(sigma, sigma_next) * (sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
            h_last = h
        old = denoised
    return x


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): second order from one model call per step."""
    return _multistep(denoiser, x, sigmas, callback, eta=0.0, s_noise=1.0, solver_type="midpoint", noise=None)


def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE. Noise comes from a `BrownianNoise` on `generator`: for these non-overlapping steps that
    is one fresh normal per step, the draws diffusers' DPMSolverMultistepScheduler makes (A1111 uses a torchsde
    Brownian tree instead: same distribution, other numbers)."""
    noise = noise_sampler or BrownianNoise(x, generator)
    return _multistep(denoiser, x, sigmas, callback, eta=eta, s_noise=s_noise, solver_type=solver_type, noise=noise)


def sample_dpmpp_2m_sde_heun(
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
    """The "DPM++ 2M SDE Heun" sampler: `sample_dpmpp_2m_sde` with the heun correction coefficient."""
    return sample_dpmpp_2m_sde(
        denoiser, x, sigmas, callback=callback, generator=generator, eta=eta, s_noise=s_noise,
        solver_type="heun", noise_sampler=noise_sampler,
    )  # fmt: skip


def sample_dpmpp_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM-Solver++ SDE (k-diffusion's `sample_dpmpp_sde`): two model calls per step, an ancestral sub-step to
    sigma * (sigma_next / sigma) ** r, then an ancestral step to sigma_next with the estimates mixed (r = 1/2 uses the
    sub-step's estimate only). The sub-step noise and the step noise overlap, so they come from one Brownian path:
    `BrownianNoise` on `generator` by default. k-diffusion/A1111 draw from torchsde's Brownian tree, so images are
    not bit-identical to theirs; pass `noise_sampler` to use another source."""
    noise = noise_sampler or BrownianNoise(x, generator)
    fac = 1 / (2 * r)

    def step(
        denoiser: Denoiser, x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float
    ) -> torch.Tensor:
        if sigma_next == 0:
            return denoised
        sigma_mid = sigma * (sigma_next / sigma) ** r
        down, up = ancestral_split(sigma, sigma_mid, eta)
        x_mid = toward(x, denoised, down / sigma)
        if up > 0:
            x_mid = x_mid + noise(sigma, sigma_mid) * (s_noise * up)
        denoised_mid = denoise(denoiser, x_mid, sigma_mid)
        down, up = ancestral_split(sigma, sigma_next, eta)
        x = toward(x, (1 - fac) * denoised + fac * denoised_mid, down / sigma)
        if up > 0:
            x = x + noise(sigma, sigma_next) * (s_noise * up)
        return x

    return walk(denoiser, x, sigmas, callback, step)
