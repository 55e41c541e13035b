"""The machinery every training stage shares: a resumable state file (`Stage`, atomic saves, the RNG states), the
step loop, the progress line and the learning-rate schedule. Why one place: a stopped run must continue exactly
where it stopped, and that holds only if every stage saves and restores the same things in the same way."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig

StepHook = Callable[[int, float], None]
"""Called after each optimiser step with the stage's step number and the loss it reports."""


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary name, then rename: a stop mid-write never corrupts the last good state."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_state(path: Path, init: str | None = None) -> dict | None:
    """The saved state at `path`, if any. `init`: the run's starting checkpoint, which must be the one the state was
    made from (a state left in `--out` by a run from another checkpoint would silently replace the new start)."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state.get("config", {}).get("init")
    if saved != init:
        raise ValueError(f"{path} was saved by a run that started from {saved!r}, not {init!r}: use a new --out")
    return state


def rng_state() -> dict:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])


def _snapshot(part: Any) -> Any:
    if isinstance(part, torch.Generator):
        return part.get_state()
    return part.state_dict() if hasattr(part, "state_dict") else part.state()


def _restore(part: Any, value: Any) -> None:
    if isinstance(part, torch.Generator):
        part.set_state(value)
    elif hasattr(part, "load_state_dict"):
        part.load_state_dict(value)
    else:
        part.load_state(value)


class Stage:
    """One resumable training stage: its state file (`out/<name>_state.pt`), progress, periodic saves.

    `kept` parts (the trained weights, and what later stages read on, like the data stream) are restored even from a
    finished stage's file; `running` parts (optimiser, generators) and the global torch RNG only to continue it.
    Parts are modules, optimisers, EMAs (`state_dict`), data sources (`state`) or `torch.Generator`s."""

    def __init__(
        self,
        name: str,
        out: Path,
        cfg: TrainConfig,
        total: int,
        kept: dict[str, Any],
        running: dict[str, Any],
        on_step: StepHook | None = None,
    ) -> None:
        self.path = out / f"{name}_state.pt"
        self.cfg, self.total, self.kept, self.running, self.on_step = cfg, total, kept, running, on_step
        self.label = name[:4].ljust(4)
        self.step = 0

    def resume(self) -> bool:
        """Restore the saved state, if any; True when the stage had already finished."""
        state = load_state(self.path, self.cfg.init)
        if state is not None:
            for key, part in self.kept.items():
                _restore(part, state[key])
            if state.get("done"):
                return True
            for key, part in self.running.items():
                _restore(part, state[key])
            set_rng_state(state["rng"])
            self.step = state["step"]
        self.progress = Progress(self.label, self.total, self.step, self.cfg.log_every)
        return False

    def save(self, done: bool = False) -> None:
        parts = {key: _snapshot(part) for key, part in {**self.kept, **self.running}.items()}
        atomic_save(
            {"step": self.step, **parts, "rng": rng_state(), "done": done, "config": asdict(self.cfg)}, self.path
        )

    def advance(self, loss: float) -> None:
        """One optimiser step done: count it, report it, save every `save_every` steps."""
        self.step += 1
        self.progress.update(self.step, loss)
        if self.on_step is not None:
            self.on_step(self.step, loss)
        if self.step % self.cfg.save_every == 0 and self.step < self.total:
            self.save()

    def train(
        self,
        opt: torch.optim.Optimizer,
        lr: Callable[[int], float],
        step_loss: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
        after_step: Callable[[], None] | None = None,
    ) -> None:
        """The step loop of every stage, up to `total` steps: set the learning rate `lr(step)` (times the parameter
        group's `scale`, where it has one), take `step_loss(step)` on a fresh batch (the loss to minimise and the one
        to report), one optimiser step, `after_step` (an EMA update), then `advance`."""
        while self.step < self.total:
            for group in opt.param_groups:
                group["lr"] = lr(self.step) * group.get("scale", 1.0)
            loss, reported = step_loss(self.step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()
            self.advance(float(reported.detach()))


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, one line every `log_every` steps otherwise
    (so a `nohup` log stays readable). Shows the running mean loss, seconds per step and the time left."""

    def __init__(self, label: str, total: int, start: int, log_every: int, stream: Any = None) -> None:
        self.label, self.total, self.start, self.log_every = label, total, start, max(1, log_every)
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()
        self.losses: list[float] = []

    def update(self, step: int, loss: float) -> None:
        self.losses.append(loss)
        tty = getattr(self.stream, "isatty", lambda: False)()
        if not (tty or step % self.log_every == 0 or step == self.total):
            return
        done = step - self.start
        rate = (time.monotonic() - self.t0) / max(done, 1)
        left = rate * (self.total - step)
        recent = self.losses[-self.log_every :]
        filled = int(25 * step / max(self.total, 1))
        line = (
            f"{self.label} [{'#' * filled}{'.' * (25 - filled)}] {step}/{self.total} "
            f"loss {sum(recent) / len(recent):.4f} {rate:.2f}s/it eta {int(left // 60)}:{int(left % 60):02d}"
        )
        self.stream.write(("\r" + line if tty else line + "\n") + ("\n" if tty and step == self.total else ""))
        self.stream.flush()


def lr_at(step: int, total: int, base: float, warmup: int, shape: str = "cosine") -> float:
    """Linear warm-up, then cosine decay to a tenth of the base rate, or constant (`shape="constant"`: a run can
    then be extended by resuming with more steps and match a longer run from the start)."""
    if step < warmup:
        return base * (step + 1) / warmup
    if shape == "constant":
        return base
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def draw_seamless_axes(prob: float, gen: torch.Generator) -> str | None:
    """ "xy" for a share `prob` of training batches, else None (no draw at all when `prob` is 0, so runs without
    the option stay bit-identical). Why: a network trained only with zero padding learns to lean on the image border
    (at 64 px, with 8x8 latents, most positions are near one); with circular padding (`tiling="xy"`) such a model
    draws the right patterns in the wrong colours. Procedural textures wrap, so they can be learned both ways."""
    if prob <= 0:
        return None
    return "xy" if float(torch.rand((), generator=gen)) < prob else None
