"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def _sync(device: Any = None) -> None:
    import torch

    if torch.cuda.is_available() and (device is None or torch.device(device).type != "cpu"):
        torch.cuda.synchronize()


def measure(fn: Callable[[], Any], *, warmup: int = 1, repeat: int = 3, min_time_s: float = 0.0,
            device: Any = None) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times untimed, then at least ``repeat`` times (and at least ``min_time_s`` seconds).

    Returns seconds per call: median, min and the number of timed calls.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    total = 0.0
    while len(times) < repeat or total < min_time_s:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    return {"median_s": statistics.median(times), "min_s": min(times), "calls": len(times)}
