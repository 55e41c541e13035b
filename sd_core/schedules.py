"""Noise levels: the model's training schedule and the sigma schedules that samplers walk down.

Everything is in k-diffusion space, where a noisy latent is `x = x0 + sigma * eps` and sigma relates to the
variance-preserving (VP) form by `alpha_cumprod = 1 / (1 + sigma**2)`. A sampling schedule is a 1-D float32 tensor
of decreasing sigmas; it ends in 0, or in the model's smallest sigma for the DDIM/PLMS family, whose last step goes to
`alphas_cumprod[0]` (SD1.5's `set_alpha_to_one: false`).

Schedules by name (`get_sigmas`):

- `normal`: k-diffusion's `get_sigmas` (A1111 "Uniform"/"Automatic", ComfyUI "normal"): timesteps evenly spaced
  from 999 to 0, sigma by log-sigma interpolation, then 0.
- `karras`: Karras et al. 2022, rho 7, from sigma_max to sigma_min of the model, then 0.
- `exponential`: evenly spaced in log sigma, then 0.
- `sgm_uniform`: like `normal` over `steps + 1` points with the last (t = 0) replaced by 0 (ComfyUI).
- `simple`: every `1000 / steps`-th training sigma from the top (ComfyUI).
- `ddim_uniform`: training sigmas at t = 1, 1 + 1000 // steps, ... up to 999 (ComfyUI). Like ComfyUI it can give
  more steps than asked when `steps` does not divide 1000 (30 steps -> 31 sigmas before the 0).
- `discrete`: the training sigmas at the integer timesteps that a timestep spacing picks (DDIM, PLMS, DDPM):
  `leading` (`arange(S) * (1000 // S) + 1`, CompVis and SD1.5's default), `trailing` (starts at 999), `linspace`.
- `lcm`: the timesteps of diffusers' LCMScheduler (skipping over a 50-step "original" schedule).
- `polyexponential`: k-diffusion's, rho 1 (A1111's default): log sigma spaced as `ramp ** rho`, then 0.
- `align_your_steps`: the published 10-step tables of NVIDIA's Align Your Steps (SD1.5 or SDXL), resampled in log
  sigma to `steps` as A1111 does, then 0.
- `kl_optimal`: evenly spaced in atan(sigma), ComfyUI's form (ends in 0).
- `beta`: quantiles of a Beta(0.6, 0.6) distribution mapped linearly onto the sigma range, then 0 (A1111's and
  diffusers' form).

Where A1111 and ComfyUI define a schedule differently, the function's docstring says which one this is and why.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MAX_STEPS = 1000
SPACINGS = ("leading", "trailing", "linspace")
FINALS = ("zero", "sigma_min")


class NoiseSchedule:
    """The training noise schedule of a Stable Diffusion model (1000 discrete levels).

    `beta_schedule` is "scaled_linear" (SD: `linspace(sqrt(beta_start), sqrt(beta_end), n) ** 2`) or "linear";
    `betas` overrides both. Computed in float64 and stored in float32, as the original LDM code does.
    """

    def __init__(
        self,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_timesteps: int = 1000,
        *,
        betas: torch.Tensor | None = None,
    ) -> None:
        if betas is not None:
            betas = torch.as_tensor(betas, dtype=torch.float64).reshape(-1)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        else:
            raise ValueError(f"beta_schedule must be 'scaled_linear' or 'linear', not {beta_schedule!r}")
        self.betas = betas.float()
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float()
        self.num_timesteps = len(self.alphas_cumprod)
        # Ascending: sigmas[t] is the noise level of training timestep t.
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Fractional training timestep of each sigma: linear interpolation of log sigma between the two nearest
        levels (k-diffusion's convention, also diffusers'); clamped to [0, 999]."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.clamp(min=1e-10).log()
        low = (torch.searchsorted(log_sigmas, log_sigma.reshape(-1), right=True) - 1).clamp(0, len(log_sigmas) - 2)
        low = low.reshape(log_sigma.shape)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return low.to(torch.float32) + w

    def t_to_sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Sigma at a fractional timestep (inverse of `sigma_to_t`)."""
        t = torch.as_tensor(t, dtype=torch.float32)
        log_sigmas = self.log_sigmas.to(t.device)
        t = t.clamp(0, len(log_sigmas) - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t - low
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def check_steps(steps: int) -> int:
    """Reject step counts outside 1..1000 (the model has 1000 noise levels)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    return steps


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.float(), sigmas.new_zeros(1, dtype=torch.float32)])


def normal(steps: int, ns: NoiseSchedule) -> torch.Tensor:
    """k-diffusion `get_sigmas`: timesteps evenly spaced from the last to the first, then 0."""
    t = torch.linspace(ns.num_timesteps - 1, 0, steps)
    return _append_zero(ns.t_to_sigma(t))


def sgm_uniform(steps: int, ns: NoiseSchedule) -> torch.Tensor:
    """`normal` over `steps + 1` timesteps, dropping the last one (t = 0) in favour of 0."""
    t = torch.linspace(ns.num_timesteps - 1, 0, steps + 1)[:-1]
    return _append_zero(ns.t_to_sigma(t))


def karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in sigma**(1/rho), which spends more steps at low noise."""
    ramp = torch.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log sigma."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps).exp())


def simple(steps: int, ns: NoiseSchedule) -> torch.Tensor:
    """ComfyUI "simple": every `n / steps`-th training sigma counting down from the top."""
    n = ns.num_timesteps
    stride = n / steps
    idx = [n - 1 - int(i * stride) for i in range(steps)]
    return _append_zero(ns.sigmas[idx])


def ddim_uniform(steps: int, ns: NoiseSchedule) -> torch.Tensor:
    """ComfyUI "ddim_uniform": training sigmas at t = 1, 1 + n // steps, ... below n, highest first, then 0."""
    idx = list(range(1, ns.num_timesteps, max(ns.num_timesteps // steps, 1)))[::-1]
    return _append_zero(ns.sigmas[idx])


def discrete_timesteps(steps: int, spacing: str = "leading", num_timesteps: int = 1000, offset: int = 1) -> list[int]:
    """Integer training timesteps, highest first, as the DDIM/PLMS/DDPM schedulers pick them.

    `leading`: `arange(S) * (n // S) + offset` (offset 1 is SD1.5's `steps_offset`; shifted down when it would pass
    n - 1, which only happens at S = n). `trailing`: `round(n - i * n / S) - 1`, starting at n - 1.
    `linspace`: `round(linspace(0, n - 1, S))`.
    """
    if spacing == "leading":
        ts = [i * (num_timesteps // steps) + offset for i in range(steps)]
        over = max(ts[-1] - (num_timesteps - 1), 0)
        ts = [t - over for t in ts]
    elif spacing == "trailing":
        ts = [round(num_timesteps - i * (num_timesteps / steps)) - 1 for i in range(steps)][::-1]
    elif spacing == "linspace":
        ts = torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round().long().tolist()
    else:
        raise ValueError(f"timestep spacing must be one of {', '.join(SPACINGS)}, not {spacing!r}")
    return ts[::-1]


def discrete(steps: int, ns: NoiseSchedule, spacing: str = "leading", final: str = "zero") -> torch.Tensor:
    """Training sigmas at `discrete_timesteps`, then 0 (`final="zero"`) or the model's smallest sigma
    (`final="sigma_min"`: DDIM and PLMS step to `alphas_cumprod[0]` at the end)."""
    ts = discrete_timesteps(steps, spacing, ns.num_timesteps)
    return _finish(ns.sigmas[ts], ns, final)


def lcm_timesteps(steps: int, num_timesteps: int = 1000, original_steps: int = 50) -> list[int]:
    """diffusers' LCMScheduler timesteps: `steps` of the `original_steps` timesteps (k - 1, 2k - 1, ..., 999 with
    k = n // original_steps), picked at evenly spaced positions from the top."""
    if steps > original_steps:
        raise ValueError(f"the lcm schedule supports 1 to {original_steps} steps, got {steps}")
    k = num_timesteps // original_steps
    origin = [(i + 1) * k - 1 for i in range(original_steps)][::-1]
    return [origin[int(math.floor(i * original_steps / steps))] for i in range(steps)]


def lcm(steps: int, ns: NoiseSchedule, original_steps: int = 50) -> torch.Tensor:
    """Training sigmas at `lcm_timesteps`, then 0."""
    return _append_zero(ns.sigmas[lcm_timesteps(steps, ns.num_timesteps, original_steps)])


def polyexponential(steps: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """k-diffusion's polyexponential: log sigma = log sigma_min + ramp**rho * log(sigma_max / sigma_min), ramp from 1
    to 0. rho = 1 (A1111's setting) is `exponential`; a larger rho spends more steps at low noise."""
    ramp = torch.linspace(1, 0, steps, dtype=torch.float64) ** rho
    return _append_zero((ramp * math.log(sigma_max / sigma_min) + math.log(sigma_min)).exp())


# Align Your Steps (Sabour et al. 2024): NVIDIA's optimized 10-step sigmas, highest first.
AYS_TABLES = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
}
MODEL_FAMILIES = tuple(AYS_TABLES)


def align_your_steps(steps: int, family: str = "sd15") -> torch.Tensor:
    """The Align Your Steps table of a model family (`AYS_TABLES`), resampled to `steps` sigmas by linear
    interpolation of log sigma over evenly spaced positions, then 0.

    A1111's resampling: all `steps` sigmas span the table (the last is its 0.029), then 0. ComfyUI's node instead
    resamples to `steps + 1` and replaces the last with 0, so its last model call comes at a higher sigma than the
    table's end; we follow A1111, whose API this engine speaks, and whose last step is the table's. At 11 steps this is
    the table itself. One step gives [sigma_max, 0] (A1111 would take the table's lowest sigma).
    """
    if family not in AYS_TABLES:
        raise ValueError(f"model family must be one of {', '.join(MODEL_FAMILIES)}, not {family!r}")
    table = torch.tensor(AYS_TABLES[family], dtype=torch.float64)
    if steps == 1:
        return _append_zero(table[:1])
    src = torch.linspace(0, 1, len(table), dtype=torch.float64).numpy()
    dst = torch.linspace(0, 1, steps, dtype=torch.float64).numpy()
    log_sigmas = np.interp(dst, src, table.flip(0).log().numpy())
    return _append_zero(torch.from_numpy(log_sigmas).exp().flip(0))


def kl_optimal(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The KL-optimal schedule (Sabour et al. 2024): evenly spaced in atan(sigma) from sigma_max to sigma_min, then 0.

    ComfyUI's form. A1111 takes `steps + 1` points and no final 0, so its last step ends at sigma_min with that much
    noise left in the image; we end in 0 like every other schedule here (the final step returns the x0 estimate).
    """
    frac = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    return _append_zero(torch.tan((1 - frac) * math.atan(sigma_max) + frac * math.atan(sigma_min)))


def beta(steps: int, sigma_min: float, sigma_max: float, a: float = 0.6, b: float = 0.6) -> torch.Tensor:
    """Beta schedule ("Beta Sampling is All You Need", Lee et al. 2024): sigma_min + q * (sigma_max - sigma_min) at the
    quantiles q = ppf(1 - i / (steps - 1)) of Beta(a, b), then 0.

    A1111's form, which diffusers' `use_beta_sigmas` shares (the tests hold us to it). ComfyUI applies the quantiles
    to training timesteps instead (`round(q * 999)`, repeats dropped); we follow A1111, whose API this engine speaks.
    The Beta quantile is `beta_ppf`, so scipy is not needed.
    """
    ps = [1 - i / (steps - 1) for i in range(steps)] if steps > 1 else [1.0]
    qs = torch.tensor([beta_ppf(p, a, b) for p in ps], dtype=torch.float64)
    return _append_zero(sigma_min + qs * (sigma_max - sigma_min))


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), from its continued fraction (DLMF 8.17.22) evaluated by the
    modified Lentz method, on the side of the symmetry I_x(a, b) = 1 - I_(1-x)(b, a) where it converges fast."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - betainc(b, a, 1.0 - x)
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0  # the value of 1 + d1 / (1 + d2 / (1 + ...)), and Lentz's two ratios
    for j in range(1, 1000):
        m = j // 2
        if j % 2:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return math.exp(a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)) / (a * f)


def beta_ppf(p: float, a: float, b: float) -> float:
    """The quantile of Beta(a, b): the x in [0, 1] with I_x(a, b) = p. Newton's method on `betainc`, kept inside a
    shrinking bracket (a bisection step whenever Newton would leave it), to float64 precision. Above p = 1/2 it
    solves the mirrored problem (1 - x for 1 - p, a and b swapped), where small tail probabilities keep their digits."""
    if p <= 0.0 or p >= 1.0:
        return 0.0 if p <= 0.0 else 1.0
    if p > 0.5:
        return 1.0 - beta_ppf(1.0 - p, b, a)
    lo, hi, x = 0.0, 1.0, 0.5
    log_b = _log_beta(a, b)
    for _ in range(200):
        err = betainc(a, b, x) - p
        if err == 0.0:
            return x
        lo, hi = (x, hi) if err < 0 else (lo, x)
        density = math.exp((a - 1) * math.log(x) + (b - 1) * math.log1p(-x) - log_b)
        step = x - err / density
        nxt = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(nxt - x) <= 1e-15 * x or hi - lo <= 1e-300:
            return nxt
        x = nxt
    return x


def _finish(sigmas: torch.Tensor, ns: NoiseSchedule, final: str) -> torch.Tensor:
    if final == "zero":
        return _append_zero(sigmas)
    if final == "sigma_min":
        return torch.cat([sigmas.float(), ns.sigmas[:1].float()])
    raise ValueError(f"final must be one of {', '.join(FINALS)}, not {final!r}")


SCHEDULES = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "discrete", "lcm",
             "polyexponential", "align_your_steps", "kl_optimal", "beta")  # fmt: skip

# Display names (A1111 "Schedule type", ComfyUI) -> schedule names. A1111's "Uniform" is k-diffusion's get_sigmas.
SCHEDULE_LABELS = {
    "normal": "Normal",
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform",
    "simple": "Simple",
    "ddim_uniform": "DDIM",
    "discrete": "Discrete",
    "lcm": "LCM",
    "polyexponential": "Polyexponential",
    "align_your_steps": "Align Your Steps",
    "kl_optimal": "KL Optimal",
    "beta": "Beta",
}
_ALIASES = {
    **{name: name for name in SCHEDULES},
    **{label.lower(): name for name, label in SCHEDULE_LABELS.items()},
    "uniform": "normal",
    "sgm uniform": "sgm_uniform",
    "ddim uniform": "ddim_uniform",
    "kl optimal": "kl_optimal",
    "ays": "align_your_steps",
}


# The schedules defined by the model's sigma range alone.
_BY_RANGE = {"karras": karras, "exponential": exponential, "polyexponential": polyexponential,
             "kl_optimal": kl_optimal, "beta": beta}  # fmt: skip


def schedule_name(name: str) -> str:
    """Canonical schedule name for a schedule name or display label (case-insensitive)."""
    key = " ".join(name.strip().lower().split())
    if key in _ALIASES:
        return _ALIASES[key]
    raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def get_sigmas(
    schedule: str,
    steps: int,
    noise_schedule: NoiseSchedule,
    *,
    spacing: str = "leading",
    final: str = "zero",
    family: str = "sd15",
    discard_penultimate: bool = False,
) -> torch.Tensor:
    """The sigmas (float32, 1-D, `steps + 1` values; more for `ddim_uniform`, see above) for a named schedule.

    `spacing` and `final` only apply to the `discrete` schedule, `family` (a key of `AYS_TABLES`: "sd15", or "sdxl"
    for SDXL models) only to `align_your_steps`. `discard_penultimate` computes `steps + 1` steps and drops the
    next-to-last sigma (A1111's flag for DPM2 and DPM++ 3M SDE: the step count stays, the last step is longer).
    """
    check_steps(steps)
    if discard_penultimate:
        if steps == MAX_STEPS:
            raise ValueError(f"steps must be an integer from 1 to {MAX_STEPS - 1} for this sampler, got {steps}")
        sigmas = get_sigmas(schedule, steps + 1, noise_schedule, spacing=spacing, final=final, family=family)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    name = schedule_name(schedule)
    ns = noise_schedule
    if name == "normal":
        return normal(steps, ns)
    if name in _BY_RANGE:
        return _BY_RANGE[name](steps, ns.sigma_min, ns.sigma_max)
    if name == "sgm_uniform":
        return sgm_uniform(steps, ns)
    if name == "simple":
        return simple(steps, ns)
    if name == "ddim_uniform":
        return ddim_uniform(steps, ns)
    if name == "discrete":
        return discrete(steps, ns, spacing, final)
    if name == "align_your_steps":
        return align_your_steps(steps, family)
    return lcm(steps, ns)
