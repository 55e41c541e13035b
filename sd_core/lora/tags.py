"""A1111's LoRA prompt tags: `<lora:name:weight>`, `<lora:name:te:unet>`, named `te=` / `unet=`, `<lyco:...>`.

As A1111's `extra_networks_lora`: the first number is the text encoder's multiplier (default 1), the second the
UNet's (default: the first); `te=`/`unet=` override them. The tag is taken out of the prompt before it is encoded;
only the positive prompt's tags apply (A1111 leaves tags in the negative prompt as text). Names are file names (stems)
or aliases found in the LoRA folders, never paths. `dyn=` (A1111's rank cut) is refused rather than ignored.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

from ..limits import MAX_LORA_WEIGHT, SettingError

TAG = re.compile(r"<(lora|lyco):([^>]+)>")
"""A1111's extra-network tag, for the network types handled here."""


@dataclass(frozen=True)
class LoraTag:
    """One tag: the LoRA's name and its text-encoder and UNet multipliers."""

    name: str
    te: float = 1.0
    unet: float = 1.0

    @property
    def text(self) -> str:
        """The tag as A1111 writes it (one number when both multipliers are equal)."""
        numbers = f"{self.te:g}" if self.te == self.unet else f"{self.te:g}:{self.unet:g}"
        return f"<lora:{self.name}:{numbers}>"


def check_name(name: str, setting: str = "prompt") -> str:
    """A LoRA name from a prompt or a request: a file name, never a path (`../`, `/`, `\\`, drive letters)."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or ":" in name or name != name.strip():
        raise SettingError(setting, f"{setting}: LoRA name {name!r} is not a plain name (names only, no paths)")
    return name


def multiplier(text: object, what: str, setting: str = "prompt") -> float:
    """A multiplier from a tag's text or a number: finite, at most `limits.MAX_LORA_WEIGHT` in size."""
    try:
        if isinstance(text, bool):
            raise TypeError
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SettingError(setting, f"{setting}: {what} {text!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > MAX_LORA_WEIGHT:
        raise SettingError(setting, f"{setting}: {what} {text!r} must be finite, at most {MAX_LORA_WEIGHT:g} in size")
    return value


def parse_tag(body: str, setting: str = "prompt") -> LoraTag:
    """The part after `<lora:` of a tag, up to `>`."""
    positional, named = [], {}
    for item in body.split(":"):
        key, sep, value = item.partition("=")
        if sep:
            named[key.strip()] = value.strip()
        else:
            positional.append(item.strip())
    if not positional or not positional[0]:
        raise SettingError(setting, f"{setting}: <lora:{body}> names no LoRA")
    name = check_name(positional[0], setting)
    unknown = sorted(set(named) - {"te", "unet"})
    if unknown or len(positional) > 3:
        extra = unknown[0] + "=" if unknown else positional[3]
        raise SettingError(setting, f"{setting}: <lora:{body}>: {extra!r} is not supported (only te and unet)")
    te = multiplier(positional[1], "text encoder weight", setting) if len(positional) > 1 else 1.0
    te = multiplier(named["te"], "te", setting) if "te" in named else te
    unet = multiplier(positional[2], "UNet weight", setting) if len(positional) > 2 else te
    unet = multiplier(named["unet"], "unet", setting) if "unet" in named else unet
    return LoraTag(name, te, unet)


def split_tags(prompt: str, setting: str = "prompt") -> tuple[str, list[LoraTag]]:
    """The prompt without its LoRA tags, and the tags in order."""
    tags = [parse_tag(m[2], setting) for m in TAG.finditer(prompt)]
    return TAG.sub("", prompt), tags


def strip_tags(prompt: str) -> str:
    """The prompt as it is encoded: LoRA tags removed."""
    return TAG.sub("", prompt)


def check_loras(loras: Any) -> tuple[LoraTag, ...]:
    """`loras` as a tuple of `LoraTag`: from a mapping {name or path: weight or (te, unet)} or a sequence of tags or
    (name, weight) pairs. Names are checked when the LoRA is looked up (`sd_core.extra_networks`)."""
    if isinstance(loras, dict):
        items = list(loras.items())
    elif isinstance(loras, (list, tuple)):
        items = [(x.name, (x.te, x.unet)) if isinstance(x, LoraTag) else x for x in loras]
    else:
        raise SettingError("loras", f"loras must be a mapping of names to weights, got {type(loras).__name__}")
    out = []
    for item in items:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise SettingError("loras", f"loras: {item!r} is not a (name, weight) pair")
        name, weight = item
        name = os.fspath(name) if isinstance(name, os.PathLike) else name
        if not isinstance(name, str) or not name.strip():
            raise SettingError("loras", f"loras: {name!r} is not a LoRA name or file")
        te, unet = weight if isinstance(weight, (list, tuple)) and len(weight) == 2 else (weight, weight)
        what = f"weight of {name}"
        out.append(LoraTag(name, multiplier(te, what, "loras"), multiplier(unet, what, "loras")))
    return tuple(out)
