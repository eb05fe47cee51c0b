"""Wall-clock timing with warm-up and adaptive repeats.

CPU: ``time.perf_counter`` around each call. CUDA: a pair of events per call and a
synchronize, so the figure is device time of the whole call. Repeats continue until the
spread settles (IQR / median below ``settle_rel`` over at least ``settle_min`` samples) or the
time budget is spent, and never fewer than ``min_repeats``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class TimingStats:
    median_ms: float
    iqr_ms: float
    min_ms: float
    repeats: int
    samples_ms: list[float] = field(repr=False)


MAX_STORED_SAMPLES = 256


def compact_samples(samples_ms: list[float], keep: int = MAX_STORED_SAMPLES) -> list[float]:
    """What a results row stores of the raw samples (``samples_ms``).

    All of them, in time order, when there are at most ``keep``; else ``keep`` evenly spaced
    order statistics of the sorted samples (min and max included). These keep the
    distribution (every quantile to within one rank step, so median, IQR and rank tests such
    as ``attnbench compare``'s), not the time order; ``repeats`` keeps the full count.
    """
    a = [float(x) for x in samples_ms]
    if len(a) <= keep:
        return a
    s = np.sort(np.asarray(a, dtype=np.float64))
    idx = np.round(np.linspace(0, s.size - 1, keep)).astype(np.int64)
    return s[idx].tolist()


def summarize(samples_ms: list[float]) -> TimingStats:
    a = np.asarray(samples_ms, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return TimingStats(float(med), float(q3 - q1), float(a.min()), int(a.size), list(map(float, a)))


def time_once(fn: Callable[[], object], device: str = "cpu") -> float:
    """Milliseconds of one call, synchronized on CUDA."""
    if device.startswith("cuda"):
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def measure(
    fn: Callable[[], object],
    *,
    device: str = "cpu",
    budget_s: float = 1.0,
    min_repeats: int = 3,
    max_repeats: int = 2000,
    warmup_s: float = 0.1,
    settle_rel: float = 0.02,
    settle_min: int = 10,
    warm_ms: float = 0.0,
) -> TimingStats:
    """Warm up for ``warmup_s`` (at least one call), then time repeats adaptively.

    ``warm_ms``: how long an untimed call that just ran took (the memory pass). When it alone
    exceeds ``warmup_s`` the kernel is warm already and the warm-up is skipped, which saves a
    multi-second call at large n.
    """
    if warm_ms / 1e3 < warmup_s:
        t_end = time.perf_counter() + warmup_s
        while True:
            time_once(fn, device)
            if time.perf_counter() >= t_end:
                break
    samples: list[float] = []
    spent = 0.0
    while len(samples) < max_repeats:
        ms = time_once(fn, device)
        samples.append(ms)
        spent += ms / 1e3
        n = len(samples)
        if n < min_repeats:
            continue
        if spent >= budget_s:
            break
        if n >= settle_min and n % 5 == 0:
            s = summarize(samples)
            if s.iqr_ms <= settle_rel * s.median_ms:
                break
    return summarize(samples)
