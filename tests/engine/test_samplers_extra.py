"""The samplers added from A1111's list, proven by properties where no diffusers scheduler computes the same thing
(the ones that do are in test_samplers_parity.py): exactness of each step on problems it must solve exactly,
convergence order against exact solutions, the published step plans on small cases, and the optional denoiser call
CFG++ needs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sd_core import samplers
from sd_core.denoiser import GuidedDenoiser
from sd_core.samplers import dpm_solver
from sd_core.samplers._core import denoise_with_uncond
from sd_core.samplers.singlestep import restart_segments
from sd_core.schedules import NoiseSchedule, exponential, karras

NS = NoiseSchedule()


def zeros(x: torch.Tensor):
    return lambda sigma, sigma_next: torch.zeros_like(x)


# --- DPM++ 3M SDE ---------------------------------------------------------------------------------------------------


def polynomial_denoiser(coeffs: list[torch.Tensor]):
    """D = sum c_k * lambda**k with lambda = -log(sigma), whatever x: the exponential integrator's data term."""

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        lam = -float(sigma[0].log())
        return sum(c * lam**k for k, c in enumerate(coeffs)).expand_as(x).clone()

    return denoiser


def moments(sigma: float, sigma_next: float, eta: float, count: int) -> list[float]:
    """M_k = integral over u in [0, h] of (1 + eta) exp(-(1 + eta)(h - u)) u**k du (Gauss-Legendre: exact here)."""
    h = math.log(sigma / sigma_next)
    nodes, weights = np.polynomial.legendre.leggauss(20)
    u, w = 0.5 * h * (nodes + 1), 0.5 * h * weights
    kernel = w * (1 + eta) * np.exp(-(1 + eta) * (h - u))
    return [float(np.sum(kernel * u**k)) for k in range(count)]


def exact_step(x: torch.Tensor, coeffs, sigma: float, sigma_next: float, eta: float) -> torch.Tensor:
    """The mean of the SDE step for an x-independent D(lambda) = sum c_k lambda**k: x (sigma_next / sigma)
    exp(-eta h) + sum_k D^(k)(lambda_s) / k! * M_k, the data term of the exponential integrator, exactly."""
    lam = -math.log(sigma)
    taylor = [sum(math.comb(j, k) * lam ** (j - k) * c.double() for j, c in enumerate(coeffs) if j >= k)
              for k in range(len(coeffs))]  # fmt: skip
    data = sum(m * t for m, t in zip(moments(sigma, sigma_next, eta, len(coeffs)), taylor, strict=True))
    return x.double() * (sigma_next / sigma) * math.exp(-eta * math.log(sigma / sigma_next)) + data


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_dpmpp_3m_sde_steps_on_polynomial_trajectories(eta):
    """Noise off, each step is the SDE's mean step (k-diffusion's, with h_eta = (1 + eta) h). On x0 estimates
    polynomial in lambda, the local error of step k (the sampler's result minus the exact step from its own previous
    result) is at float32 rounding for degree < k with k = 1, 2 (orders 1, 2) and for the linear part at k = 3; the
    third-order step's D2 term gives exactly half of the quadratic term M_2 * c_2 (the dpm-solver multistep formula
    as k-diffusion, A1111 and diffusers have it: D2 is h^2 D''/2 there, its coefficient the one for h^2 D''), so
    the residue is -M_2 * c_2 / 2."""
    sigmas = [9.0, 4.0, 2.2, 1.1]
    g = torch.Generator().manual_seed(0)
    coeffs = [torch.randn(1, 64, generator=g) for _ in range(3)]
    x0 = torch.randn(1, 64, generator=g) * sigmas[0]

    def local_errors(degree: int) -> list[torch.Tensor]:
        fn = polynomial_denoiser(coeffs[: degree + 1])
        xs = [x0.double()]
        for k in range(1, 4):
            run = torch.tensor(sigmas[: k + 1])
            xs.append(samplers.sample_dpmpp_3m_sde(fn, x0, run, eta=eta, noise_sampler=zeros(x0)).double())
        return [xs[k] - exact_step(xs[k - 1], coeffs[: degree + 1], sigmas[k - 1], sigmas[k], eta) for k in (1, 2, 3)]

    tol = 2e-6 * x0.abs().max().item()
    constant, linear, quadratic = (local_errors(d) for d in range(3))
    assert constant[0].abs().max() < tol and linear[1].abs().max() < tol and linear[2].abs().max() < tol
    assert linear[0].abs().max() > 100 * tol and quadratic[1].abs().max() > 100 * tol  # the tests can fail
    m2 = moments(sigmas[2], sigmas[3], eta, 3)[2]
    assert torch.allclose(quadratic[2], -0.5 * m2 * coeffs[2].double(), atol=tol)


# --- DPM fast and DPM adaptive --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nfe", "orders"),
    [(1, [1]), (2, [2]), (3, [2, 1]), (4, [3, 1]), (5, [3, 2]), (6, [3, 2, 1]), (7, [3, 3, 1]), (10, [3, 3, 3, 1])],
)
def test_dpm_fast_plan(nfe, orders):
    assert dpm_solver.fast_orders(nfe) == orders


def test_dpm_fast_plan_spends_exactly_the_model_calls():
    for nfe in range(1, 200):
        plan = dpm_solver.fast_orders(nfe)
        assert sum(plan) == nfe and len(plan) == nfe // 3 + 1 and set(plan[:-2]) <= {3}


def gaussian(s: float):
    """Data N(0, s^2): D(x, sigma) = x s^2 / (s^2 + sigma^2); the ODE's exact solution is x * sqrt((s^2 + sigma^2) /
    (s^2 + sigma_0^2))."""
    return lambda x, sigma: x * s**2 / (s**2 + sigma.reshape(-1, 1) ** 2)


SIGMA_HI, SIGMA_LO, S = 14.6, 0.03, 0.5
X_START = torch.linspace(-3, 3, 101).reshape(1, -1) * math.hypot(S, SIGMA_HI)
EXACT = X_START.double() * math.sqrt((S**2 + SIGMA_LO**2) / (S**2 + SIGMA_HI**2))


def gaussian_error(fn, sigmas: torch.Tensor, **options) -> float:
    return (fn(gaussian(S), X_START.clone(), sigmas, **options).double() - EXACT).abs().max().item()


def test_dpm_fast_is_third_order():
    """nfe = 3k + 2 (third-order steps and a second-order last one); doubling the steps divides the error by about
    8 on the Gaussian, whose exact solution is known (the schedule ends at SIGMA_LO: no final estimate)."""
    errors = [
        gaussian_error(samplers.sample_dpm_fast, exponential(nfe + 1, SIGMA_LO, SIGMA_HI)[:-1], eta=0.0)
        for nfe in (5, 11, 23)
    ]
    assert errors[0] / errors[1] > 6 and errors[1] / errors[2] > 6


def test_dpm_fast_spends_its_steps_plus_the_final_estimate_and_walks_its_own_points():
    """n model calls on its own grid (the schedule's inner sigmas do not matter), then the estimate at sigma_min."""
    calls = []

    def denoiser(x, sigma):
        calls.append(float(sigma[0]))
        return gaussian(S)(x, sigma)

    normal = samplers.resolve("dpm_fast").sigmas(10, NS)
    out = samplers.sample_dpm_fast(denoiser, X_START.clone(), normal, eta=0.0)
    assert len(calls) == 11 and calls[-1] == float(normal[-2]) and calls[0] == float(normal[0])
    other = torch.cat([normal[:1], normal[1:-2] * 0.9, normal[-2:]])
    assert torch.equal(samplers.sample_dpm_fast(gaussian(S), X_START.clone(), other, eta=0.0), out)
    # the default schedule spans the model's range, as A1111's txt2img passes it
    assert float(normal[0]) == pytest.approx(NS.sigma_max) and float(normal[-2]) == pytest.approx(NS.sigma_min)


def test_step_size_controller_is_the_published_pid_rule():
    """Integral control (k-diffusion's default): factor = 1 + atan((1 / (err + 1e-8)) ** (1 / order) - 1), accept
    when the factor is at least 0.81, h multiplied by the factor either way."""
    controller = dpm_solver.StepSizeController(0.05, 0.0, 1.0, 0.0, 3, 0.81)
    h = 0.05
    for error in (0.2, 3.0, 0.9, 40.0, 0.01):
        factor = 1 + math.atan((1 / (error + 1e-8)) ** (1 / 3) - 1)
        assert controller.accept(error) == (factor >= 0.81)
        h *= factor
        assert controller.h == pytest.approx(h)
    pid = dpm_solver.StepSizeController(0.1, 0.2, 0.5, 0.1, 2, 0.81)
    assert pid.accept(0.5)  # accepted: the history of inverse errors becomes [2, 2, 2]
    assert not pid.accept(2.0)  # rejected: the history stays
    e = [1 / (4.0 + 1e-8), 1 / (0.5 + 1e-8), 1 / (0.5 + 1e-8)]
    b = [(0.2 + 0.5 + 0.1) / 2, -(0.2 + 2 * 0.1) / 2, 0.1 / 2]
    factor = 1 + math.atan(e[0] ** b[0] * e[1] ** b[1] * e[2] ** b[2] - 1)
    before = pid.h
    assert pid.accept(4.0) == (factor >= 0.81)
    assert pid.h == pytest.approx(before * factor)


def test_dpm_adaptive_ignores_the_step_count():
    """Only sigma_max and sigma_min matter: 4 and 30 steps of the default schedule give the same sample."""
    choice = samplers.resolve("dpm_adaptive")
    a = choice.fn(gaussian(S), X_START.clone(), choice.sigmas(4, NS), eta=0.0)
    b = choice.fn(gaussian(S), X_START.clone(), choice.sigmas(30, NS), eta=0.0)
    assert torch.equal(a, b)


def test_dpm_adaptive_error_follows_its_tolerance():
    """Against the exact solution: within the default tolerance's size, and tolerances 100 times tighter give an
    error at least 10 times smaller, for more model calls."""
    sigmas = torch.tensor([SIGMA_HI, SIGMA_LO])
    errors, calls = [], []
    for rtol, atol in [(0.05, 0.0078), (0.0005, 0.000078)]:
        count = [0]

        def denoiser(x, sigma, count=count):
            count[0] += 1
            return gaussian(S)(x, sigma)

        out = samplers.sample_dpm_adaptive(denoiser, X_START.clone(), sigmas, eta=0.0, rtol=rtol, atol=atol)
        errors.append((out.double() - EXACT).abs().max().item() / EXACT.abs().max().item())
        calls.append(count[0])
    assert errors[0] < 0.05 and errors[1] < errors[0] / 10 and calls[1] > calls[0]


def test_dpm_adaptive_noise_follows_the_generator():
    choice = samplers.resolve("dpm_adaptive")
    sigmas = choice.sigmas(8, NS)
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    a, b, c = (choice.fn(gaussian(1.0), x, sigmas, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and (a - c).abs().max().item() > 1e-3


def test_dpm_adaptive_step_control_spans_the_batch():
    """As in k-diffusion (and so A1111), one error norm over the whole batch sets the steps: an image's result
    depends on the images beside it, so a batch image is not remade alone from its seed with this sampler."""
    sigmas = samplers.resolve("dpm_adaptive").sigmas(8, NS)
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    x[1] *= 3
    batch = samplers.sample_dpm_adaptive(gaussian(1.0), x, sigmas, eta=0.0)
    alone = samplers.sample_dpm_adaptive(gaussian(1.0), x[:1], sigmas, eta=0.0)
    assert not torch.allclose(batch[:1], alone, atol=1e-6)


def test_dpm_adaptive_reports_the_schedule_steps_as_it_passes_them():
    infos = []
    sigmas = samplers.resolve("dpm_adaptive").sigmas(12, NS)
    out = samplers.sample_dpm_adaptive(gaussian(S), X_START.clone(), sigmas, eta=0.0, callback=infos.append)
    assert [i.step for i in infos] == list(range(1, 13)) and {i.total for i in infos} == {12}
    assert [i.sigma for i in infos] == sigmas[:-1].tolist()
    assert torch.equal(infos[-1].denoised, out)  # the last report is the final estimate, at sigma_min


# --- Restart --------------------------------------------------------------------------------------------------------


def test_restart_under_20_steps_is_heun():
    sigmas = karras(15, NS.sigma_min, NS.sigma_max)
    x = X_START.clone()
    assert torch.equal(samplers.sample_restart(gaussian(S), x, sigmas), samplers.sample_heun(gaussian(S), x, sigmas))


def expected_restart(steps: int) -> list[tuple[float, float]]:
    """The A1111 plan from its description, in float64: Karras(steps - r * times) main schedule, and after the step
    that ends nearest sigma 0.1 the segment from the main sigma nearest 2 back down to it over r Karras steps, times
    times."""
    r, times = (steps // 4, 2) if steps >= 36 else (9, 1)

    def karras64(n, lo, hi):
        ramp = np.linspace(0, 1, n)
        return [*((hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7), 0.0]

    full = samplers.resolve("restart").sigmas(steps, NS).tolist()
    main = karras64(steps - r * times, full[-2], full[0])
    low = int(np.argmin(np.abs(np.array(main) - 0.1)))
    high = int(np.argmin(np.abs(np.array(main) - 2.0)))
    again = karras64(r + 1, main[low], main[high])[:-1]
    plan = list(zip(main[:low], main[1 : low + 1], strict=True))
    plan += list(zip(again[:-1], again[1:], strict=True)) * times
    return plan + list(zip(main[low:-1], main[low + 1 :], strict=True))


@pytest.mark.parametrize(("steps", "times"), [(20, 1), (35, 1), (36, 2), (50, 2)])
def test_restart_plan_is_a1111s(steps, times):
    plan = restart_segments(samplers.resolve("restart").sigmas(steps, NS).tolist())
    assert len(plan) == steps  # the restarts are paid for by a shorter main schedule
    assert np.allclose(plan, expected_restart(steps), rtol=1e-5)
    jumps = [(a, b) for (_, a), (b, _) in zip(plan[:-1], plan[1:], strict=True) if b > a]
    assert len(jumps) == times
    assert all(lo == pytest.approx(0.1, rel=0.5) and hi == pytest.approx(2.0, rel=0.5) for lo, hi in jumps)


def test_restart_renoises_each_jump_and_reports_each_heun_step():
    sigmas = samplers.resolve("restart").sigmas(40, NS)
    noise_calls, infos = [], []

    def noise(a, b):
        noise_calls.append((a, b))
        return torch.ones_like(X_START)

    quiet = samplers.sample_restart(gaussian(S), X_START.clone(), sigmas, noise_sampler=zeros(X_START))
    loud = samplers.sample_restart(gaussian(S), X_START.clone(), sigmas, noise_sampler=noise, callback=infos.append)
    plan = restart_segments(sigmas.tolist())
    assert [(i.sigma, i.sigma_next) for i in infos] == plan and [i.step for i in infos] == list(range(1, 41))
    assert len(noise_calls) == 2 and all(b > a for a, b in noise_calls)
    assert not torch.equal(quiet, loud)


def test_restart_keeps_the_data_distribution():
    """Re-noised by exactly sqrt(sigma_hi^2 - sigma_lo^2), the restarts keep the marginals: Gaussian data comes out
    with its std at 40 steps (2 restarts)."""
    x = torch.randn(1, 20000, generator=torch.Generator().manual_seed(0)) * math.hypot(1.0, NS.sigma_max)
    sigmas = samplers.resolve("restart").sigmas(40, NS)
    out = samplers.sample_restart(gaussian(1.0), x, sigmas, generator=torch.Generator().manual_seed(1))
    assert out.std().item() == pytest.approx(1.0, abs=0.02)


# --- DDIM CFG++ and the denoiser's unconditional estimate -----------------------------------------------------------


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_cfg_pp_on_an_unguided_denoiser_is_ddim(eta):
    sigmas = samplers.resolve("ddim").sigmas(10, NS)
    x = torch.randn(1, 101, generator=torch.Generator().manual_seed(2))
    runs = [
        fn(gaussian(S), x, sigmas, eta=eta, generator=torch.Generator().manual_seed(3))
        for fn in (samplers.sample_ddim_cfg_pp, samplers.sample_ddim)
    ]
    assert torch.equal(*runs)


def test_plain_denoisers_give_their_estimate_as_both():
    x = torch.randn(2, 3)
    guided, uncond = denoise_with_uncond(lambda x, sigma: x * 0.5, x, 2.0, 0.08)
    assert torch.equal(guided, uncond) and torch.equal(guided, x * 0.5)


class TextUNet(torch.nn.Module):
    """A stand-in UNet whose output depends on x, t and the text context, and that records its batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))
        self.batches: list[int] = []

    def forward(self, x, t, context):
        """Like sd_core's UNet, x once for both halves of a CFG context (batch 2B)."""
        self.batches.append(context.shape[0])
        x, t = x.repeat(context.shape[0] // x.shape[0], 1, 1, 1), t.repeat(context.shape[0] // t.shape[0])
        return self.w * x + context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1) + (t / 1000).reshape(-1, 1, 1, 1)


def guided_denoiser(cfg: float, prediction: str = "eps") -> GuidedDenoiser:
    cond, uncond = torch.full((1, 4, 8), 1.0), torch.full((1, 4, 8), -2.0)
    return GuidedDenoiser(TextUNet(), NS, prediction, cond, uncond, cfg)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_with_uncond_is_one_call_for_the_guided_and_the_unconditional_estimate(prediction):
    x, sigma = torch.randn(2, 4, 3, 3), torch.tensor([3.0, 3.0])
    full = guided_denoiser(7.5, prediction)
    guided, uncond = full.with_uncond(x, sigma)
    assert full.unet.batches == [4]  # both halves of both images in one call
    assert torch.equal(guided, full(x, sigma))
    # the unconditional estimate is the one whose text context is the negative prompt
    only_uncond = GuidedDenoiser(TextUNet(), NS, prediction, torch.full((1, 4, 8), -2.0), torch.zeros(1, 4, 8), 1.0)
    assert torch.allclose(uncond, only_uncond(x, sigma), atol=1e-6)
    # the factor scales the guidance: A1111's DDIM CFG++ guides with 7.5 / 12.5
    scaled, uncond_again = full.with_uncond(x, sigma, 1 / 12.5)
    assert torch.equal(uncond_again, uncond)
    assert torch.allclose(scaled, uncond + (guided - uncond) / 12.5, atol=1e-5)


def test_with_uncond_runs_both_halves_at_scale_1():
    """CFG 1 skips the unconditional half for ordinary samplers; CFG++ still needs it (guidance 1 / 12.5)."""
    den = guided_denoiser(1.0)
    x, sigma = torch.randn(1, 4, 3, 3), torch.tensor([2.0])
    den(x, sigma)
    guided, uncond = den.with_uncond(x, sigma, 1 / 12.5)
    assert den.unet.batches == [1, 2]
    assert not torch.allclose(guided, uncond)
    assert torch.allclose(guided, uncond + (den(x, sigma) - uncond) / 12.5, atol=1e-5)
