"""Wall-clock timing for the benchmark scripts (never used in tests)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["time_ms"]


def time_ms(fn: Callable[[], object], reps: int = 5) -> float:
    """Mean milliseconds per call of ``fn`` over ``reps`` calls, after one warm-up call.

    Synchronises CUDA before and after, so GPU work is timed rather than queued.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t0) / reps
