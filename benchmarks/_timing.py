"""Timing shared by the benchmarks that compare several variants of one training step."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)


def interleaved_step_times(steps: dict[Key, Callable[[], None]], warmup: int, repeats: int) -> dict[Key, list[float]]:
    """Seconds of each of ``repeats`` calls of every step, after ``warmup`` untimed calls each. The steps take
    turns call by call, so that load from other processes on a shared machine hits them alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[Key, list[float]] = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - start)
    return times
