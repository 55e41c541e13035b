"""The batch's progress line on stderr: images done of the total, images/s and the time left at that rate."""

from __future__ import annotations

import sys
import time
from typing import Any


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts images as they are written. On a terminal one line redrawn in place; elsewhere (a log, a CI) a line at
    most every 5 s, and one when the last image is written. The rate counts from the first `start` (after the model
    is loaded), so loading does not skew the ETA."""

    def __init__(self, total: int, skipped: int = 0, stream: Any = None, label: str = "batch") -> None:
        self.total, self.skipped, self.done = total, skipped, 0
        self.stream = stream or sys.stderr
        self.label = label
        self.started: float | None = None
        self.shown: float | None = None  # when a line was last written
        self.every = 5.0  # seconds between lines when stderr is not a terminal

    def start(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    def line(self) -> str:
        elapsed = time.monotonic() - (self.started or time.monotonic())
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        eta = _duration(left / rate) if rate > 0 else "?"
        skipped = f" ({self.skipped} already made)" if self.skipped else ""
        return f"{self.label}: {self.done}/{self.total} images{skipped}, {rate:.2f} images/s, ETA {eta}"

    def advance(self, images: int) -> None:
        self.start()
        self.done += images
        tty = self.stream.isatty()
        now, last = time.monotonic(), self.shown
        if not tty and self.done < self.total and last is not None and now - last < self.every:
            return  # a log gets a line every `every` seconds, and the last
        self.shown = now
        end = "\n" if not tty or self.done >= self.total else ""
        self.stream.write(("\r" if tty else "") + self.line() + end)
        self.stream.flush()
