"""Timing for the PyTorch peers (run as scripts, so imported as a sibling module): warm-up
calls first, the GPU synchronised before every clock read, as `benchmarks/timing.py`
times rankjax."""

import time

import torch


def seconds(fn, repeats: int, warmup: int = 3) -> list[float]:
    """Wall seconds of each of `repeats` calls of `fn()` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times
