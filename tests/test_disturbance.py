"""A disturbed measurement is detected: run-queue wait per sample, re-measured, else noisy."""
from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from attnbench.harness import cpuwait, timing
from attnbench.harness.timing import measure

pytestmark = pytest.mark.skipif(not cpuwait.available(), reason="no /proc/<pid>/task/*/schedstat")


class FakeWait:
    """A run-queue clock that charges ``waits[i]`` seconds of wait to the i-th timed call."""

    def __init__(self, waits):
        self.waits, self.calls, self.total = list(waits), 0, 0

    def __call__(self):
        # wait_ns is read twice per sample (before and after): charge on the 'after' read
        self.calls += 1
        if self.calls % 2 == 0 and self.waits:
            self.total += int(self.waits.pop(0) * 1e9)
        return self.total


def _sleep_10ms():
    time.sleep(0.01)


def test_share_is_wait_over_asked_cpu_time():
    assert cpuwait.share(5_000_000, 0.1, 1) == pytest.approx(0.05)
    assert cpuwait.share(5_000_000, 0.1, 2) == pytest.approx(0.025)
    assert cpuwait.share(-3, 0.1, 2) == 0.0  # a thread that ended between the reads
    assert cpuwait.share(None, 0.1, 2) is None


def test_disturbed_samples_are_set_aside_and_remeasured(monkeypatch):
    # calls of ~10 ms; every other one waited 5 ms (50% of one thread's time): set aside
    monkeypatch.setattr(cpuwait, "wait_ns", FakeWait([0.005, 0.0] * 20))
    monkeypatch.setattr(cpuwait, "machine_busy_ticks", lambda: None)  # only the per-call rule here
    st = measure(_sleep_10ms, budget_s=0.05, min_repeats=3, warmup_s=0.0, ci_min=1 << 30, threads=1)
    assert not st.noisy
    assert st.disturbed >= 3
    assert st.repeats >= 3  # clean samples only
    assert st.median_ms < 13  # the disturbed figure is never the median's source
    assert 0.1 < st.wait_share < 0.4  # half the samples waited half their time


def test_a_case_without_clean_samples_is_noisy(monkeypatch):
    monkeypatch.setattr(cpuwait, "wait_ns", FakeWait([0.005] * 100))
    monkeypatch.setattr(cpuwait, "machine_busy_ticks", lambda: None)
    st = measure(_sleep_10ms, budget_s=0.03, min_repeats=3, warmup_s=0.0, ci_min=1 << 30, threads=1)
    assert st.noisy and st.stop == "disturbed"
    assert st.repeats == st.disturbed >= 3  # the figures come from every (disturbed) sample
    elapsed = sum(st.samples_ms) / 1e3
    assert elapsed >= (1 + timing.RETRY_BUDGET) * 0.03  # it tried within its retry budget first


def test_without_threads_nothing_is_measured():
    st = measure(_sleep_10ms, budget_s=0.02, min_repeats=2, warmup_s=0.0)
    assert st.wait_share is None and st.disturbed == 0 and not st.noisy


def _spin(seconds):
    t = time.perf_counter() + seconds
    while time.perf_counter() < t:
        pass


def test_a_competing_process_shows_as_wait():
    """Known answer: with a busy process on every core, threads asking for every core wait."""
    import torch

    cores = len(os.sched_getaffinity(0))
    ctx = mp.get_context("spawn")
    spinners = [ctx.Process(target=_spin, args=(6.0,)) for _ in range(cores)]
    for p in spinners:
        p.start()
    try:
        time.sleep(1.0)  # spawn start-up
        a = torch.randn(512, 512)
        threads = torch.get_num_threads()
        st = measure(lambda: _spin(0.01) or a @ a, budget_s=0.5, min_repeats=5, warmup_s=0.0,
                     ci_min=1 << 30, threads=threads)
    finally:
        for p in spinners:
            p.terminate()
            p.join()
    assert st.wait_share is not None and st.wait_share > cpuwait.DISTURBED_WAIT
    assert st.disturbed > 0
    # the machine-level measure: the spinners used about cores / (cores + threads) of the machine
    assert st.other_cpu_share is not None and st.other_cpu_share > cpuwait.OTHER_CPU_LIMIT
    assert st.noisy  # clean-looking calls or not, a case timed beside a busy process is not clean


def test_other_cpu_counts_other_processes_not_this_one():
    """Known answers: this process spinning is not 'other'; a child spinning on every core is."""
    idle = cpuwait.OtherCpu().start()
    time.sleep(0.4)
    before = idle.share()  # whatever else runs on this machine now
    mine = cpuwait.OtherCpu().start()
    _spin(0.4)
    # this process's own 0.4 s are subtracted: not counted would add 1 / cores (0.5 on 2 cores)
    assert mine.share() < before + 0.5 / (os.cpu_count() or 1)
    cores = os.cpu_count() or 1
    ctx = mp.get_context("spawn")
    spinners = [ctx.Process(target=_spin, args=(3.0,)) for _ in range(cores)]
    for p in spinners:
        p.start()
    try:
        time.sleep(1.0)
        theirs = cpuwait.OtherCpu().start()
        time.sleep(0.5)
        share = theirs.share()
    finally:
        for p in spinners:
            p.terminate()
            p.join()
    assert share > 0.6
