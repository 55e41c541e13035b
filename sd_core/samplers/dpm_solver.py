"""DPM-Solver (Lu et al. 2022) in the noise-prediction form that k-diffusion's "DPM fast" and "DPM adaptive" use.

Time is t = -log(sigma) and eps = (x - x0) / sigma; a step from s to t of order 1, 2 or 3 spends that many model calls,
the extra ones at s + r1 * h and s + r2 * h inside the step (h = t - s). Order 1 is DDIM. Both samplers walk their own
time points between sigmas[0] and the last nonzero sigma, not the schedule's: see `Progress` for how they report.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._core import Callback, Denoiser, NoiseSampler, ancestral_split, denoise, prepare, report

Eps = Callable[[torch.Tensor, float], torch.Tensor]  # (x, t) -> eps


def _sigma(t: float) -> float:
    return math.exp(-t)


def first_order(x: torch.Tensor, s: float, t: float, eps: torch.Tensor) -> torch.Tensor:
    """DPM-Solver-1 (the DDIM step) from time s to t with the noise estimate `eps` at s."""
    return x - (_sigma(t) * math.expm1(t - s)) * eps


def inner_eps(eps_at: Eps, x: torch.Tensor, s: float, t: float, eps: torch.Tensor, r1: float) -> torch.Tensor:
    """The noise estimate at s + r1 * h, reached by a first-order step."""
    return eps_at(first_order(x, s, s + r1 * (t - s), eps), s + r1 * (t - s))


def second_order(
    x: torch.Tensor, s: float, t: float, eps: torch.Tensor, eps_1: torch.Tensor, r1: float
) -> torch.Tensor:
    """DPM-Solver-2 with `eps_1` the estimate at s + r1 * h."""
    return first_order(x, s, t, eps) - (_sigma(t) / (2 * r1) * math.expm1(t - s)) * (eps_1 - eps)


def third_order(
    eps_at: Eps, x: torch.Tensor, s: float, t: float, eps: torch.Tensor, eps_1: torch.Tensor
) -> torch.Tensor:
    """DPM-Solver-3 (r1 = 1/3, r2 = 2/3) with `eps_1` the estimate at s + h / 3: one more model call at s + 2h/3,
    reached by a second-order step, then the step to t from eps and that estimate."""
    h = t - s
    s2, h2 = s + 2 * h / 3, 2 * h / 3
    x_2 = first_order(x, s, s2, eps) - (_sigma(s2) * 2 * (math.expm1(h2) / h2 - 1)) * (eps_1 - eps)
    eps_2 = eps_at(x_2, s2)
    return first_order(x, s, t, eps) - (_sigma(t) * 1.5 * (math.expm1(h) / h - 1)) * (eps_2 - eps)


def fast_orders(nfe: int) -> list[int]:
    """k-diffusion's plan for DPM fast: floor(nfe / 3) + 1 equal steps in t, third order but for the tail, whose
    orders make the model calls add up to `nfe` (..., 2, 1 when nfe is a multiple of 3, else a last step of nfe % 3)."""
    m = nfe // 3 + 1
    return [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]


class Progress:
    """Reports a solver that keeps its own time points on the schedule it was given: `total` is the schedule's
    step count, and step i + 1 is reported (once, in order, with that schedule step's sigma and sigma_next) as soon as
    the solver has evaluated the model at or below sigmas[i]. `latents` and `denoised` are the solver's sample and
    x0 estimate there, so they may sit at a lower noise level than the reported sigma."""

    def __init__(self, callback: Callback | None, sigmas: list[float]) -> None:
        self.callback, self.sigmas, self.done = callback, sigmas, 0

    def reached(self, x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> None:
        n = len(self.sigmas) - 1
        while self.done < n and sigma <= self.sigmas[self.done] * (1 + 1e-6):
            i = self.done
            report(self.callback, i, n, x, self.sigmas[i], self.sigmas[i + 1], denoised)
            self.done += 1


class Estimator:
    """`eps_at(x, t)`: the model's noise estimate at time t; `last` keeps (x, x0 estimate, sigma) of the latest call."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser
        self.last: tuple[torch.Tensor, torch.Tensor, float] | None = None

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        denoised = denoise(self.denoiser, x, _sigma(t))
        self.last = (x, denoised, _sigma(t))
        return (x - denoised) / _sigma(t)


def run(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None,
    solve: Callable[[Estimator, torch.Tensor, float, float, Progress], torch.Tensor],
) -> torch.Tensor:
    """Solve from sigmas[0] to the last nonzero sigma with `solve(eps_at, x, t_start, t_end, progress)`; when the
    schedule ends in 0, finish with the x0 estimate there (one model call more than k-diffusion, which returns the
    sample at that sigma, its noise left in). Otherwise the steps the solver ended within are reported with its last
    model call's sample and estimate."""
    x, sig = prepare(x, sigmas)
    if len(sig) < 2:
        return x
    progress = Progress(callback, sig)
    ends_in_zero = sig[-1] == 0
    sigma_end = sig[-2] if ends_in_zero else sig[-1]
    eps_at = Estimator(denoiser)
    if sigma_end < sig[0]:
        x = solve(eps_at, x, -math.log(sig[0]), -math.log(sigma_end), progress)
    if ends_in_zero or eps_at.last is None:
        denoised = denoise(denoiser, x, sigma_end)
        progress.reached(x, denoised, 0.0)
        return denoised if ends_in_zero else x
    progress.reached(*eps_at.last[:2], 0.0)
    return x


def _noise_split(s: float, t: float, t_end: float, eta: float) -> tuple[float, float]:
    """(time the deterministic part goes to, noise to add) of an ancestral step from s to t: k-diffusion's
    `get_ancestral_step`, its target kept at or before t_end."""
    if not eta:
        return t, 0.0
    down, _ = ancestral_split(_sigma(s), _sigma(t), eta)
    t_down = min(t_end, -math.log(down))
    return t_down, math.sqrt(max(_sigma(t) ** 2 - _sigma(t_down) ** 2, 0.0))


def fast(
    eps_at: Estimator, x: torch.Tensor, t_start: float, t_end: float, progress: Progress, *,
    nfe: int, eta: float, s_noise: float, noise: NoiseSampler,
) -> torch.Tensor:  # fmt: skip
    """DPM-Solver-fast: `fast_orders(nfe)` over equal steps in t; with eta > 0 each step goes to its ancestral
    sigma_down and fresh noise makes up the rest."""
    orders = fast_orders(nfe)
    ts = torch.linspace(t_start, t_end, len(orders) + 1, dtype=torch.float64).tolist()
    for order, s, t in zip(orders, ts[:-1], ts[1:], strict=True):
        t_to, up = _noise_split(s, t, t_end, eta)
        eps = eps_at(x, s)
        progress.reached(*eps_at.last)
        if order == 1:
            x = first_order(x, s, t_to, eps)
        elif order == 2:
            x = second_order(x, s, t_to, eps, inner_eps(eps_at, x, s, t_to, eps, 0.5), 0.5)
        else:
            x = third_order(eps_at, x, s, t_to, eps, inner_eps(eps_at, x, s, t_to, eps, 1 / 3))
        if up > 0:
            x = x + noise(_sigma(s), _sigma(t)) * (up * s_noise)
    return x


class StepSizeController:
    """k-diffusion's PID step-size controller for DPM adaptive: the step is multiplied by
    1 + atan(prod(1 / error_k ** b_k) - 1) after every try, and a try is accepted if that factor is at least
    `accept_safety`. The b_k come from the P, I and D coefficients and the order."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, accept_safety: float):
        self.h = h
        self.b = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order)
        self.accept_safety = accept_safety
        self.inverse_errors: list[float] = []

    def accept(self, error: float) -> bool:
        inverse = 1 / (error + 1e-8)
        if not self.inverse_errors:
            self.inverse_errors = [inverse] * 3
        self.inverse_errors[0] = inverse
        e0, e1, e2 = self.inverse_errors
        factor = 1 + math.atan(e0 ** self.b[0] * e1 ** self.b[1] * e2 ** self.b[2] - 1)
        accepted = factor >= self.accept_safety
        if accepted:
            self.inverse_errors = [e0, e0, e1]
        self.h *= factor
        return accepted


def adaptive(
    eps_at: Estimator, x: torch.Tensor, t_start: float, t_end: float, progress: Progress, *,
    rtol: float, atol: float, h_init: float, pid: tuple[float, float, float], accept_safety: float,
    eta: float, s_noise: float, noise: NoiseSampler,
) -> torch.Tensor:  # fmt: skip
    """DPM-Solver-23 with step-size control: each try makes a second-order (r1 = 1/3) and a third-order step that
    share their first two model calls; the error is the RMS of their difference over max(atol, rtol * max(|x_2|,
    |x_prev|)) (x_prev: the previous accepted second-order result), the third-order result is kept. A rejected try
    reuses the model's estimate at its start (k-diffusion calls the model again there: same result, one call more)."""
    controller = StepSizeController(h_init, *pid, 1.5 if eta else 3, accept_safety)
    s, x_prev, eps = t_start, x, None
    while s < t_end - 1e-5:
        t = min(t_end, s + controller.h)
        t_to, up = _noise_split(s, t, t_end, eta)
        if eps is None:
            eps = eps_at(x, s)
            progress.reached(*eps_at.last)
        eps_1 = inner_eps(eps_at, x, s, t_to, eps, 1 / 3)
        x_low = second_order(x, s, t_to, eps, eps_1, 1 / 3)
        x_high = third_order(eps_at, x, s, t_to, eps, eps_1)
        delta = (rtol * torch.maximum(x_low.abs(), x_prev.abs())).clamp(min=atol)
        error = torch.linalg.vector_norm((x_low - x_high) / delta).item() / math.sqrt(x.numel())
        if controller.accept(error):
            if up > 0:
                x_high = x_high + noise(_sigma(s), _sigma(t)) * (up * s_noise)
            x_prev, x, s, eps = x_low, x_high, t, None
    return x
