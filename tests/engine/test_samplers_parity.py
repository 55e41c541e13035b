"""Samplers against diffusers' schedulers (the oracle), with SD1.5's noise schedule.

Every test runs twice: with a smooth analytic stand-in for the UNet, and with a small random-weight SD1 UNet under
classifier-free guidance (text embeddings from its text encoder), whose final latents are also decoded by its VAE
and compared in pixels (mean absolute difference under 1/255).

diffusers runs its usual loop (`scale_model_input`, the eps "UNet", `step`) on a [1, 4, 8, 8] latent; our sampler
gets the same model as a k-diffusion denoiser (`x / sqrt(sigma**2 + 1)` at t = sigma_to_t(sigma)), the same sigmas
and the same initial noise, and for the stochastic ones the same noise draws: those run a batch of two [2, 4, 8, 8]
with a list of generators, image k's seeded `seed + k` (diffusers draws each image's noise from its own generator,
as our samplers do with a list). The final latents must agree to float rounding: max |ours - diffusers| below 2e-5
of max |diffusers| (different samplers differ by far more, see `test_parity_check_is_discriminating`).
"""

from __future__ import annotations

import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 notices inside diffusers

from sd_core import samplers  # noqa: E402
from sd_core.schedules import NoiseSchedule  # noqa: E402

SD15 = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
# The DDIM-family settings of SD1.5's scheduler config.
SD15_VP = {**SD15, "steps_offset": 1, "set_alpha_to_one": False}
TOL = 2e-5
NS = NoiseSchedule()


class FakeUNet:
    """A smooth, nonlinear stand-in for the UNet: eps (or v) from the scaled latent and the timestep."""

    def __init__(self, seed: int = 1234) -> None:
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.randn(4, 4, generator=g) / 2
        self.bias = torch.randn(1, 4, 8, 8, generator=g) / 2

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1)
        h = torch.einsum("oc,bchw->bohw", self.mix, x.float())
        return torch.tanh(h + self.bias * torch.cos(t / 250)) + 0.2 * x * torch.sin(t / 400)


class TinyGuidedUNet:
    """The tiny random SD1 UNet with CFG 7.5 on fixed prompt embeddings, as a `model(x, t)`; `decode` gives pixels."""

    def __init__(self) -> None:
        from model_fixtures import tiny_pipeline

        pipe = tiny_pipeline(0)
        self.unet, self.vae = pipe.unet, pipe.vae
        with torch.no_grad():
            cond, uncond = pipe.encode_prompt("a red brick wall", "cpu", 1, True, "blurry")
        self.context = torch.cat([uncond, cond])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
        context = self.context.repeat_interleave(x.shape[0], dim=0)  # [uncond] * B + [cond] * B
        t = t.expand(x.shape[0])
        out = self.unet(torch.cat([x, x]).float(), torch.cat([t, t]), encoder_hidden_states=context).sample
        uncond, cond = out.chunk(2)
        return uncond + 7.5 * (cond - uncond)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        pixels = self.vae.decode(latents / 0.18215).sample
        return ((pixels / 2 + 0.5).clamp(0, 1) * 255).round()


MODELS = {"analytic": FakeUNet}


@pytest.fixture(autouse=True, params=["analytic", "tiny_unet"])
def model_kind(request):
    """Selects the model every run in a test uses (module state, reset after the test)."""
    if request.param == "tiny_unet" and "tiny_unet" not in MODELS:
        tiny = TinyGuidedUNet()
        MODELS["tiny_unet"] = lambda seed=None: tiny
    CURRENT["model"] = MODELS[request.param]()
    yield request.param
    CURRENT.clear()


CURRENT: dict = {}


def current_model():
    return CURRENT.get("model") or FakeUNet()


def check(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Latents agree to float rounding; with the real tiny model, decoded pixels differ by under 1/255 on average."""
    assert rel_diff(ours, ref) < TOL
    model = current_model()
    if hasattr(model, "decode"):
        assert (model.decode(ours) - model.decode(ref)).abs().mean() < 1.0


def make_denoiser(model, prediction: str = "eps", t_of=None):
    """The model in k-diffusion space, as sd_core's pipeline builds it (eps: x - sigma * eps; v: c_skip, c_out).
    `t_of(sigma)` replaces `sigma_to_t` to imitate schedulers that call the model at integer timesteps."""

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, 1, 1, 1)
        t = NS.sigma_to_t(sigma) if t_of is None else t_of(sigma)
        out = model(x / (s**2 + 1).sqrt(), t)
        if prediction == "eps":
            return x - s * out
        return x / (s**2 + 1) - out * s / (s**2 + 1).sqrt()

    return denoiser


BATCH = 2  # of the runs with a seed


def initial_noise(seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randn((batch, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


def generators(seed: int) -> list[torch.Generator]:
    """One generator per image of a batch, image k's seeded `seed + k`."""
    return [torch.Generator().manual_seed(seed + k) for k in range(BATCH)]


def run_diffusers(scheduler, steps=None, *, seed=None, set_kwargs=None, step_kwargs=None, model=None):
    """diffusers' denoising loop; with `seed`, a batch of two whose `step` gets a generator per image (for the
    schedulers that draw noise)."""
    model = model or current_model()
    scheduler.set_timesteps(steps, **(set_kwargs or {}))
    x = initial_noise(batch=1 if seed is None else BATCH) * scheduler.init_noise_sigma
    kwargs = dict(step_kwargs or {})
    if seed is not None:
        kwargs["generator"] = generators(seed)
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x


def run_ours(fn, sigmas, *, vp_start=False, seed=None, prediction="eps", t_of=None, **options):
    """Our sampler from the same initial noise (a batch of two with a generator per image when `seed` is given);
    returns the VP latent (x / sqrt(1 + sigma_last**2))."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    s0 = float(sigmas[0])
    x = initial_noise(batch=1 if seed is None else BATCH) * (math.sqrt(1 + s0 * s0) if vp_start else s0)
    generator = None if seed is None else generators(seed)
    denoiser = make_denoiser(current_model(), prediction, t_of)
    x = fn(denoiser, x, sigmas, generator=generator, **options)
    return x / math.sqrt(1 + float(sigmas[-1]) ** 2)


def rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def base_sigmas(scheduler) -> torch.Tensor:
    """The step sigmas of a scheduler that lists some of them twice (Heun, DPM2, DPM++ SDE)."""
    return torch.unique_consecutive(scheduler.sigmas)


# --- k-diffusion style schedulers (sigma space) -----------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["normal", "karras"])
def test_euler_matches_euler_discrete(schedule):
    sigmas = samplers.resolve("euler", schedule).sigmas(12, NS)
    ref = run_diffusers(diffusers.EulerDiscreteScheduler(**SD15), set_kwargs={"sigmas": sigmas.tolist()})
    check(run_ours(samplers.sample_euler, sigmas), ref)


def test_euler_v_prediction_matches_euler_discrete():
    sigmas = samplers.resolve("euler").sigmas(12, NS)
    sched = diffusers.EulerDiscreteScheduler(**SD15, prediction_type="v_prediction")
    ref = run_diffusers(sched, set_kwargs={"sigmas": sigmas.tolist()})
    check(run_ours(samplers.sample_euler, sigmas, prediction="v"), ref)


def test_euler_ancestral_matches_euler_ancestral_discrete():
    sched = diffusers.EulerAncestralDiscreteScheduler(**SD15, timestep_spacing="trailing")
    ref = run_diffusers(sched, 12, seed=7)
    check(run_ours(samplers.sample_euler_ancestral, sched.sigmas, seed=7), ref)


@pytest.mark.parametrize("karras", [False, True])
def test_heun_matches_heun_discrete(karras):
    sched = diffusers.HeunDiscreteScheduler(**SD15, timestep_spacing="trailing", use_karras_sigmas=karras)
    ref = run_diffusers(sched, 10)
    check(run_ours(samplers.sample_heun, base_sigmas(sched)), ref)


def test_lms_matches_lms_discrete():
    pytest.importorskip("scipy")  # diffusers integrates the LMS weights with scipy
    sched = diffusers.LMSDiscreteScheduler(**SD15, timestep_spacing="trailing")
    ref = run_diffusers(sched, 12)
    check(run_ours(samplers.sample_lms, sched.sigmas), ref)


def test_dpm_2_matches_kdpm2_discrete():
    sched = diffusers.KDPM2DiscreteScheduler(**SD15, timestep_spacing="trailing")
    ref = run_diffusers(sched, 10)
    check(run_ours(samplers.sample_dpm_2, base_sigmas(sched)), ref)


def test_dpm_2_ancestral_matches_kdpm2_ancestral_discrete():
    sched = diffusers.KDPM2AncestralDiscreteScheduler(**SD15, timestep_spacing="trailing")
    ref = run_diffusers(sched, 10, seed=3)
    check(run_ours(samplers.sample_dpm_2_ancestral, base_sigmas(sched), seed=3), ref)


# --- DPM-Solver++ -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [8, 20])
@pytest.mark.parametrize("karras", [False, True])
def test_dpmpp_2m_matches_dpm_solver_multistep(karras, steps):
    """dpmsolver++ order 2 (midpoint), lower_order_final, final sigma 0: the last step returns the x0 estimate.
    diffusers starts at unit VP variance and rounds Karras timesteps to integers for the model call."""
    sched = diffusers.DPMSolverMultistepScheduler(**SD15, use_karras_sigmas=karras)
    ref = run_diffusers(sched, steps)
    t_of = (lambda sigma: NS.sigma_to_t(sigma).round()) if karras else None
    ours = run_ours(samplers.sample_dpmpp_2m, sched.sigmas, vp_start=True, t_of=t_of)
    check(ours, ref)


def test_dpmpp_2m_v_prediction_matches_dpm_solver_multistep():
    sched = diffusers.DPMSolverMultistepScheduler(**SD15, prediction_type="v_prediction")
    ref = run_diffusers(sched, 12)
    ours = run_ours(samplers.sample_dpmpp_2m, sched.sigmas, vp_start=True, prediction="v")
    check(ours, ref)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpmpp_2m_sde_matches_sde_dpm_solver_multistep(solver_type):
    """Our Brownian noise yields one fresh generator normal per step here, as diffusers draws them."""
    sched = diffusers.DPMSolverMultistepScheduler(**SD15, algorithm_type="sde-dpmsolver++", solver_type=solver_type)
    ref = run_diffusers(sched, 12, seed=11)
    fn = samplers.sample_dpmpp_2m_sde if solver_type == "midpoint" else samplers.sample_dpmpp_2m_sde_heun
    check(run_ours(fn, sched.sigmas, vp_start=True, seed=11), ref)


def test_dpmpp_sde_matches_dpm_solver_sde_with_the_same_brownian_tree():
    """DPMSolverSDEScheduler draws from a torchsde Brownian tree; we hand our sampler a tree with the same seed.
    The query points are snapped to diffusers' float32 values of them, since a Brownian path moves by ~sqrt(dt)
    under a rounding-size shift of the point."""
    pytest.importorskip("torchsde")
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    sched = diffusers.DPMSolverSDEScheduler(**SD15, timestep_spacing="trailing", noise_sampler_seed=5)
    ref = run_diffusers(sched, 8)
    sigmas = base_sigmas(sched)
    tree = BrownianTreeNoiseSampler(initial_noise(), float(sigmas[sigmas > 0].min()), float(sigmas.max()), 5)
    points = []
    for s, s_next in zip(sigmas[:-2], sigmas[1:-1], strict=True):
        t, t_next = s.log().neg(), s_next.log().neg()
        points += [t.neg().exp(), (t + (t_next - t) * 0.5).neg().exp(), t_next.neg().exp()]
    points = torch.stack(points)

    def snap(s: float) -> float:
        i = (points - s).abs().argmin()
        assert abs(float(points[i]) - s) <= 1e-5 * s
        return float(points[i])

    ours = run_ours(samplers.sample_dpmpp_sde, sigmas, noise_sampler=lambda a, b: tree(snap(a), snap(b)))
    check(ours, ref)


@pytest.mark.parametrize("fn", [samplers.sample_dpmpp_2s_ancestral, samplers.sample_dpmpp_sde])
def test_dpmpp_2s_and_sde_without_noise_match_dpm_solver_singlestep(fn):
    """diffusers' DPM-Solver++(2S) (singlestep, order 2) on a log-uniform schedule makes its second-order steps over
    pairs of intervals whose inner point is the log-midpoint: our 2S step over every other sigma (DPM++ SDE with
    eta = 0 and r = 1/2 is the same step). diffusers truncates its timesteps to int64; the model gets those."""
    sched = diffusers.DPMSolverSinglestepScheduler(**SD15, solver_order=2, use_exponential_sigmas=True)
    ref = run_diffusers(sched, 9)
    sigmas = torch.cat([sched.sigmas[:-1:2], sched.sigmas[-1:]])

    def t_of(sigma: torch.Tensor) -> torch.Tensor:
        return sched.timesteps[(sched.sigmas[:-1] - sigma).abs().argmin()].float().reshape(1)

    ours = run_ours(fn, sigmas, vp_start=True, t_of=t_of, eta=0.0)
    check(ours, ref)


@pytest.mark.parametrize("order", [2, 3])
def test_uni_pc_matches_unipc_multistep(order):
    sched = diffusers.UniPCMultistepScheduler(**SD15, solver_order=order)
    ref = run_diffusers(sched, 12)
    ours = run_ours(samplers.sample_uni_pc, sched.sigmas, vp_start=True, order=order)
    check(ours, ref)


def test_uni_pc_bh1_to_sigma_min_matches_unipc_multistep():
    """bh1 with a final sigma of 0 gives NaN in diffusers (B(h) = -inf times 0), so this one ends at sigma_min."""
    sched = diffusers.UniPCMultistepScheduler(**SD15, solver_type="bh1", solver_order=3, final_sigmas_type="sigma_min")
    ref = run_diffusers(sched, 12)
    ours = run_ours(samplers.sample_uni_pc, sched.sigmas, vp_start=True, order=3, variant="bh1")
    check(ours, ref)


# --- timestep-form schedulers: our registry's sigmas and start --------------------------------------------------


def run_registry(name: str, steps: int, *, seed=None, prediction="eps", **options):
    choice = samplers.resolve(name)
    assert choice.vp_start
    return run_ours(choice.fn, choice.sigmas(steps, NS), vp_start=True, seed=seed, prediction=prediction, **options)


@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_matches_ddim_scheduler(steps):
    ref = run_diffusers(diffusers.DDIMScheduler(**SD15_VP, clip_sample=False), steps)
    check(run_registry("ddim", steps), ref)


def test_ddim_v_prediction_matches_ddim_scheduler():
    sched = diffusers.DDIMScheduler(**SD15_VP, clip_sample=False, prediction_type="v_prediction")
    ref = run_diffusers(sched, 10)
    check(run_registry("ddim", 10, prediction="v"), ref)


def test_ddim_with_eta_matches_ddim_scheduler():
    ref = run_diffusers(diffusers.DDIMScheduler(**SD15_VP, clip_sample=False), 10, seed=9, step_kwargs={"eta": 0.7})
    check(run_registry("ddim", 10, seed=9, eta=0.7), ref)


@pytest.mark.parametrize("steps", [1, 2, 5, 20])
def test_plms_matches_pndm_with_skip_prk_steps(steps):
    ref = run_diffusers(diffusers.PNDMScheduler(**SD15_VP, skip_prk_steps=True), steps)
    check(run_registry("plms", steps), ref)


def test_ddpm_matches_ddpm_scheduler():
    sched = diffusers.DDPMScheduler(**SD15, steps_offset=1, clip_sample=False)
    ref = run_diffusers(sched, 20, seed=4)
    check(run_registry("ddpm", 20, seed=4), ref)


@pytest.mark.parametrize("steps", [1, 4, 8])
def test_lcm_matches_lcm_scheduler(steps):
    """diffusers mixes in the raw sample by c_skip = 0.25 / ((10 t)**2 + 0.25) (consistency boundary condition); at
    LCM's timesteps (t >= 19) that is below 7e-6 and we leave it out, as k-diffusion's sample_lcm does."""
    sched = diffusers.LCMScheduler(**SD15_VP, clip_sample=False)
    ref = run_diffusers(sched, steps, seed=2)
    check(run_registry("lcm", steps, seed=2), ref)


# --- the comparison means something -------------------------------------------------------------------------------


def test_parity_check_is_discriminating():
    """Two different samplers on the same sigmas differ by far more than the parity tolerance."""
    sched = diffusers.DPMSolverMultistepScheduler(**SD15)
    ref = run_diffusers(sched, 12)
    assert rel_diff(run_ours(samplers.sample_euler, sched.sigmas, vp_start=True), ref) > 100 * TOL


# --- samplers added from A1111's list -----------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [16, 25])
def test_dpmpp_3m_sde_without_noise_matches_third_order_dpm_solver_multistep(steps):
    """With eta = 0, DPM++ 3M SDE is DPM-Solver++(3M): diffusers' order 3 multistep, which warms up with orders 1
    and 2 (the second-order step in its "heun" form, as k-diffusion's) and, from 15 steps on, keeps order 3 to the
    step before the last (the last, to 0, returns the estimate)."""
    sched = diffusers.DPMSolverMultistepScheduler(**SD15, solver_order=3, solver_type="heun")
    ref = run_diffusers(sched, steps)
    check(run_ours(samplers.sample_dpmpp_3m_sde, sched.sigmas, vp_start=True, eta=0.0), ref)


def diffusers_dpm_solver_step(order: int, x_vp: torch.Tensor, sigmas: list[float], r1: float) -> torch.Tensor:
    """One DPM-Solver step of `order` from sigmas[0] to sigmas[1] with diffusers' singlestep updates (noise-prediction
    "dpmsolver"): the inner points are steps of diffusers' own lower orders, each into its place in a singlestep
    group. DPM-Solver-3 (r1 = 1/3, r2 = 2/3) reaches its second inner point with the "heun" second-order update and
    ends with the "midpoint" third-order one; DPM-Solver-2 is the "midpoint" second-order update."""
    sched = diffusers.DPMSolverSinglestepScheduler(
        **SD15, algorithm_type="dpmsolver", solver_order=3, final_sigmas_type="sigma_min"
    )
    s, t = -math.log(sigmas[0]), -math.log(sigmas[1])
    inner = {1: [], 2: [r1], 3: [1 / 3, 2 / 3]}[order]
    sched.sigmas = torch.tensor([math.exp(-(s + r * (t - s))) for r in [0.0, *inner, 1.0]], dtype=torch.float64)
    updates = [sched.dpm_solver_first_order_update, sched.singlestep_dpm_solver_second_order_update,
               sched.singlestep_dpm_solver_third_order_update]  # fmt: skip
    model, outputs, stage = current_model(), [], x_vp
    for k in range(order):
        outputs.append(model(stage, NS.sigma_to_t(sched.sigmas[k : k + 1].float())).double())
        sched._step_index = k
        sched.register_to_config(solver_type="heun" if order == 3 and k == 1 else "midpoint")
        stage = updates[k](outputs if k else outputs[0], sample=x_vp)
    return stage.float()


@pytest.mark.filterwarnings("ignore:.*dpmsolver.*:FutureWarning")  # diffusers' notice on the noise-prediction form
@pytest.mark.parametrize(("order", "r1"), [(1, 0.0), (2, 0.5), (2, 1 / 3), (3, 1 / 3)])
def test_dpm_solver_steps_match_diffusers_singlestep_updates(order, r1):
    """The steps DPM fast and DPM adaptive are made of, one at a time, from sigma 3 to 1.5."""
    from sd_core.samplers import dpm_solver

    sigma, sigma_next = 3.0, 1.5
    x = initial_noise() * sigma
    eps_at = dpm_solver.Estimator(make_denoiser(current_model()))
    s, t = -math.log(sigma), -math.log(sigma_next)
    eps = eps_at(x, s)
    if order == 1:
        ours = dpm_solver.first_order(x, s, t, eps)
    elif order == 2:
        ours = dpm_solver.second_order(x, s, t, eps, dpm_solver.inner_eps(eps_at, x, s, t, eps, r1), r1)
    else:
        ours = dpm_solver.third_order(eps_at, x, s, t, eps, dpm_solver.inner_eps(eps_at, x, s, t, eps, r1))
    ref = diffusers_dpm_solver_step(order, x.double() / math.hypot(1, sigma), [sigma, sigma_next], r1)
    check(ours / math.hypot(1, sigma_next), ref)


@pytest.mark.filterwarnings("ignore:.*dpmsolver.*:FutureWarning")
@pytest.mark.parametrize("steps", [4, 9, 10])
def test_dpm_fast_without_noise_matches_diffusers_singlestep_updates(steps):
    """DPM fast (eta = 0) on the default schedule: `fast_orders(steps)` diffusers singlestep groups on equal steps in
    log sigma from sigma_max to sigma_min, then the x0 estimate there."""
    from sd_core.samplers.dpm_solver import fast_orders

    sigmas = samplers.resolve("dpm_fast").sigmas(steps, NS)
    s_max, s_min = float(sigmas[0]), float(sigmas[-2])
    orders = fast_orders(steps)
    grid = torch.linspace(math.log(s_max), math.log(s_min), len(orders) + 1, dtype=torch.float64).exp().tolist()
    x = initial_noise().double() * s_max / math.hypot(1, s_max)
    for order, sigma, sigma_next in zip(orders, grid[:-1], grid[1:], strict=True):
        x = diffusers_dpm_solver_step(order, x, [sigma, sigma_next], 0.5).double()
    ref = x * math.hypot(1, s_min) - s_min * current_model()(x.float(), NS.sigma_to_t(torch.tensor([s_min])))
    check(run_ours(samplers.sample_dpm_fast, sigmas, eta=0.0), ref.float())


def guidance_heads(model):
    """(uncond, cond) eps of a model: the tiny UNet's two prompt halves, or two different analytic stand-ins."""
    if isinstance(model, TinyGuidedUNet):

        @torch.no_grad()
        def heads(x, t):
            t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
            out = model.unet(torch.cat([x, x]).float(), torch.cat([t, t]), encoder_hidden_states=model.context)
            return out.sample.chunk(2)

        return heads
    uncond = FakeUNet(seed=99)
    return lambda x, t: (uncond(x, t), model(x, t))


class CfgPairDenoiser:
    """A k-diffusion denoiser with CFG over two eps heads that offers the optional `with_uncond` call."""

    def __init__(self, heads, scale: float) -> None:
        self.heads, self.scale = heads, scale

    def with_uncond(self, x, sigma, cfg_factor=1.0):
        s = sigma.reshape(-1, 1, 1, 1)
        uncond, cond = self.heads(x / (s**2 + 1).sqrt(), NS.sigma_to_t(sigma))
        guided = uncond + self.scale * cfg_factor * (cond - uncond)
        return x - s * guided, x - s * uncond

    def __call__(self, x, sigma):
        return self.with_uncond(x, sigma)[0]


@pytest.mark.parametrize(("steps", "eta"), [(10, 0.0), (25, 0.0), (10, 0.6)])
def test_ddim_cfg_pp_matches_ddim_scheduler_on_the_renoised_guided_estimate(steps, eta):
    """CFG++'s step is DDIM's step with the unconditional eps as the direction and the guided x0 as the estimate:
    diffusers' DDIMScheduler.step given the unconditional eps and the sample `x + sqrt(1 - a_t) * (eps_uncond -
    eps_guided)` (whose x0 under eps_uncond is the guided x0) computes exactly that. Guidance 7.5 * (1 / 12.5)."""
    heads = guidance_heads(current_model())
    sched = diffusers.DDIMScheduler(**SD15_VP, clip_sample=False)
    sched.set_timesteps(steps)
    x = initial_noise()
    generator = torch.Generator().manual_seed(8)
    for t in sched.timesteps:
        uncond, cond = heads(x, t)
        guided = uncond + 7.5 / 12.5 * (cond - uncond)
        shifted = x + (1 - sched.alphas_cumprod[t]).sqrt() * (uncond - guided)
        x = sched.step(uncond, t, shifted, eta=eta, generator=generator).prev_sample
    sigmas = samplers.resolve("ddim_cfg_pp").sigmas(steps, NS)
    ours = samplers.sample_ddim_cfg_pp(
        CfgPairDenoiser(heads, 7.5), initial_noise() * math.hypot(1, float(sigmas[0])), sigmas,
        generator=torch.Generator().manual_seed(8), eta=eta,
    )  # fmt: skip
    check(ours / math.hypot(1, float(sigmas[-1])), x)
