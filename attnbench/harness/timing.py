"""Wall-clock timing with warm-up and repeats that stop by a confidence rule.

CPU: ``time.perf_counter`` around each call. CUDA: a pair of events per call and a synchronize,
so the figure is device time of the whole call. Repeats stop at the first of

* ``ci``: at least ``ci_min`` samples and the 95% confidence interval of the median (the
  distribution-free one, between two order statistics) within ``settle_rel`` of the median on
  either side — the median is known to 2% and more samples would not change the figure;
* ``budget``: ``budget_s`` of timed calls spent and at least ``min_repeats`` samples — a slow
  call (seconds at large n) is timed ``min_repeats`` times, its precision stated by ``ci_rel``;
* ``max``: ``max_repeats`` samples;
* ``disturbed``: too few clean samples after re-measuring (``measure``: the case is ``noisy``).

On CPU each sample carries its run-queue wait share (:mod:`attnbench.harness.cpuwait`): a
sample in which the worker's threads waited for a CPU is set aside and re-measured, so another
process on the machine cannot pass a slow figure off as a clean one.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from attnbench.harness import cpuwait


@dataclass
class TimingStats:
    median_ms: float
    iqr_ms: float
    min_ms: float
    repeats: int
    ci_rel: float  # half-width of the median's 95% confidence interval / median
    stop: str  # ci | budget | max | disturbed
    samples_ms: list[float] = field(repr=False)
    disturbed: int = 0  # samples set aside: the worker waited for a CPU (cpuwait)
    wait_share: float | None = None  # run-queue wait / asked-for CPU time over every sample
    noisy: bool = False  # too few clean samples, or other processes busy on the machine meanwhile
    other_cpu_share: float | None = None  # other processes' share of the machine while timed (cpuwait.OtherCpu)


MAX_STORED_SAMPLES = 256
RETRY_BUDGET = 2.0  # re-measuring disturbed samples may spend this many budgets more


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
    return _timed(fn, device, None)[0]


def _timed(fn: Callable[[], object], device: str, threads: int | None) -> tuple[float, float | None]:
    """(ms, wait share) of one call; the share (``cpuwait``) only on CPU with ``threads`` given."""
    if device.startswith("cuda"):
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)), None
    w0 = cpuwait.wait_ns() if threads else None
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    w1 = cpuwait.wait_ns() if w0 is not None else None
    return wall * 1e3, cpuwait.share(None if w1 is None else w1 - w0, wall, threads or 1)


@dataclass
class _Samples:
    """Timed calls split into clean and disturbed (the worker waited for a CPU)."""
    clean: list[float] = field(default_factory=list)
    disturbed: list[float] = field(default_factory=list)
    wait_s: float = 0.0  # asked-for CPU seconds spent waiting, over every sample
    wall_s: float = 0.0
    measured_wait: bool = False

    def add(self, ms: float, share: float | None, limit: float) -> None:
        self.wall_s += ms / 1e3
        if share is not None:
            self.measured_wait = True
            self.wait_s += share * ms / 1e3
        (self.disturbed if share is not None and share > limit else self.clean).append(ms)

    def stats(self, stop: str, min_clean: int, other_share: float | None) -> TimingStats:
        """Clean samples when there are ``min_clean`` of them; else every sample, flagged noisy.
        Noisy as well when other processes used over ``cpuwait.OTHER_CPU_LIMIT`` of the machine."""
        short = len(self.clean) < min_clean and bool(self.disturbed)
        st = summarize(self.clean + self.disturbed if short else self.clean, stop)
        st.disturbed = len(self.disturbed)
        st.wait_share = self.wait_s / self.wall_s if self.measured_wait and self.wall_s > 0 else None
        st.other_cpu_share = other_share
        st.noisy = short or (other_share or 0.0) > cpuwait.OTHER_CPU_LIMIT
        return st


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
    threads: int | None = None,
    disturbed_wait: float = cpuwait.DISTURBED_WAIT,
    retry_budget: float = RETRY_BUDGET,
    other: cpuwait.OtherCpu | None = None,
) -> TimingStats:
    """Warm up for ``warmup_s`` (at least one call), then time repeats until a stopping rule holds.

    ``warm_ms``: how long an untimed call that just ran took (the memory pass). When it alone
    exceeds ``warmup_s`` the kernel is warm already and the warm-up is skipped, which saves a
    multi-second call at large n.

    ``threads`` (CPU): the worker's thread count; each sample then carries its run-queue wait
    share and one above ``disturbed_wait`` is set aside and re-measured. The rules count clean
    samples only; after ``retry_budget`` x the budget more (and at least ``min_repeats``
    disturbed calls) a case still short of ``min_repeats`` clean samples stops, its figures from
    every sample and flagged ``noisy`` (stop ``disturbed``). A case during whose timing other
    processes used more than ``cpuwait.OTHER_CPU_LIMIT`` of the machine is ``noisy`` too: load
    on other cores slows calls that never waited (caches, bandwidth, wake-ups). ``other``: that
    measurement started by the caller (so that it spans the memory pass too), else started
    here before the warm-up.
    """
    if threads and other is None:
        other = cpuwait.OtherCpu().start()
    if warm_ms / 1e3 < warmup_s:
        t_end = time.perf_counter() + warmup_s
        while True:
            time_once(fn, device)
            if time.perf_counter() >= t_end:
                break
    s = _Samples()
    while True:
        s.add(*_timed(fn, device, threads), disturbed_wait)
        stop = _stop_rule(s, budget_s, min_repeats, max_repeats, settle_rel, ci_min, retry_budget)
        if stop:
            return s.stats(stop, min_repeats, other.share() if other is not None else None)


def _stop_rule(s: _Samples, budget_s: float, min_repeats: int, max_repeats: int, settle_rel: float,
               ci_min: int, retry_budget: float) -> str | None:
    n = len(s.clean)
    if n + len(s.disturbed) >= max_repeats:
        return "max"
    if n and n >= ci_min and n % max(1, n // 20) == 0 and _converged(s.clean, settle_rel):
        return "ci"
    if n >= min_repeats and s.wall_s >= budget_s:
        return "budget"
    if len(s.disturbed) >= min_repeats and s.wall_s >= (1 + retry_budget) * budget_s:
        return "disturbed"
    return None


def _converged(samples: list[float], rel: float) -> bool:
    lo, hi = median_ci(samples)
    med = float(np.median(samples))
    return med > 0 and max(hi - med, med - lo) <= rel * med
