"""A generation request's text and numbers as A1111 reads them, before any image is touched.

- `infotext` (an A1111 parameters text) fills the fields the request leaves out, and the settings it names become
  override settings, as A1111's `apply_infotext` does (its "Model hash" is skipped, as with A1111's default
  `disable_weights_auto_swap`).
- `styles` are applied from the server's styles.csv (`styles.py`).
- Extra-network tags: `<lora:name:te:unet>` (and `<lyco:...>`) stay in the prompt for the engine, which applies the
  LoRA from `--lora-dir` and takes the tag out before encoding (`sd_core.extra_networks`; a name that is a path or not
  in the folders is a 422 naming it). Other kinds (`<hypernet:...>`) are taken out, as A1111 does before encoding,
  and listed in `info["ignored_extra_networks"]` (none are loaded here). With `disable_extra_networks` every tag stays
  in the prompt as text, as in A1111.
- width and height are floored to multiples of 8 (A1111 works on 8x8 latent cells, so its images come out that
  size); below 8 (one latent, `sd_core.limits.MIN_SIDE`) they are refused.
- `override_settings`: the honoured settings (`options.PER_REQUEST`; the model is chosen by `generate.py`) apply to
  this request; any other key is listed in `info["ignored_override_settings"]` and the request goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from sd_core import limits
from sd_core.lora import split_tags
from sd_core.pnginfo import parse_parameters

from . import options, upscalers
from .a1111_options import DEFAULTS
from .api_error import invalid
from .schemas import GenerationRequest, Txt2ImgRequest
from .styles import StyleFile

EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # A1111's extra-network tag
LORA_KINDS = ("lora", "lyco")  # the tags the engine applies (`sd_core.lora.tags`)


def strip_other_networks(prompt: str) -> str:
    """The prompt without the extra-network tags of kinds the engine does not apply (LoRA tags stay)."""
    return EXTRA_NETWORK.sub(lambda m: m[0] if m[1] in LORA_KINDS else "", prompt)


# infotext label -> request field and how to read its text
INFOTEXT_FIELDS: dict[str, tuple[str, type]] = {
    "Steps": ("steps", int),
    "Sampler": ("sampler_name", str),
    "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Batch size": ("batch_size", int),
    "Denoising strength": ("denoising_strength", float),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Mask blur": ("mask_blur", int),
    "Hires upscale": ("hr_scale", float),
    "Hires upscaler": ("hr_upscaler", str),
    "Hires steps": ("hr_second_pass_steps", int),
    "Hires sampler": ("hr_sampler_name", str),
    "Hires schedule type": ("hr_scheduler", str),
    "Hires prompt": ("hr_prompt", str),
    "Hires negative prompt": ("hr_negative_prompt", str),
}
# infotext label -> the A1111 setting it overrides
INFOTEXT_SETTINGS = {
    "Clip skip": "CLIP_stop_at_last_layers",
    "Face restoration": "face_restoration",
    "RNG": "randn_source",
    "Emphasis": "emphasis",
    "VAE": "sd_vae",
    "VAE Encoder": "sd_vae_encode_method",
    "VAE Decoder": "sd_vae_decode_method",
    "Conditional mask weight": "inpainting_mask_weight",
    "Noise multiplier": "initial_noise_multiplier",
    "Extra noise": "img2img_extra_noise",
    "NGMS": "s_min_uncond",
    "Token merging ratio": "token_merging_ratio",
    "Token merging ratio hr": "token_merging_ratio_hr",
    "Pad conds": "pad_cond_uncond",
    "Eta DDIM": "eta_ddim",
    "Eta": "eta_ancestral",
    "Sigma churn": "s_churn",
    "Sigma tmin": "s_tmin",
    "Sigma tmax": "s_tmax",
    "Sigma noise": "s_noise",
    "Schedule min sigma": "sigma_min",
    "Schedule max sigma": "sigma_max",
    "Schedule rho": "rho",
    "ENSD": "eta_noise_seed_delta",
    "Discard penultimate sigma": "always_discard_next_to_last_sigma",
    "UniPC variant": "uni_pc_variant",
    "Noise Schedule": "sd_noise_schedule",
    "Skip Early CFG": "skip_early_cond",
}
HIRES_LABELS = ("Hires upscale", "Hires upscaler", "Hires resize")
SEED_RESIZE = ("seed_resize_from_w", "seed_resize_from_h")


@dataclass
class Prepared:
    """The request's values as the generation uses them, and what had no effect."""

    request: GenerationRequest
    prompt: str  # what the engine encodes: styled, extra-network tags removed
    negative_prompt: str
    shown_prompt: str  # styled, tags kept: A1111's `info.prompt` and infotext
    width: int | None
    height: int | None
    settings: dict[str, Any]  # the settings in effect: the store's, with this request's honoured overrides
    overrides: dict[str, Any]  # the honoured overrides (stored afterwards unless restore_afterwards)
    ignored: dict[str, list[str]] = field(default_factory=dict)
    upscaler_choices: upscalers.Upscalers = upscalers.BUILTIN  # the upscalers this request may name (the server's)


def _cast(text: str, kind: type) -> Any:
    if kind is bool:
        return text != "False"
    return kind(text)


def apply_infotext(req: GenerationRequest) -> GenerationRequest:
    """The request with the fields it leaves out taken from its `infotext`; 422 if the text holds a bad value."""
    if not req.infotext:
        return req
    params = parse_parameters(req.infotext)
    given = req.model_fields_set
    update: dict[str, Any] = {}
    for key in ("prompt", "negative_prompt"):
        if key not in given and params.get(key):
            update[key] = params[key]
    try:
        for label, (name, kind) in INFOTEXT_FIELDS.items():
            if label in params and name not in given and name in type(req).model_fields:
                update[name] = _cast(params[label], kind)
        for label, names in (("Size", ("width", "height")), ("Seed resize from", SEED_RESIZE)):
            size = re.fullmatch(r"(\d+)x(\d+)", str(params.get(label, "")))
            if size and not given & set(names) and names[0] in type(req).model_fields:
                update[names[0]], update[names[1]] = int(size[1]), int(size[2])
        resize = re.fullmatch(r"(\d+)x(\d+)", str(params.get("Hires resize", "")))
        if resize and isinstance(req, Txt2ImgRequest) and not {"hr_resize_x", "hr_resize_y"} & given:
            update["hr_resize_x"], update["hr_resize_y"] = int(resize[1]), int(resize[2])
        if "Tiling" in params and "tiling" not in given:
            tiling = params["Tiling"]
            update["tiling"] = tiling if tiling in ("x", "y", "xy") else tiling != "False"
        if isinstance(req, Txt2ImgRequest) and "enable_hr" not in given:
            update["enable_hr"] = "Denoising strength" in params and any(k in params for k in HIRES_LABELS)
        overrides = dict(req.override_settings or {})
        for label, key in INFOTEXT_SETTINGS.items():
            if label in params and key not in overrides:
                overrides[key] = _cast(params[label], type(DEFAULTS[key]))
    except ValueError as exc:
        raise invalid("infotext", f"infotext: a value could not be read: {exc}") from None
    if overrides:
        update["override_settings"] = overrides
    try:
        return type(req).model_validate({**req.model_dump(exclude_unset=True), **update})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise invalid("infotext", f"infotext: {where}: {first['msg']}") from None


def floor_side(name: str, value: int | None) -> int | None:
    """A width or height as A1111 makes it: floored to a multiple of 8; below the engine's smallest size, a 422."""
    if value is None:
        return None
    floored = value // limits.SIDE_MULTIPLE * limits.SIDE_MULTIPLE
    if floored < limits.MIN_SIDE:
        raise invalid(
            name,
            f"{name}: {value} (floored to a multiple of 8: {floored}) is below {limits.MIN_SIDE}, the smallest size "
            "this engine generates",
        )
    return floored


def split_overrides(
    req: GenerationRequest, store: dict[str, Any], choices: upscalers.Upscalers = upscalers.BUILTIN
) -> tuple[dict[str, Any], list[str]]:
    """The honoured overrides (checked: 422 naming `override_settings.KEY`; upscalers among `choices`), and the keys
    that change nothing here."""
    honoured, ignored = {}, []
    for key, value in (req.override_settings or {}).items():
        if key in options.PER_REQUEST:
            options.check_value(key, value, f"override_settings.{key}", choices)
            honoured[key] = DEFAULTS[key] if value is None else value
        elif key != options.CHECKPOINT and store.get(key, object()) != value:
            ignored.append(key)
    return honoured, ignored


def prepare(
    req: GenerationRequest,
    store: dict[str, Any],
    styles: StyleFile,
    choices: upscalers.Upscalers = upscalers.BUILTIN,
) -> Prepared:
    """Everything about a request that needs no image and no model (raises ApiError naming the field); upscaler
    names are looked up in `choices` (the server's upscalers)."""
    req = apply_infotext(req)
    prompt, negative, missing = styles.apply(list(req.styles or []), req.prompt or "", req.negative_prompt or "")
    shown = prompt
    networks: list[str] = []
    if not req.disable_extra_networks:
        try:
            split_tags(prompt)  # the LoRA tags' names and weights checked now, before the queue
        except limits.SettingError as exc:
            raise invalid("prompt", str(exc)) from None
        networks = [m[0].strip("<>") for m in EXTRA_NETWORK.finditer(prompt) if m[1] not in LORA_KINDS]
        prompt = strip_other_networks(prompt)
    for name, text in (("prompt", prompt), ("negative_prompt", negative)):
        if len(text) > limits.MAX_PROMPT_CHARS:
            raise invalid(
                name, f"{name}: {len(text)} characters with its styles; the limit is {limits.MAX_PROMPT_CHARS}"
            )
    given = req.model_fields_set
    width = floor_side("width", req.width) if "width" in given else None
    height = floor_side("height", req.height) if "height" in given else None
    honoured, ignored_keys = split_overrides(req, store, choices)
    prepared = Prepared(
        req, prompt, negative, shown, width, height, {**store, **honoured}, honoured, upscaler_choices=choices
    )
    for key, names in (
        ("ignored_override_settings", ignored_keys),
        ("ignored_styles", missing),
        ("ignored_extra_networks", networks),
    ):
        if names:
            prepared.ignored[key] = names
    return prepared
