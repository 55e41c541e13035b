"""The one table of A1111 request fields this server does not honour yet, and of those A1111 itself ignores.

A field that would change A1111's image is never dropped silently: while the engine lacks the feature, a request
that sets it to a value other than its default is refused with a 422 naming it (`REFUSED`; a feature that lands
removes its row). A field that A1111 ignores in the same situation (hires-fix settings without `enable_hr`, `eta`
with a sampler that takes none, ...) is accepted and listed in `info["ignored_fields"]` (`IGNORED`), so a client
can see it had no effect here either. Scripts: `SELECTABLE_SCRIPTS` lists the ones implemented (img2img's "SD
upscale", `sd_upscale.py`); any other `script_name` is A1111's 422 "Script '<name>' not found", and any
`alwayson_scripts` entry A1111's 422 naming it.

"Default" is the value in effect when the field is left out, so clients that always send every field (webuiapi) keep
working. The sampler options `eta` and `s_churn`/`s_tmin`/`s_tmax`/`s_noise` go to the samplers A1111 hands them to
(`TAKES`; `sampling_fields.sampler_options`) and are listed as ignored with any other sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sd_core import samplers

from .api_error import ApiError, invalid

# The samplers A1111 hands each option (v1.10: eta to every sampler function with an eta parameter, the same set as
# the engine's; s_churn/s_tmin/s_tmax to Euler, Heun and DPM2; s_noise to those and the ancestral and SDE samplers of
# its `sampler_extra_params`, not to Euler a, DPM adaptive or Restart). Any other sampler ignores the option there.
TAKES_ETA = {name for name in samplers.SAMPLERS if "eta" in samplers.resolve(name).options}
CHURN = {"euler", "heun", "dpm_2"}
S_NOISE = CHURN | {"dpm_fast", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde"}
S_NOISE |= {"dpmpp_2m_sde_heun", "dpmpp_3m_sde"}
TAKES = {"eta": TAKES_ETA, "s_churn": CHURN, "s_tmin": CHURN, "s_tmax": CHURN, "s_noise": S_NOISE}
NO_CHECKPOINT = (None, "", "None", "none")

# Scripts this server implements, by lower-case title (A1111 matches titles case-insensitively).
SELECTABLE_SCRIPTS: dict[str, dict[str, Any]] = {
    "txt2img": {},
    "img2img": {"sd upscale": {"args": ["info", "overlap", "upscaler_index", "scale_factor"]}},  # sd_upscale.py
}
ALWAYSON_SCRIPTS: dict[str, dict[str, Any]] = {"txt2img": {}, "img2img": {}}


@dataclass(frozen=True)
class Context:
    """What the rules need besides the request: the mode, the sampler's canonical name, the output size, the
    settings in effect."""

    kind: str
    sampler: str
    size: tuple[int | None, int | None]
    options: dict[str, Any]


@dataclass(frozen=True)
class Rule:
    field: str
    applies: Callable[[Any, Context], bool]
    why: str


def _set(value: Any, *defaults: Any) -> bool:
    return value is not None and value not in defaults


def _seed_resize(r: Any) -> bool:
    """A1111 resizes the seed's noise when both sizes are above 0."""
    return (r.seed_resize_from_w or 0) > 0 and (r.seed_resize_from_h or 0) > 0


def _option_ignored(name: str, default: Any) -> Rule:
    return Rule(
        name,
        lambda r, c: _set(getattr(r, name), default) and c.sampler not in TAKES[name],
        f"this sampler takes no {name} in A1111",
    )


def _hires(field: str, default: Any) -> Rule:
    return Rule(field, lambda r, c: not r.enable_hr and _set(getattr(r, field), default), "used only with enable_hr")


def _hires_checkpoint(r: Any, c: Context) -> bool:
    return bool(getattr(r, "enable_hr", False)) and r.hr_checkpoint_name not in (*NO_CHECKPOINT, "Use same checkpoint")


def _restore_faces(r: Any, c: Context) -> bool:
    return bool(r.restore_faces) or (r.restore_faces is None and bool(c.options.get("face_restoration")))


def _inpainting(r: Any, c: Context) -> bool:
    return c.kind == "img2img" and r.mask is not None


def _blur_xy(name: str) -> Callable[[Any, Context], bool]:
    """The other direction's blur differs and this one was set: the field to name."""
    return lambda r, c: (
        _inpainting(r, c) and r.mask_blur is None and r.mask_blur_x != r.mask_blur_y and getattr(r, name) != 4
    )


# img2img fields that only inpainting uses, with their defaults
INPAINT_ONLY = {
    "mask_blur": None,
    "mask_blur_x": 4,
    "mask_blur_y": 4,
    "mask_round": True,
    "inpainting_fill": 0,
    "inpaint_full_res": True,
    "inpaint_full_res_padding": 0,
    "inpainting_mask_invert": 0,
    "latent_mask": None,
}


def _without_mask(name: str) -> Rule:
    return Rule(
        name,
        lambda r, c: c.kind == "img2img" and r.mask is None and _set(getattr(r, name), INPAINT_ONLY[name]),
        "used only with a mask",
    )


def _blur_overridden(name: str) -> Rule:
    return Rule(
        name,
        lambda r, c: _inpainting(r, c) and r.mask_blur is not None and _set(getattr(r, name), 4),
        "mask_blur sets both mask_blur_x and mask_blur_y",
    )


LATER = "not supported yet by this server's engine"
REFUSED: tuple[Rule, ...] = (
    Rule("hr_checkpoint_name", _hires_checkpoint, f"a second-pass checkpoint is {LATER}"),
    Rule("s_min_uncond", lambda r, c: _set(r.s_min_uncond, 0), f"negative guidance minimum sigma is {LATER}"),
    Rule("restore_faces", _restore_faces, "face restoration is not available: no face restoration model ships"),
    Rule(
        "resize_mode",
        lambda r, c: _inpainting(r, c) and r.resize_mode == 3,
        f"3 (latent upscale) with a mask is {LATER}",
    ),
    Rule("mask_blur_x", _blur_xy("mask_blur_x"), f"different horizontal and vertical mask blur is {LATER}"),
    Rule("mask_blur_y", _blur_xy("mask_blur_y"), f"different horizontal and vertical mask blur is {LATER}"),
    Rule(
        "latent_mask",
        lambda r, c: _inpainting(r, c) and r.latent_mask is not None,
        f"a separate latent mask is {LATER}",
    ),
)

IGNORED: tuple[Rule, ...] = (
    Rule("subseed", lambda r, c: _set(r.subseed, -1) and not r.subseed_strength, "used only with subseed_strength"),
    *(
        Rule(name, lambda r, c, name=name: _set(getattr(r, name), -1, 0) and not _seed_resize(r), "needs both")
        for name in ("seed_resize_from_w", "seed_resize_from_h")
    ),
    Rule("eta", lambda r, c: r.eta is not None and c.sampler not in TAKES_ETA, "this sampler takes no eta"),
    *(_option_ignored(name, default) for name, default in (("s_churn", 0), ("s_tmin", 0), ("s_tmax", 0))),
    _option_ignored("s_noise", 1),
    Rule(
        "override_settings_restore_afterwards",
        lambda r, c: r.override_settings_restore_afterwards is False and not r.override_settings,
        "no override_settings to keep",
    ),
    Rule(
        "refiner_switch_at",
        lambda r, c: r.refiner_switch_at is not None and r.refiner_checkpoint in NO_CHECKPOINT,
        "used only with a refiner_checkpoint",
    ),
    Rule("image_cfg_scale", lambda r, c: getattr(r, "image_cfg_scale", None) is not None, "instruct-pix2pix only"),
    Rule("firstpass_image", lambda r, c: r.firstpass_image is not None, "used only by txt2img's hires fix"),
    Rule("comments", lambda r, c: bool(r.comments), "A1111 replaces it with its own"),
    Rule("script_args", lambda r, c: bool(r.script_args) and not r.script_name, "used only with a script_name"),
    Rule(
        "resize_mode",
        lambda r, c: (r.script_name or "").lower() == "sd upscale" and _set(getattr(r, "resize_mode", 0), 0),
        "SD upscale enlarges the init image as it is",
    ),
    Rule("do_not_save_samples", lambda r, c: bool(r.do_not_save_samples), "A1111 sets it from save_images"),
    Rule("do_not_save_grid", lambda r, c: bool(r.do_not_save_grid), "A1111 sets it from save_images"),
    Rule("save_images", lambda r, c: bool(r.save_images), "this server never writes images to disk"),
    Rule("force_task_id", lambda r, c: r.force_task_id is not None, "names A1111's internal task only"),
    Rule(
        "denoising_strength",
        lambda r, c: c.kind == "txt2img" and not r.enable_hr and _set(r.denoising_strength, 0.75),
        "txt2img uses it only for hires fix",
    ),
    *(_without_mask(name) for name in INPAINT_ONLY),
    *(_blur_overridden(name) for name in ("mask_blur_x", "mask_blur_y")),
    *(
        _hires(name, default)
        for name, default in (
            ("hr_scale", 2.0),
            ("hr_upscaler", None),
            ("hr_second_pass_steps", 0),
            ("hr_resize_x", 0),
            ("hr_resize_y", 0),
            ("hr_checkpoint_name", None),
            ("hr_sampler_name", None),
            ("hr_scheduler", None),
            ("hr_prompt", ""),
            ("hr_negative_prompt", ""),
        )
    ),
)


def check(req: Any, ctx: Context) -> list[str]:
    """Raise a 422 naming the first field this server cannot honour; return the set fields A1111 also ignores."""
    _check_scripts(req, ctx.kind)
    for rule in REFUSED:
        if rule.applies(req, ctx):
            value = getattr(req, rule.field, None)
            shown = "left out, the settings make it true," if value is None else repr(value)
            raise invalid(rule.field, f"{rule.field}: {shown} is refused: {rule.why}")
    hires = ctx.kind == "txt2img" and not req.enable_hr
    return [rule.field for rule in IGNORED if (hires or not rule.field.startswith("hr_")) and rule.applies(req, ctx)]


def _check_scripts(req: Any, kind: str) -> None:
    name = req.script_name
    if name and name.lower() not in SELECTABLE_SCRIPTS[kind]:
        raise ApiError(422, f"Script '{name}' not found", "script_name")
    for key in req.alwayson_scripts or {}:
        if key.lower() not in ALWAYSON_SCRIPTS[kind]:
            raise ApiError(422, f"always on script {key} not found", f"alwayson_scripts.{key}")


def scripts_list() -> dict[str, list[str]]:
    """`/sdapi/v1/scripts`: the scripts a request may name."""
    return {kind: sorted({*SELECTABLE_SCRIPTS[kind], *ALWAYSON_SCRIPTS[kind]}) for kind in ("txt2img", "img2img")}
