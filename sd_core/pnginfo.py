"""A1111 generation parameters: the `parameters` PNG text chunk that tools across the ecosystem read and write.

Format: the prompt, an optional `Negative prompt: ...` line, then one line of `Key: value` pairs separated by ", ".
Values containing `,`, `:` or `"` are written as JSON strings.

Numbers as A1111 writes them: `str()` of the value (its settings are Python floats parsed from JSON or typed in the
UI, so 0.6 reads "0.6" and 7.0 "7.0"). A float that went through single precision on its way here (a Blender
FloatProperty, a float32 tensor) holds 0.6000000238418579; it is written as the shortest decimal that gives the same
float32, i.e. what the user typed ("0.6"), never as the double's 17 digits (`format_value`).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from typing import Any

from PIL import Image, PngImagePlugin

NEGATIVE = "Negative prompt: "


def _as_float32(value: float) -> float | None:
    """`value` if it is exactly a float32 (then it may have come through single precision), else None."""
    try:
        same = struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return None
    return same if same == value else None


def format_value(value: Any) -> str:
    """A value as the infotext shows it: `str()`, except that a float that is exactly a float32 is written as the
    shortest decimal reading back as that float32 (0.6000000238418579 -> "0.6"; 0.75, 7.0, 3.0 unchanged)."""
    if isinstance(value, float) and math.isfinite(value) and _as_float32(value) is not None:
        for digits in range(1, 10):  # 9 significant digits always round-trip a float32
            short = float(f"{value:.{digits}g}")
            if struct.pack("<f", short) == struct.pack("<f", value):
                return str(short)
    return str(value)


def _quote(value: Any) -> str:
    text = format_value(value)
    if any(c in text for c in ',:"\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


def format_parameters(prompt: str, negative_prompt: str, settings: Mapping[str, Any]) -> str:
    """The A1111 text for a generation; `settings` keep their order (Steps, Sampler, ...); None values are left out."""
    lines = [prompt]
    if negative_prompt:
        lines.append(NEGATIVE + negative_prompt)
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in settings.items() if v is not None))
    return "\n".join(lines)


_JSON = json.JSONDecoder()
_KEY_CHARS = re.compile(r"[\w /+\-.()]+")


def _settings_pairs(line: str) -> list[tuple[str, Any]] | None:
    """`Key: value, Key: "quoted, value"` pairs in one linear pass, or None if the line is not of that shape."""
    pairs: list[tuple[str, Any]] = []
    i, n = 0, len(line)
    while i < n:
        colon = line.find(":", i)
        if colon < 0:
            return None
        key = line[i:colon].strip()
        if not key or not _KEY_CHARS.fullmatch(key):
            return None
        i = colon + 1
        while i < n and line[i] == " ":
            i += 1
        if i < n and line[i] == '"':
            try:
                value, i = _JSON.raw_decode(line, i)
            except ValueError:
                return None
        else:
            comma = line.find(",", i)
            end = n if comma < 0 else comma
            value, i = line[i:end].strip(), end
        pairs.append((key, value))
        while i < n and line[i] == " ":
            i += 1
        if i < n:
            if line[i] != ",":
                return None
            i += 1
            while i < n and line[i] == " ":
                i += 1
    return pairs


def parse_parameters(text: str) -> dict[str, Any]:
    """Inverse of `format_parameters`: {"prompt", "negative_prompt", and each key as a string}.

    As A1111, the last line counts as the settings line only when it holds at least 3 `Key: value` pairs, so a
    prompt like "a cat: cute" stays a prompt. Linear in the text's length.
    """
    lines = text.strip("\n").split("\n")
    pairs = _settings_pairs(lines[-1]) if len(lines) > 0 else None
    if pairs is None or len(pairs) < 3:
        pairs = []
    body = lines[:-1] if pairs else lines
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in body:
        if line.startswith(NEGATIVE):
            in_negative = True
            line = line[len(NEGATIVE) :]
        (negative_lines if in_negative else prompt_lines).append(line)
    out: dict[str, Any] = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines)}
    out.update(pairs)
    return out


def pnginfo_for(parameters: str) -> PngImagePlugin.PngInfo:
    """PngInfo holding the `parameters` text chunk, for `Image.save(..., pnginfo=...)`."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    return info


def read_parameters(image: Image.Image) -> str | None:
    """The `parameters` text of a PNG opened with PIL, or None."""
    return image.info.get("parameters") or getattr(image, "text", {}).get("parameters")
