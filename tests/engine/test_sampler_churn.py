"""k-diffusion's churn (s_churn, s_tmin, s_tmax, s_noise) in Euler, Heun and DPM2.

Churn is k-diffusion's (so A1111's): the step's model call is made at the raised level sigma_hat, on the raised
latents. diffusers' EulerDiscreteScheduler has the same options with the same noise draws and step arithmetic, but
calls the model before raising; the oracle below hands its `step` the model output at the raised point (found with
copies of the generators, which then draw the very same noise inside `step`), so everything else is diffusers'.
"""

from __future__ import annotations

import math

import pytest
import torch

from sd_core import samplers

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

from test_samplers_parity import (  # noqa: E402
    NS,
    SD15,
    TOL,
    FakeUNet,
    TinyGuidedUNet,
    generators,
    initial_noise,
    make_denoiser,
    rel_diff,
)

MODELS = {"analytic": FakeUNet, "tiny_unet": TinyGuidedUNet}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return MODELS[request.param]()


def diffusers_churned_euler(model, sigmas, seed, churn, tmin=0.0, tmax=math.inf, s_noise=1.0, burn=False):
    """diffusers' Euler loop with churn, the model called at k-diffusion's point (sigma_hat, raised latents);
    `burn`: each step outside the window draws (and drops) one noise per image first, as k-diffusion does."""
    sched = diffusers.EulerDiscreteScheduler(**SD15)
    sched.set_timesteps(sigmas=sigmas.tolist())
    x = initial_noise(batch=2) * sched.init_noise_sigma
    gens = generators(seed)
    n = len(sched.sigmas) - 1
    for i, t in enumerate(sched.timesteps):
        sigma = float(sched.sigmas[i])
        gamma = min(churn / n, 2**0.5 - 1) if tmin <= sigma <= tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        x_hat = x
        if burn and gamma == 0:
            for g in gens:
                torch.randn((1, *x.shape[1:]), generator=g)
        if gamma > 0:
            peek = [torch.Generator().set_state(g.get_state()) for g in gens]
            noise = torch.cat([torch.randn((1, *x.shape[1:]), generator=g) for g in peek])
            x_hat = x + noise * s_noise * math.sqrt(sigma_hat**2 - sigma**2)
        out = model(x_hat / math.sqrt(sigma_hat**2 + 1), NS.sigma_to_t(torch.tensor([sigma_hat])))
        kw = dict(s_churn=churn, s_tmin=tmin, s_tmax=tmax, s_noise=s_noise, generator=gens)
        x = sched.step(out, t, x, **kw).prev_sample
    return x


def ours(model, fn, sigmas, seed, **options):
    x = initial_noise(batch=2) * float(sigmas[0])
    return fn(make_denoiser(model), x, sigmas, generator=generators(seed), **options)


@pytest.mark.parametrize(
    "options",
    [
        dict(churn=1.0),
        dict(churn=40.0, s_noise=1.003),  # gamma capped at sqrt(2) - 1
        dict(churn=5.0, tmin=1.0),  # the window ends early: the unused last draws change nothing
    ],
)
def test_euler_churn_matches_euler_discrete(model, options):
    sigmas = samplers.resolve("euler").sigmas(10, NS)
    ref = diffusers_churned_euler(model, sigmas, 5, **options)
    names = {"churn": "s_churn", "tmin": "s_tmin", "tmax": "s_tmax", "s_noise": "s_noise"}
    got = ours(model, samplers.sample_euler, sigmas, 5, **{names[k]: v for k, v in options.items()})
    assert rel_diff(got, ref) < TOL
    plain = ours(model, samplers.sample_euler, sigmas, 5)
    assert rel_diff(plain, ref) > 100 * TOL  # the churn is there


def test_euler_churn_draws_every_step_as_k_diffusion(model):
    """A window that starts below sigma_max: k-diffusion (A1111) draws the noise of the steps above it too and leaves
    it unused, diffusers draws only inside the window. With those draws made and dropped, diffusers agrees."""
    sigmas = samplers.resolve("euler").sigmas(10, NS)
    assert float(sigmas[0]) > 5.0 > float(sigmas[3])
    got = ours(model, samplers.sample_euler, sigmas, 5, s_churn=3.0, s_tmax=5.0)
    assert rel_diff(got, diffusers_churned_euler(model, sigmas, 5, 3.0, tmax=5.0)) > 100 * TOL
    assert rel_diff(got, diffusers_churned_euler(model, sigmas, 5, 3.0, tmax=5.0, burn=True)) < TOL


def karras_algorithm_2(denoiser, x, sigmas, gens, churn, second_order):
    """Karras et al. 2022, Algorithm 2, written out: Heun (`second_order="heun"`) or DPM2 ("dpm2") steps from the
    raised level, one draw per step."""
    sig = [float(s) for s in sigmas]
    n = len(sig) - 1
    for i in range(n):
        eps = torch.cat([torch.randn((1, *x.shape[1:]), generator=g) for g in gens])
        gamma = min(churn / n, 2**0.5 - 1)
        s_hat = sig[i] * (1 + gamma)
        x = x + eps * math.sqrt(s_hat**2 - sig[i] ** 2)
        d = (x - denoiser(x, torch.full((x.shape[0],), s_hat))) / s_hat
        if sig[i + 1] == 0:
            x = x + d * (sig[i + 1] - s_hat)
        elif second_order == "heun":
            x2 = x + d * (sig[i + 1] - s_hat)
            d2 = (x2 - denoiser(x2, torch.full((x.shape[0],), sig[i + 1]))) / sig[i + 1]
            x = x + (d + d2) / 2 * (sig[i + 1] - s_hat)
        else:
            mid = math.exp((math.log(s_hat) + math.log(sig[i + 1])) / 2)
            x2 = x + d * (mid - s_hat)
            d2 = (x2 - denoiser(x2, torch.full((x.shape[0],), mid))) / mid
            x = x + d2 * (sig[i + 1] - s_hat)
    return x


@pytest.mark.parametrize("name", ["heun", "dpm_2"])
def test_heun_and_dpm2_churn_follow_algorithm_2(model, name):
    sigmas = samplers.resolve(name).sigmas(6, NS)
    x = initial_noise(batch=2) * float(sigmas[0])
    ref = karras_algorithm_2(make_denoiser(model), x, sigmas, generators(9), 2.0, "heun" if name == "heun" else "dpm2")
    fn = samplers.resolve(name).fn
    assert rel_diff(ours(model, fn, sigmas, 9, s_churn=2.0), ref) < TOL
    empty_window = ours(model, fn, sigmas, 9, s_churn=2.0, s_tmin=100.0)
    assert torch.equal(empty_window, ours(model, fn, sigmas, 9))  # draws, but no churn: the plain sampler
