"""`--ray` and its options, apart from the Ray runner so that the command parses them without touching Ray."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class RayOptions:
    """`--ray`: where the cluster is ("auto": the one this machine belongs to, started with `ray start`; an address;
    "local": a new one in this process), how many actors and how many jobs each call hands one actor."""

    address: str = "auto"
    concurrency: int | None = None  # actors (default: one per GPU, else 1)
    batch_size: int = 1
    on_result: Callable[[dict[str, Any]], None] | None = None  # each job's result on the driver (rows, worker pid)
