"""Did the worker get the CPUs it asked for? Run-queue wait of its threads, per timed sample.

Linux keeps, per thread, the time it was runnable but waiting for a CPU
(``/proc/self/task/<tid>/schedstat``, second field, nanoseconds; scheduler statistics, present
on every kernel with ``CONFIG_SCHED_INFO``). On a quiet machine a worker with T threads on T
free cores waits almost never; with another process on one core, its threads queue behind it
and a multi-threaded kernel waits for the slowest thread at every barrier. The share

    wait_share = run-queue wait of all threads during a sample / (sample wall time x T)

is the fraction of the asked-for CPU time the sample did not get. A sample above
``DISTURBED_WAIT`` is disturbed: ``timing.measure`` re-measures it and a case that cannot get
clean samples is flagged ``noisy``. What this cannot see: a hypervisor's steal time below the
guest kernel (the guest's threads do not wait, the virtual CPU does) and memory-bandwidth
contention from a process on other cores; the run-level GEMM probe and ``compare``'s machine
check cover those.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

DISTURBED_WAIT = 0.05  # a sample that lost more than 5% of its asked-for CPU time is disturbed
OTHER_CPU_LIMIT = 0.10  # other processes (and the hypervisor's steal) using more of the machine: noisy
MIN_TICKS = 3  # ... counted only from this many clock ticks of theirs up (the counters are in ticks)
_TASKS = "/proc/self/task"


def available() -> bool:
    """Whether this kernel reports per-thread run-queue wait."""
    try:
        return wait_ns() is not None
    except OSError:
        return False


def wait_ns() -> int | None:
    """Run-queue wait (ns) summed over this process's live threads; None without schedstat."""
    return _schedstat_sum(1)


def _schedstat_sum(field: int) -> int | None:
    """One field of ``schedstat`` (0: time on a CPU, 1: run-queue wait; ns) summed over threads."""
    total = 0
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"{_TASKS}/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[field])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended between listdir and open
    return total


def share(wait_delta_ns: int | None, wall_s: float, threads: int) -> float | None:
    """The share of ``threads`` CPUs over ``wall_s`` spent waiting (None when not measured)."""
    if wait_delta_ns is None or wall_s <= 0:
        return None
    return max(0, wait_delta_ns) / (wall_s * 1e9 * max(1, threads))


def own_cpu_ns() -> int | None:
    """CPU time (ns) this process's live threads have run (schedstat's first field)."""
    return _schedstat_sum(0)


def machine_busy_ticks() -> int | None:
    """Busy clock ticks of all CPUs since boot: user, nice, system, irq, softirq and steal."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    return user + nice + system + irq + softirq + steal


@dataclass
class OtherCpu:
    """What other processes used of the machine between :meth:`start` and :meth:`share`."""
    busy0: int | None = None
    own0: int | None = None
    t0: float = 0.0

    def start(self) -> "OtherCpu":
        self.busy0, self.own0, self.t0 = machine_busy_ticks(), own_cpu_ns(), time.perf_counter()
        return self

    def share(self) -> float | None:
        """Other processes' CPU time / (wall time x the machine's CPUs); None: not measurable."""
        busy1, own1, wall = machine_busy_ticks(), own_cpu_ns(), time.perf_counter() - self.t0
        if None in (self.busy0, self.own0, busy1, own1) or wall <= 0:
            return None
        tick = 1.0 / os.sysconf("SC_CLK_TCK")
        other_ticks = (busy1 - self.busy0) - (own1 - self.own0) * 1e-9 / tick
        if other_ticks < MIN_TICKS:
            return 0.0
        return other_ticks * tick / (wall * (os.cpu_count() or 1))
