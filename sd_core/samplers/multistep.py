"""Linear multistep samplers on the ODE derivative d = (x - x0) / sigma (the eps estimate): one model call per step,
higher order from the derivatives of earlier steps."""

from __future__ import annotations

import numpy as np
import torch

from ._core import Callback, Denoiser, Generators, denoise, prepare, report, to_d

# Adams-Bashforth weights, newest derivative first, for 1 to 4 known derivatives.
_ADAMS_BASHFORTH = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def lms_coefficients(sigmas: list[float], i: int, order: int) -> list[float]:
    """Weights of d_i, d_(i-1), ... for the step sigma_i -> sigma_(i+1): the integral over that step of each Lagrange
    basis polynomial through sigma_i, sigma_(i-1), ... (k-diffusion's LMS, in sigma itself, not log sigma).

    The basis polynomials have degree order - 1, so Gauss-Legendre with `order` nodes integrates them exactly.
    """
    nodes = [sigmas[i - j] for j in range(order)]
    a, b = sigmas[i], sigmas[i + 1]
    u, w = np.polynomial.legendre.leggauss(order)
    taus = 0.5 * (a + b) + 0.5 * (b - a) * u
    coeffs = []
    for j in range(order):
        basis = np.ones_like(taus)
        for k in range(order):
            if k != j:
                basis *= (taus - nodes[k]) / (nodes[j] - nodes[k])
        coeffs.append(float(0.5 * (b - a) * np.dot(w, basis)))
    return coeffs


def sample_lms(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: Generators = None,
    order: int = 4,
) -> torch.Tensor:
    """Linear multistep (k-diffusion/A1111 "LMS", diffusers' LMSDiscreteScheduler), order 4 once 4 derivatives are
    known (lower orders before)."""
    x, sig = prepare(x, sigmas)
    n = len(sig) - 1
    ds: list[torch.Tensor] = []
    for i in range(n):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, n, x, sigma, sigma_next, denoised)
        ds = [to_d(x, denoised, sigma), *ds][:order]
        coeffs = lms_coefficients(sig, i, len(ds))
        x = x + sum(c * d for c, d in zip(coeffs, ds, strict=True))
    return x


def sample_plms(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """PLMS (Liu et al. 2022, "pseudo linear multistep"), as CompVis and diffusers' PNDMScheduler with
    skip_prk_steps run it: the first step is a Heun step (two model calls), later steps use Adams-Bashforth on the
    eps estimates (up to 4th order). In sigma space the DDIM transfer is an Euler step with the combined eps."""
    x, sig = prepare(x, sigmas)
    n = len(sig) - 1
    ds: list[torch.Tensor] = []
    for i in range(n):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, n, x, sigma, sigma_next, denoised)
        d = to_d(x, denoised, sigma)
        ds = [d, *ds][:4]
        if i == 0 and n > 1:
            x_euler = x + d * (sigma_next - sigma)
            d = 0.5 * (d + to_d(x_euler, denoise(denoiser, x_euler, sigma_next), sigma_next))
        else:
            d = sum(c * e for c, e in zip(_ADAMS_BASHFORTH[len(ds) - 1], ds, strict=True))
        x = x + d * (sigma_next - sigma)
    return x
