"""DPM-Solver++ samplers (Lu et al. 2022) in k-diffusion's form: exponential integrators in lambda = -log(sigma) on
the x0 estimate. "2M"/"3M" reuse the previous steps' estimates (multistep), "SDE" adds noise inside the step. Also the
entry points of DPM fast and DPM adaptive (the original DPM-Solver, `dpm_solver`)."""

from __future__ import annotations

import math
from functools import partial

import torch

from . import dpm_solver
from ._core import (
    BrownianNoise,
    Callback,
    Denoiser,
    Generators,
    NoiseSampler,
    ancestral_split,
    denoise,
    gaussian_noise,
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
    generator: Generators = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): second order from one model call per step."""
    return _multistep(denoiser, x, sigmas, callback, eta=0.0, s_noise=1.0, solver_type="midpoint", noise=None)


def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: Generators = None,
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
    generator: Generators = None,
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
    generator: Generators = None,
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


def sample_dpmpp_3m_sde(
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
    """DPM-Solver++(3M) SDE (k-diffusion's `sample_dpmpp_3m_sde`): with h = log(sigma / sigma_next) and
    h_eta = (1 + eta) * h, x <- exp(-h_eta) * x + (1 - exp(-h_eta)) * D, corrected with the divided differences of the
    last three estimates (two: a second-order correction; the first step has none), then
    sigma_next * sqrt(1 - exp(-2 * eta * h)) * s_noise of Brownian noise. The step to sigma = 0 returns the estimate.
    eta = 0 is DPM-Solver++(3M), diffusers' third-order multistep.

    Kept as k-diffusion (so A1111) has it, which is also the dpm-solver multistep formula diffusers uses: its second
    difference d2 is h**2 D''/2 while its coefficient phi_3 is the one for h**2 D'', so a step is exact for x0
    estimates linear in log sigma but gives half the quadratic term (the tests measure it), and the scheme is of
    second order, not third."""
    noise = noise_sampler or BrownianNoise(x, generator)
    x, sig = prepare(x, sigmas)
    n = len(sig) - 1
    history: list[tuple[torch.Tensor, float]] = []  # (estimate, h of its step), newest first
    for i in range(n):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, n, x, sigma, sigma_next, denoised)
        if sigma_next == 0:
            return denoised
        h = math.log(sigma / sigma_next)
        h_eta = h * (1 + eta)
        phi_1 = -math.expm1(-h_eta)
        phi_2 = 1 - phi_1 / h_eta
        x = math.exp(-h_eta) * x + phi_1 * denoised
        if len(history) == 2:
            (d_1, h_1), (d_2, h_2) = history
            r0, r1 = h_1 / h, h_2 / h
            d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
        elif history:
            d_1, h_1 = history[0]
            x = x + phi_2 * (denoised - d_1) / (h_1 / h)
        if eta > 0:
            x = x + noise(sigma, sigma_next) * (sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise)
        history = [(denoised, h), *history][:2]
    return x


def sample_dpm_fast(
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
    """The "DPM fast" sampler (k-diffusion's `sample_dpm_fast`): DPM-Solver of order 3 on equal steps in log sigma
    from sigmas[0] to the last nonzero sigma, spending n = len(sigmas) - 1 model calls (`dpm_solver.fast_orders`),
    as A1111 runs it (n = steps; its txt2img range is the model's, which our default schedule spans). With eta > 0
    (A1111's default, 1) each step is ancestral, with fresh noise from `generator`. Then, if the schedule ends in 0,
    one model call more returns the x0 estimate (k-diffusion returns the sample, with sigma_min of noise left).

    Progress (`dpm_solver.Progress`): `total` is the schedule's n, each step reported once the solver passes it."""
    noise = noise_sampler or gaussian_noise(x, generator)
    solve = partial(dpm_solver.fast, nfe=len(sigmas) - 1, eta=eta, s_noise=s_noise, noise=noise)
    return dpm_solver.run(denoiser, x, sigmas, callback, solve)


def sample_dpm_adaptive(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: Generators = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pid: tuple[float, float, float] = (0.0, 1.0, 0.0),
    accept_safety: float = 0.81,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """The "DPM adaptive" sampler (k-diffusion's `sample_dpm_adaptive`, order 3): DPM-Solver-23 with step-size
    control from sigmas[0] to the last nonzero sigma, as many model calls as the tolerances need (three per try).
    The step count is ignored: only the schedule's first and last nonzero sigma matter, and they do not depend on it.
    eta as in `sample_dpm_fast`; the x0 estimate at the end as there.

    The error is measured over the whole batch, as in k-diffusion (so A1111): the images of a batch share their
    steps, and unlike the other samplers an image of a batch is not remade alone from its own noise.

    Progress (`dpm_solver.Progress`): `total` is still the schedule's step count, a progress scale in noise level:
    step i + 1 is reported when the solver first reaches sigmas[i], so a run reports steps 1..n in order whatever
    number of model calls it makes (several steps at once when one solver step passes several sigmas)."""
    noise = noise_sampler or gaussian_noise(x, generator)
    solve = partial(
        dpm_solver.adaptive, rtol=rtol, atol=atol, h_init=h_init, pid=pid, accept_safety=accept_safety, eta=eta,
        s_noise=s_noise, noise=noise,
    )  # fmt: skip
    return dpm_solver.run(denoiser, x, sigmas, callback, solve)
