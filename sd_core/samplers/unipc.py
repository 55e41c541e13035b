"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) plus a corrector (UniC) that reuses the next step's model
call, so the corrector costs no extra evaluation. Data-prediction form (x0 estimates), written in k-diffusion space
with lambda = -log(sigma); the same update as diffusers' UniPCMultistepScheduler (predict_x0, lower_order_final)."""

from __future__ import annotations

import math

import torch

from ._core import Callback, Denoiser, Generators, denoise, prepare, report, toward


def _lam(sigma: float) -> float:
    return -math.log(sigma)


def _system(h: float, rks: list[float], variant: str) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """(h*phi_1, B(h), R, b) of UniPC's order conditions for a step of size h (in lambda) with the earlier
    estimates at relative positions `rks` (the last one is 1)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = math.expm1(hh)
    else:
        raise ValueError(f"variant must be 'bh1' or 'bh2', not {variant!r}")
    h_phi_k, factorial = h_phi_1 / hh - 1, 1
    rows, b = [], []
    for k in range(1, len(rks) + 1):
        rows.append([r ** (k - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)


def _differences(history: list[torch.Tensor], lams: list[float], h: float) -> tuple[list[float], list[torch.Tensor]]:
    """Relative positions and divided differences of the older estimates against the newest (history/lams newest
    last)."""
    m0, lam0 = history[-1], lams[-1]
    rks, d1s = [], []
    for m, lam in zip(history[-2::-1], lams[-2::-1], strict=True):
        rk = (lam - lam0) / h
        rks.append(rk)
        d1s.append((m - m0) / rk)
    return rks + [1.0], d1s


def _predict(
    x: torch.Tensor, history: list[torch.Tensor], lams: list[float], sigma: float, sigma_next: float, variant: str
) -> torch.Tensor:
    """UniP of order len(history) from sigma to sigma_next (> 0 unless the order is 1)."""
    m0 = history[-1]
    if len(history) == 1:
        return toward(x, m0, sigma_next / sigma)
    h = _lam(sigma_next) - lams[-1]
    rks, d1s = _differences(history, lams, h)
    h_phi_1, b_h, rows, b = _system(h, rks, variant)
    rhos = [0.5] if len(history) == 2 else torch.linalg.solve(rows[:-1, :-1], b[:-1]).tolist()
    x_next = (sigma_next / sigma) * x - h_phi_1 * m0
    return x_next - b_h * sum(rho * d for rho, d in zip(rhos, d1s, strict=True))


def _correct(
    x_prev: torch.Tensor,
    history: list[torch.Tensor],
    lams: list[float],
    sigma_prev: float,
    sigma: float,
    model_t: torch.Tensor,
    variant: str,
) -> torch.Tensor:
    """UniC of order len(history): redo the step sigma_prev -> sigma with the model's estimate at the new point."""
    m0 = history[-1]
    h = _lam(sigma) - lams[-1]
    rks, d1s = _differences(history, lams, h)
    h_phi_1, b_h, rows, b = _system(h, rks, variant)
    rhos = [0.5] if len(history) == 1 else torch.linalg.solve(rows, b).tolist()
    x = (sigma / sigma_prev) * x_prev - h_phi_1 * m0
    correction = sum(rho * d for rho, d in zip(rhos[:-1], d1s, strict=True)) + rhos[-1] * (model_t - m0)
    return x - b_h * correction


def sample_uni_pc(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: Generators = None,
    order: int = 2,
    variant: str = "bh2",
) -> torch.Tensor:
    """UniPC-p with p = `order` (2 suits guided sampling, 3 unguided), variant "bh2" (diffusers' default) or "bh1".

    The order warms up over the first steps and drops again over the last ones; the step to sigma = 0 returns the
    x0 estimate, and the final sample is not corrected (that would need one more model call).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, not {order!r}")
    x, sig = prepare(x, sigmas)
    n = len(sig) - 1
    history: list[torch.Tensor] = []
    lams: list[float] = []
    x_prev, used = None, 0
    for i in range(n):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = denoise(denoiser, x, sigma)
        if x_prev is not None:
            x = _correct(x_prev, history[-used:], lams[-used:], sig[i - 1], sigma, denoised, variant)
        report(callback, i, n, x, sigma, sigma_next, denoised)
        history = [*history, denoised][-order:]
        lams = [*lams, _lam(sigma)][-order:]
        used = min(order, i + 1, n - i)
        x_prev = x
        x = _predict(x, history[-used:], lams[-used:], sigma, sigma_next, variant)
    return x
