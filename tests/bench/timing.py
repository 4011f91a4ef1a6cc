"""Timing shared by the CPU benchmarks (tests/bench is on sys.path under pytest, as tests/ is for checkpoints.py)."""

import statistics
import time


def timed(fns: dict, repeats: int) -> dict:
    """Median seconds of each zero-argument callable, alternating between them, after one warm-up call each."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up: oneDNN primitive caches, allocator
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}
