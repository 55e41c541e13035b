"""Prompt styles from a styles.csv in A1111's format (`sd-core serve --styles PATH`), for `styles` in requests and
`/sdapi/v1/prompt-styles`.

The file: UTF-8 (a byte-order mark is fine), a header row `name,prompt,negative_prompt` (A1111's old `name,text`
also reads), one style per row; rows whose name is empty or starts with `#` are skipped. It is read again when it
changes on disk.

Applying styles follows A1111: for each requested style in order, a style text holding `{prompt}` has it replaced by
the prompt so far; any other text is appended as `prompt, style` (empty parts dropped, both sides stripped). The
negative prompt gets the styles' negative texts the same way. A name the file does not have is skipped (A1111 skips
it silently; here it is reported in `info["ignored_styles"]`).
"""

from __future__ import annotations

import csv
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative_prompt: str


def merge(style_text: str, prompt: str) -> str:
    """One style applied to a prompt, as A1111 does."""
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def read_styles(path: Path) -> dict[str, Style]:
    """The styles of one file, in file order (a later row replaces an earlier one of the same name)."""
    styles: dict[str, Style] = {}
    with path.open(encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            name = row.get("name") or ""
            if not name or name.startswith("#"):
                continue
            prompt = row.get("prompt") if "prompt" in row else row.get("text")
            styles[name] = Style(name, prompt or "", row.get("negative_prompt") or "")
    return styles


class StyleFile:
    """The styles of `path` (None: no styles), reloaded when the file's modification time changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._styles: dict[str, Style] = {}

    def styles(self) -> dict[str, Style]:
        if self.path is None:
            return {}
        try:
            stat = self.path.stat()
        except OSError:  # removed since the server started: no styles, as A1111 with no file
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._styles, self._stamp = read_styles(self.path), stamp
            return self._styles

    def items(self) -> list[dict[str, str]]:
        """`/sdapi/v1/prompt-styles`."""
        return [
            {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in self.styles().values()
        ]

    def apply(self, names: list[str], prompt: str, negative: str) -> tuple[str, str, list[str]]:
        """(prompt, negative prompt) with the named styles applied, and the names that were not found."""
        known = self.styles()
        missing = [n for n in names if n not in known]
        for name in names:
            style = known.get(name, Style(name, "", ""))
            prompt, negative = merge(style.prompt, prompt), merge(style.negative_prompt, negative)
        return prompt, negative, missing
