"""`/sdapi/v1/options`: a store of every setting AUTOMATIC1111 defines, with A1111's defaults (`a1111_options.py`).

GET returns them all; POST writes them and they read back, as in A1111. What this server honours:

| key | effect |
|---|---|
| `sd_model_checkpoint` | the selected model (a POST switches it; GET shows the current one) |
| `sd_checkpoint_hash` | read only: the current model's SHA-256 once it has been hashed |
| `CLIP_stop_at_last_layers` | clip skip of requests that do not override it (1 to 12) |
| `tiling` | tiling of requests that leave `tiling` out or null |
| `face_restoration` | `restore_faces` of requests that leave it out or null (true is refused: no face model ships) |
| `enable_pnginfo` | whether generated PNGs carry the `parameters` text |
| `live_previews_enable` | whether `/progress` sends `current_image` |
| `img2img_background_color` | the colour transparent parts of init images are flattened onto |
| `upscaler_for_img2img` | the upscaler (pixel, or a model of `--upscaler-dir`) enlarging init images (modes 0-2) |
| `eta_ancestral`, `eta_ddim` | eta of requests that leave `eta` out (k-diffusion samplers; DDIM and DDIM CFG++) |
| `s_churn`, `s_tmin`, `s_tmax`, `s_noise` | A1111's: one not at the sampler's default replaces the request's |
| `initial_noise_multiplier` | img2img's noise multiplier for requests that leave it out |

Every other key is stored and read back but changes nothing here (this server never writes files, has no UI, ...).
`sd_core_model_defaults` (not an A1111 key) reports what a request that leaves `cfg_scale`, `width` or `height` out
gets from the current model, and its `sizes`: the [width, height] choices the plugins offer for it (SDXL's training
sizes for SDXL models); it is read only.

Writes follow A1111 where it is strict and where it is lenient: a key A1111 does not define is refused (A1111 fails
with KeyError; here it is a 422 naming the key, and nothing of that POST is applied), the API-restricted keys
(`api_enable_requests`, `api_forbid_local_requests`, `api_useragent`) are accepted and left unchanged. Values must
have the type of A1111's default (a number for a number, a list for a list, ...); null resets a key to its default.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from PIL import ImageColor

from sd_core import limits

from . import upscalers
from .a1111_options import DEFAULTS, RESTRICTED
from .api_error import ApiError, invalid

CHECKPOINT = "sd_model_checkpoint"
CLIP_SKIP = "CLIP_stop_at_last_layers"
MODEL_DEFAULTS = "sd_core_model_defaults"
READ_ONLY = frozenset({"sd_checkpoint_hash", MODEL_DEFAULTS})


def _check_clip_skip(value: Any) -> None:
    limits.check_int(CLIP_SKIP, value, limits.MIN_CLIP_SKIP, limits.MAX_CLIP_SKIP)


def _check_colour(value: Any) -> None:
    try:
        ImageColor.getrgb(value)
    except ValueError:
        raise limits.SettingError("img2img_background_color", f"not a colour: {value!r}") from None


def _check_number(name: str, high: float) -> Callable[[Any], None]:
    return lambda value: limits.check_number(name, value, 0.0, high)


# key -> check of a value the server will act on (raises limits.SettingError or ApiError)
HONOURED: dict[str, Callable[[Any], None] | None] = {
    CHECKPOINT: None,  # resolved against the models folder by the caller
    CLIP_SKIP: _check_clip_skip,
    "tiling": None,
    "face_restoration": None,
    "enable_pnginfo": None,
    "live_previews_enable": None,
    "img2img_background_color": _check_colour,
    "upscaler_for_img2img": None,  # checked against the server's upscalers (`check_value`)
    "eta_ancestral": _check_number("eta_ancestral", limits.MAX_ETA),
    "eta_ddim": _check_number("eta_ddim", limits.MAX_ETA),
    "s_churn": _check_number("s_churn", limits.MAX_S_CHURN),
    "s_tmin": _check_number("s_tmin", limits.MAX_S_SIGMA),
    "s_tmax": _check_number("s_tmax", limits.MAX_S_SIGMA),
    "s_noise": _check_number("s_noise", limits.MAX_S_NOISE),
    "initial_noise_multiplier": _check_number("initial_noise_multiplier", limits.MAX_NOISE_MULTIPLIER),
}


PER_REQUEST = frozenset(HONOURED) - {CHECKPOINT, "live_previews_enable"}
"""The honoured settings a request's `override_settings` applies to itself (besides the model)."""


def _same_kind(default: Any, value: Any) -> bool:
    """A1111 stores whatever it is sent; this store keeps a value of the default's kind (or a string where A1111's
    default is null), so that what reads back is something A1111's clients can use."""
    if default is None:
        return isinstance(value, str)
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return limits.is_number(value)
    return isinstance(value, type(default))


def check_value(
    key: str, value: Any, field: str | None = None, choices: upscalers.Upscalers = upscalers.BUILTIN
) -> None:
    """Raise a 422 naming `field` (default: the key) unless `value` can be stored under `key`; an upscaler name
    must be one of `choices` (the server's upscalers; default: the pixel ones)."""
    field = field or key
    if key in READ_ONLY or key in RESTRICTED:
        return
    if key not in DEFAULTS:
        raise invalid(field, f"{field}: AUTOMATIC1111 defines no setting {key!r}")
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid(field, f"{field}: NaN and Infinity are not allowed")
    default = DEFAULTS[key]
    if not _same_kind(default, value) and key != CHECKPOINT:
        kind = "a string" if default is None else f"of the type of its default ({type(default).__name__})"
        raise invalid(field, f"{field}: must be {kind}, got {value!r}")
    if key == "upscaler_for_img2img":
        upscalers.get(value, field, choices)
    check = HONOURED.get(key)
    if check is not None:
        try:
            check(value)
        except limits.SettingError as exc:
            raise invalid(field, f"{field}: {exc}") from None
        except ApiError as exc:
            raise invalid(field, f"{field}: {exc.detail}") from None


class OptionStore:
    """The current settings; thread-safe. The selected model lives in the model manager, not here. `choices()`
    gives the upscalers a written `upscaler_for_img2img` must name (default: the pixel ones)."""

    def __init__(self, choices: Callable[[], upscalers.Upscalers] | None = None) -> None:
        self._choices = choices
        self._lock = threading.Lock()
        self._values: dict[str, Any] = dict(DEFAULTS)

    def get(self, key: str) -> Any:
        with self._lock:
            return self._values[key]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def check(self, updates: Mapping[str, Any]) -> dict[str, Any]:
        """The updates this store will apply (checked, read-only and restricted keys dropped); 422 on any bad one."""
        choices = self._choices() if self._choices is not None else upscalers.BUILTIN
        for key, value in updates.items():
            check_value(key, value, choices=choices)
        return {k: v for k, v in updates.items() if k not in READ_ONLY and k not in RESTRICTED}

    def apply(self, updates: Mapping[str, Any]) -> None:
        """Store checked updates (`check`); null restores a key's default."""
        with self._lock:
            for key, value in updates.items():
                if key in DEFAULTS and key not in READ_ONLY and key not in RESTRICTED:
                    self._values[key] = DEFAULTS[key] if value is None else value

    def as_dict(self, title: str, sha256: str | None, model_defaults: Any) -> dict[str, Any]:
        """Every key, with the current model's title and hash filled in."""
        out = self.snapshot()
        out[CHECKPOINT] = title
        out["sd_checkpoint_hash"] = sha256 or ""
        out[MODEL_DEFAULTS] = dataclasses.asdict(model_defaults)
        return out
