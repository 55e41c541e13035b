"""A1111 generation parameters: the `parameters` PNG text chunk that tools across the ecosystem read and write.

Format: the prompt, an optional `Negative prompt: ...` line, then one line of `Key: value` pairs separated by ", ".
Values containing `,`, `:` or `"` are written as JSON strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from PIL import Image, PngImagePlugin

NEGATIVE = "Negative prompt: "


def _quote(value: Any) -> str:
    text = str(value)
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


_PAIR = re.compile(r'\s*([\w /+\-.()]+?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict[str, Any]:
    """Inverse of `format_parameters`: {"prompt", "negative_prompt", and each key as a string}."""
    lines = text.strip("\n").split("\n")
    settings_line = lines[-1] if len(lines) > 1 and _PAIR.match(lines[-1]) else ""
    body = lines[:-1] if settings_line else lines
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in body:
        if line.startswith(NEGATIVE):
            in_negative = True
            line = line[len(NEGATIVE):]
        (negative_lines if in_negative else prompt_lines).append(line)
    out: dict[str, Any] = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines)}
    for key, value in _PAIR.findall(settings_line):
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key.strip()] = value.strip() if isinstance(value, str) else value
    return out


def pnginfo_for(parameters: str) -> PngImagePlugin.PngInfo:
    """PngInfo holding the `parameters` text chunk, for `Image.save(..., pnginfo=...)`."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    return info


def read_parameters(image: Image.Image) -> str | None:
    """The `parameters` text of a PNG opened with PIL, or None."""
    return image.info.get("parameters") or getattr(image, "text", {}).get("parameters")
