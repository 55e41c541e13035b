"""k-diffusion style samplers: `sample_x(denoiser, x, sigmas, *, callback=None, generator=None, **options) -> x`.

`denoiser(x, sigma) -> x0` works in k-diffusion space (`x = x0 + sigma * eps`, sigma a [B] tensor); `sigmas` is a
decreasing 1-D tensor (see `sd_core.schedules`); the result is x at `sigmas[-1]`. Samplers know nothing of models.
`callback(info)` is called once per step with a `sd_core.progress.StepInfo` (step from 1, total, latents, denoised,
sigma and sigma_next as floats): the one payload every callback in sd_core gets. Raising `sd_core.errors.Cancelled`
in it stops the run. Stochastic samplers draw their noise on the CPU
from `generator`. `resolve(name, schedule)` maps user-facing names to a `SamplerChoice`.

DPM fast and DPM adaptive walk their own time points and report on the schedule's steps (`dpm_solver.Progress`);
Restart reports its own Heun steps. CFG++ samplers also need the unconditional estimate: a guided denoiser offers it
through an optional call, `_core.denoise_with_uncond`.
"""

from ..schedules import SCHEDULES
from ._core import BrownianNoise, ancestral_split
from .dpmpp import (
    sample_dpm_adaptive,
    sample_dpm_fast,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2m_sde_heun,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from .multistep import lms_coefficients, sample_lms, sample_plms
from .registry import SAMPLER_OPTIONS, SAMPLERS, SamplerChoice, resolve, samplers_taking
from .singlestep import (
    sample_ddim,
    sample_ddim_cfg_pp,
    sample_ddpm,
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpmpp_2s_ancestral,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lcm,
    sample_restart,
)
from .unipc import sample_uni_pc

__all__ = [
    "SAMPLER_OPTIONS",
    "SAMPLERS",
    "SCHEDULES",
    "BrownianNoise",
    "SamplerChoice",
    "ancestral_split",
    "lms_coefficients",
    "resolve",
    "sample_ddim",
    "sample_ddim_cfg_pp",
    "sample_ddpm",
    "sample_dpm_adaptive",
    "sample_dpm_fast",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2m_sde_heun",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lcm",
    "sample_lms",
    "sample_plms",
    "sample_restart",
    "sample_uni_pc",
    "samplers_taking",
]
