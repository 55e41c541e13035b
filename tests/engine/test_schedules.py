"""The model's noise schedule and the sampling schedules, against diffusers where it has the same thing and against
hand-computed timesteps where only ComfyUI/k-diffusion define it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_core import schedules
from sd_core.schedules import NoiseSchedule, get_sigmas

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 notices inside diffusers

SD15 = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
NS = NoiseSchedule()


def close(a, b, rtol=1e-5, atol=0.0) -> bool:
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), rtol, atol)


# --- NoiseSchedule --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear"])
def test_alphas_cumprod_match_diffusers(beta_schedule):
    ours = NoiseSchedule(beta_schedule)
    ref = diffusers.DDPMScheduler(**{**SD15, "beta_schedule": beta_schedule})
    assert close(ours.betas, ref.betas)
    assert close(ours.alphas_cumprod, ref.alphas_cumprod)


def test_betas_override_the_named_schedule():
    betas = torch.full((10,), 0.1, dtype=torch.float64)
    ns = NoiseSchedule(betas=betas)
    assert ns.num_timesteps == 10
    assert close(ns.alphas_cumprod, 0.9 ** torch.arange(1, 11, dtype=torch.float64))


def test_unknown_beta_schedule_is_rejected():
    with pytest.raises(ValueError, match="scaled_linear"):
        NoiseSchedule("cosine")


def test_sigmas_are_the_1000_ascending_training_levels():
    assert NS.sigmas.shape == (1000,)
    assert bool((NS.sigmas[1:] > NS.sigmas[:-1]).all())
    assert NS.sigma_min == pytest.approx(0.0291675, rel=1e-4)
    assert NS.sigma_max == pytest.approx(14.614642, rel=1e-5)
    assert close(NS.sigmas, ((1 - NS.alphas_cumprod) / NS.alphas_cumprod) ** 0.5)


def test_sigma_to_t_of_training_sigmas_is_their_timestep():
    t = torch.tensor([0, 1, 20, 500, 981, 999])
    assert close(NS.sigma_to_t(NS.sigmas[t]), t, rtol=0, atol=1e-3)


def test_sigma_to_t_matches_diffusers_log_sigma_interpolation():
    sigmas = np.exp(np.random.default_rng(0).uniform(np.log(0.03), np.log(14.6), 64)).astype(np.float32)
    ref = diffusers.EulerDiscreteScheduler(**SD15)
    log_sigmas = np.log(((1 - ref.alphas_cumprod) / ref.alphas_cumprod).numpy() ** 0.5)
    expected = np.array([ref._sigma_to_t(s, log_sigmas) for s in sigmas])
    assert close(NS.sigma_to_t(torch.from_numpy(sigmas)), expected, rtol=0, atol=2e-3)


def test_t_to_sigma_inverts_sigma_to_t():
    t = torch.tensor([0.0, 0.5, 17.25, 480.7, 998.9, 999.0])
    assert close(NS.sigma_to_t(NS.t_to_sigma(t)), t, rtol=0, atol=2e-3)


def test_sigma_to_t_clamps_outside_the_training_range():
    assert NS.sigma_to_t(torch.tensor([1e-4, 0.0, 100.0])).tolist() == [0.0, 0.0, 999.0]


# --- sampling schedules ---------------------------------------------------------------------------------------------


def test_normal_is_k_diffusion_get_sigmas():
    """linspace(999, 0, 4) hits integer timesteps, so the sigmas are training levels."""
    assert close(get_sigmas("normal", 4, NS), [*NS.sigmas[[999, 666, 333, 0]].tolist(), 0.0], rtol=1e-6)


@pytest.mark.parametrize("name", ["karras", "exponential"])
@pytest.mark.parametrize("steps", [2, 8, 25])
def test_karras_and_exponential_match_diffusers(name, steps):
    """(At 1 step diffusers takes the range from its single timestep, 0, instead of the model's: not compared.)"""
    sched = diffusers.EulerDiscreteScheduler(**SD15, **{f"use_{name}_sigmas": True})
    sched.set_timesteps(steps)
    assert close(get_sigmas(name, steps, NS), sched.sigmas)


def test_sgm_uniform_drops_the_last_of_steps_plus_one_timesteps():
    expected = NS.t_to_sigma(torch.tensor([999.0, 749.25, 499.5, 249.75]))
    assert close(get_sigmas("sgm_uniform", 4, NS), [*expected.tolist(), 0.0], rtol=1e-6)


@pytest.mark.parametrize(("steps", "timesteps"), [(4, [999, 749, 499, 249]), (3, [999, 666, 333])])
def test_simple_takes_every_nth_training_sigma_from_the_top(steps, timesteps):
    assert get_sigmas("simple", steps, NS).tolist() == [*NS.sigmas[timesteps].tolist(), 0.0]


def test_ddim_uniform_counts_up_from_timestep_one():
    assert get_sigmas("ddim_uniform", 4, NS).tolist() == [*NS.sigmas[[751, 501, 251, 1]].tolist(), 0.0]


def test_ddim_uniform_gives_an_extra_step_when_steps_do_not_divide_1000():
    """ComfyUI's definition: stride 1000 // 30 = 33 from t = 1 reaches t = 991, 31 sigmas."""
    sigmas = get_sigmas("ddim_uniform", 30, NS)
    assert len(sigmas) == 32
    assert sigmas[0] == NS.sigmas[991]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 3, 7, 30, 50])
def test_discrete_timesteps_match_diffusers_ddim(spacing, steps):
    sched = diffusers.DDIMScheduler(**SD15, steps_offset=1, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    assert schedules.discrete_timesteps(steps, spacing) == sched.timesteps.tolist()


def test_leading_at_1000_steps_stays_in_range():
    assert schedules.discrete_timesteps(1000, "leading") == list(range(999, -1, -1))


def test_discrete_sigmas_end_at_zero_or_at_sigma_min():
    ts = schedules.discrete_timesteps(10, "leading")
    assert get_sigmas("discrete", 10, NS).tolist() == [*NS.sigmas[ts].tolist(), 0.0]
    assert get_sigmas("discrete", 10, NS, final="sigma_min").tolist() == NS.sigmas[[*ts, 0]].tolist()


def test_unknown_spacing_and_final_are_rejected():
    with pytest.raises(ValueError, match="leading"):
        get_sigmas("discrete", 10, NS, spacing="uniform")
    with pytest.raises(ValueError, match="sigma_min"):
        get_sigmas("discrete", 10, NS, final="one")


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 50])
def test_lcm_timesteps_match_diffusers(steps):
    sched = diffusers.LCMScheduler(**SD15)
    sched.set_timesteps(steps)
    assert schedules.lcm_timesteps(steps) == sched.timesteps.tolist()


def test_lcm_schedule_rejects_more_steps_than_its_original_schedule():
    with pytest.raises(ValueError, match="1 to 50"):
        get_sigmas("lcm", 51, NS)


@pytest.mark.parametrize(
    ("name", "steps"),
    [(name, steps) for name in schedules.SCHEDULES for steps in (1, 2, 10, 50 if name == "lcm" else 1000)],
)
def test_every_schedule_is_decreasing_float32_and_ends_in_zero(name, steps):
    sigmas = get_sigmas(name, steps, NS)
    assert sigmas.dtype == torch.float32 and sigmas.dim() == 1
    assert len(sigmas) == steps + 1 or name == "ddim_uniform"
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert sigmas[-1] == 0


@pytest.mark.parametrize("steps", [0, -1, 1001, 2.5, True, "20"])
def test_steps_outside_1_to_1000_are_rejected(steps):
    with pytest.raises(ValueError, match="from 1 to 1000"):
        get_sigmas("normal", steps, NS)


def test_unknown_schedule_lists_the_valid_ones():
    with pytest.raises(ValueError, match="karras.*sgm_uniform"):
        get_sigmas("cosine", 10, NS)


@pytest.mark.parametrize(
    ("label", "name"),
    [("Karras", "karras"), ("SGM Uniform", "sgm_uniform"), ("Uniform", "normal"), (" EXPONENTIAL ", "exponential")],
)
def test_display_labels_resolve_to_schedule_names(label, name):
    assert schedules.schedule_name(label) == name


# --- the schedules A1111 and ComfyUI add ----------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 8, 25])
def test_polyexponential_with_rho_1_is_exponential(steps):
    assert close(get_sigmas("polyexponential", steps, NS), get_sigmas("exponential", steps, NS), rtol=2e-6)


def test_polyexponential_spaces_log_sigma_as_a_power_of_the_ramp():
    lo, hi = 0.03, 14.0
    ramp = np.linspace(1, 0, 5) ** 2.0
    expected = np.exp(np.log(lo) + ramp * (np.log(hi) - np.log(lo)))
    assert close(schedules.polyexponential(5, lo, hi, rho=2.0), [*expected, 0.0], rtol=1e-6)


def a1111_ays(table: list[float], steps: int) -> list[float]:
    """A1111's resampling, from its description: reverse, interpolate log sigma from 11 evenly spaced positions to
    `steps`, exp, reverse, then 0."""
    ys = np.interp(np.linspace(0, 1, steps), np.linspace(0, 1, len(table)), np.log(table[::-1]))
    return [*np.exp(ys)[::-1], 0.0]


def test_align_your_steps_tables_are_nvidias():
    """diffusers ships the same 10 step sigmas (it ends the list in 0 where the table has its 0.029)."""
    ays = diffusers.schedulers.AysSchedules
    assert list(schedules.AYS_TABLES["sd15"][:10]) == ays["StableDiffusionSigmas"][:10]
    assert list(schedules.AYS_TABLES["sdxl"][:10]) == ays["StableDiffusionXLSigmas"][:10]
    assert schedules.AYS_TABLES["sd15"][-1] == schedules.AYS_TABLES["sdxl"][-1] == 0.029


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("steps", [2, 4, 10, 11, 12, 30, 1000])
def test_align_your_steps_resamples_as_a1111(family, steps):
    table = list(schedules.AYS_TABLES[family])
    sigmas = get_sigmas("align_your_steps", steps, NS, family=family)
    assert close(sigmas, a1111_ays(table, steps), rtol=1e-6)
    if steps == 11:
        assert close(sigmas, [*table, 0.0], rtol=1e-7)


def test_align_your_steps_picks_its_table_by_family():
    assert get_sigmas("align_your_steps", 11, NS)[1] == pytest.approx(6.475)
    assert get_sigmas("align_your_steps", 11, NS, family="sdxl")[1] == pytest.approx(6.315)
    assert get_sigmas("align_your_steps", 1, NS).tolist() == [pytest.approx(14.615), 0.0]
    with pytest.raises(ValueError, match="sd15, sdxl"):
        get_sigmas("align_your_steps", 10, NS, family="sd3")


@pytest.mark.parametrize("steps", [2, 3, 10, 40])
def test_kl_optimal_is_comfyuis_even_spacing_in_atan_sigma(steps):
    """ComfyUI's definition: tan((1 - i / (n - 1)) atan(sigma_max) + i / (n - 1) atan(sigma_min)), i < n, then 0."""
    i = np.arange(steps) / (steps - 1)
    expected = np.tan((1 - i) * np.arctan(NS.sigma_max) + i * np.arctan(NS.sigma_min))
    sigmas = get_sigmas("kl_optimal", steps, NS)
    assert close(sigmas, [*expected, 0.0], rtol=2e-6)
    gaps = np.diff(np.arctan(sigmas[:-1].double().numpy()))
    assert np.allclose(gaps, np.arctan(expected[1]) - np.arctan(expected[0]))


@pytest.mark.parametrize("steps", [2, 3, 10, 30])
def test_beta_matches_diffusers_beta_sigmas(steps):
    """A1111's and diffusers' Beta(0.6, 0.6) schedule over the model's sigma range."""
    pytest.importorskip("scipy")
    sched = diffusers.EulerDiscreteScheduler(**SD15, use_beta_sigmas=True)
    sched.set_timesteps(steps)
    assert close(get_sigmas("beta", steps, NS), sched.sigmas, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:.*ibeta.*:RuntimeWarning")  # scipy's own root finder, on an extreme tail
@pytest.mark.parametrize(("a", "b"), [(0.6, 0.6), (0.5, 2.0), (2.0, 5.0), (1.0, 1.0), (3.0, 0.7), (0.1, 0.1), (20, 20)])
def test_beta_quantile_and_incomplete_beta_match_scipy(a, b):
    """Our own regularized incomplete beta and its inverse (sd_core does not import scipy), to float64 precision."""
    stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    ps = np.concatenate([np.linspace(0, 1, 401), [1e-12, 1e-6, 1 - 1e-6, 1 - 1e-12]])
    ours = np.array([schedules.beta_ppf(p, a, b) for p in ps])
    assert np.allclose(ours, stats.beta.ppf(ps, a, b), rtol=1e-9, atol=1e-13)
    xs = np.linspace(0, 1, 401)
    assert np.allclose([schedules.betainc(a, b, x) for x in xs], special.betainc(a, b, xs), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    ("label", "name"),
    [("Polyexponential", "polyexponential"), ("Align Your Steps", "align_your_steps"), ("AYS", "align_your_steps"),
     ("KL Optimal", "kl_optimal"), ("kl_optimal", "kl_optimal"), ("Beta", "beta"), ("beta", "beta")],
)  # fmt: skip
def test_a1111_and_comfyui_names_of_the_added_schedules(label, name):
    assert schedules.schedule_name(label) == name
    assert schedules.SCHEDULE_LABELS[name] in ("Polyexponential", "Align Your Steps", "KL Optimal", "Beta")
