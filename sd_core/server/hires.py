"""txt2img's hires fix fields, as A1111 reads them, -> the engine's `sd_core.HiresOptions`.

- `enable_hr`: hires fix on (`sd_core.hires`: a first pass, an upscale, an img2img second pass).
- `firstphase_width` / `firstphase_height`: the first pass's size in place of width/height. A1111 applies them with
  or without `enable_hr`; one left at 0 keeps that side of width/height (where A1111 would fail on a zero side).
  Floored to multiples of 8 as widths are.
- `hr_scale`, or `hr_resize_x` / `hr_resize_y` (0: not given; floored to multiples of 8): the target size.
- `hr_upscaler`: a latent mode (`/sdapi/v1/latent-upscale-modes`) or an upscaler of `/sdapi/v1/upscalers` (the pixel
  ones and the ESRGAN-family models of `--upscaler-dir`); null is "Latent" (A1111's `latent_upscale_default_mode`).
- `hr_second_pass_steps` (0: the first pass's steps), `denoising_strength`: the second pass's.
- `hr_prompt` / `hr_negative_prompt` (empty: the prompt's), with the request's styles applied and extra-network tags
  taken out, as for the prompt; `hr_sampler_name` / `hr_scheduler` (null, empty or A1111's "Use same sampler" /
  "Use same scheduler": the first pass's).
- `hr_checkpoint_name` other than the current model is refused (`refusals.py`).

Progress counts the two passes as two jobs, as A1111 (`generate.run`).
"""

from __future__ import annotations

from typing import Any

from sd_core import HiresOptions
from sd_core.upscalers.latent import is_latent

from . import upscalers
from .prepare import Prepared, floor_side, strip_other_networks
from .schemas import Txt2ImgRequest
from .styles import StyleFile

SAME = ("", "Use same sampler", "Use same scheduler")


def first_pass_size(req: Any, width: int | None, height: int | None) -> tuple[int | None, int | None]:
    """width x height with `firstphase_width/height` in their place where given."""
    if not isinstance(req, Txt2ImgRequest):
        return width, height
    if req.firstphase_width:
        width = floor_side("firstphase_width", req.firstphase_width)
    if req.firstphase_height:
        height = floor_side("firstphase_height", req.firstphase_height)
    return width, height


def options(req: Any, p: Prepared, styles: StyleFile) -> HiresOptions | None:
    """The engine's hires options for a request with `enable_hr` (None without); a bad value is a
    `limits.SettingError` naming the hires setting (`generate.REQUEST_FIELDS` maps it back to the request field)."""
    if not isinstance(req, Txt2ImgRequest) or not req.enable_hr:
        return None
    prompt, negative = p.prompt, p.negative_prompt
    if req.hr_prompt or req.hr_negative_prompt:
        texts = (req.hr_prompt or req.prompt or "", req.hr_negative_prompt or req.negative_prompt or "")
        prompt, negative, _ = styles.apply(list(req.styles or []), *texts)
        if not req.disable_extra_networks:
            prompt = strip_other_networks(prompt)
    name = req.hr_upscaler or "Latent"
    return HiresOptions(
        scale=2.0 if req.hr_scale is None else req.hr_scale,
        width=floor_side("hr_resize_x", req.hr_resize_x) if req.hr_resize_x else None,
        height=floor_side("hr_resize_y", req.hr_resize_y) if req.hr_resize_y else None,
        upscaler=name if is_latent(name) else upscalers.get(name, "hr_upscaler", p.upscaler_choices),
        steps=req.hr_second_pass_steps or None,
        strength=0.75 if req.denoising_strength is None else req.denoising_strength,
        prompt=prompt,
        negative_prompt=negative,
        sampler=None if req.hr_sampler_name in (None, *SAME) else req.hr_sampler_name,
        schedule=None if req.hr_scheduler in (None, *SAME) else req.hr_scheduler,
    )
