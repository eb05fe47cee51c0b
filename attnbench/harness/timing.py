"""Wall-clock timing with warm-up and repeats that stop by a confidence rule.

CPU: ``time.perf_counter`` around each call. CUDA: a pair of events per call and a synchronize,
so the figure is device time of the whole call. Repeats stop at the first of

* ``ci``: at least ``ci_min`` samples and the 95% confidence interval of the median (the
  distribution-free one, between two order statistics) within ``settle_rel`` of the median on
  either side — the median is known to 2% and more samples would not change the figure;
* ``budget``: ``budget_s`` of timed calls spent and at least ``min_repeats`` samples — a slow
  call (seconds at large n) is timed ``min_repeats`` times, its precision stated by ``ci_rel``;
* ``max``: ``max_repeats`` samples.
"""
from __future__ import annotations

import math
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
    ci_rel: float  # half-width of the median's 95% confidence interval / median
    stop: str  # ci | budget | max
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


def median_ci(samples_ms: list[float]) -> tuple[float, float]:
    """(low, high): the 95% confidence interval of the median between two order statistics
    (normal approximation of the binomial: ranks n/2 -+ 0.98 sqrt(n)); min..max for n <= 5."""
    s = sorted(samples_ms)
    n = len(s)
    lo = max(0, math.floor(0.5 * n - 0.98 * math.sqrt(n)))
    hi = min(n - 1, math.ceil(0.5 * n + 0.98 * math.sqrt(n)) - 1)
    return s[lo], s[max(lo, hi)]


def summarize(samples_ms: list[float], stop: str = "max") -> TimingStats:
    a = np.asarray(samples_ms, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    lo, hi = median_ci(samples_ms)
    ci_rel = max(hi - med, med - lo) / med if med > 0 else 0.0
    return TimingStats(float(med), float(q3 - q1), float(a.min()), int(a.size), float(ci_rel), stop,
                       list(map(float, a)))


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
    ci_min: int = 5,
    warm_ms: float = 0.0,
) -> TimingStats:
    """Warm up for ``warmup_s`` (at least one call), then time repeats until a stopping rule holds.

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
    while True:
        ms = time_once(fn, device)
        samples.append(ms)
        spent += ms / 1e3
        n = len(samples)
        if n >= max_repeats:
            return summarize(samples, "max")
        if n >= ci_min and n % max(1, n // 20) == 0 and _converged(samples, settle_rel):
            return summarize(samples, "ci")
        if n >= min_repeats and spent >= budget_s:
            return summarize(samples, "budget")


def _converged(samples: list[float], rel: float) -> bool:
    lo, hi = median_ci(samples)
    med = float(np.median(samples))
    return med > 0 and max(hi - med, med - lo) <= rel * med
