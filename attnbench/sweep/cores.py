"""Core slots: timing jobs of a sweep on one machine never share a core.

Under a launcher that runs jobs side by side on one machine (joblib with ``n_jobs`` > 1,
submitit_local, which starts every job at once), a ``run`` or ``train`` job first takes a slot:
an exclusive ``fcntl.flock`` on one of ``<sweep dir>/.cores/<k>.lock``, tried without blocking in
turn, with a short sleep while every slot is held (a lock dies with its holder, so a killed job
frees its slot). The slots split the sweep's cores — the CPUs the sweep process may run on, its
affinity when it started, not ``os.cpu_count()`` (a sweep under ``taskset`` stays there) — into
``len(cores) // cores_per_job`` groups of ``cores_per_job``: the job's ``--threads`` when the
sweep gives it, else ``len(cores) // jobs at once``, at least 1. The job pins itself to its
group with ``os.sched_setaffinity`` (the command's worker processes inherit it), passes
``--threads cores_per_job`` unless the sweep gave ``--threads``, and records the slot and its
cores in ``job.json``; more jobs than slots wait their turn. A sequential sweep (hydra's basic
launcher) holds the one slot of every core. Under SLURM the scheduler gives each job its cores:
no slot; ``--threads`` is the number of cores the job may run on.

``run`` is a timing benchmark; ``train`` records steps/s, and pinning costs nothing, so both
take slots. ``stats`` jobs share the machine: they compute statistics, not times.

What slots do not separate: memory bandwidth, the last-level cache, the memory controller and
the package's power and clock budget stay shared, so a job times somewhat slower beside a busy
neighbour than alone. The harness's own disturbance checks still apply inside each job: a timed
case whose threads waited for a CPU, or during which other processes used the machine
(``attnbench.harness.cpuwait``, the rows' ``noisy``, ``wait_share`` and ``other_cpu_share``),
is flagged as measured under load.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

POLL_S = 0.2  # wait between rounds of attempts while every slot is held
TIMED_COMMANDS = ("run", "train")  # jobs that take a slot


@dataclass(frozen=True)
class Slot:
    index: int | None  # None: no slot (the cluster gave the job its cores)
    cores: tuple[int, ...]


def cores_per_job(pool: tuple[int, ...], parallel: int, threads: int | None) -> int:
    """Cores of one slot: the job's --threads when given, else an equal share of ``pool``."""
    if threads is not None:
        return max(1, min(threads, len(pool)))
    return max(1, len(pool) // max(1, parallel))


def slot_cores(pool: tuple[int, ...], per_job: int, index: int) -> tuple[int, ...]:
    return tuple(pool[index * per_job:(index + 1) * per_job])


@contextmanager
def hold_slot(lock_dir: Path, pool: tuple[int, ...], per_job: int, poll_s: float = POLL_S) -> Iterator[Slot]:
    """Take a free slot (waiting while all are held), pin this thread and its future children to
    its cores, yield it; afterwards the affinity is restored and the slot freed."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    n = max(1, len(pool) // per_job)
    f, index = _take(lock_dir, n, poll_s)
    before = os.sched_getaffinity(0)
    slot = Slot(index, slot_cores(pool, per_job, index))
    try:
        os.sched_setaffinity(0, slot.cores)
        yield slot
    finally:
        os.sched_setaffinity(0, before)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _take(lock_dir: Path, n: int, poll_s: float):
    """(open lock file, its index) of the first slot free, trying each in turn until one is."""
    while True:
        for k in range(n):
            f = open(lock_dir / f"{k}.lock", "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            return f, k
        time.sleep(poll_s)


@contextmanager
def own_cores() -> Iterator[Slot]:
    """No slot: the cores this process may run on (SLURM's allocation)."""
    yield Slot(None, tuple(sorted(os.sched_getaffinity(0))))


def parallel_jobs(launcher_target: str, n_jobs: int | None, jobs: int | None, pool: tuple[int, ...]) -> int | None:
    """How many jobs of the sweep run at once on this machine; None where a scheduler places
    them (SLURM). ``launcher_target``: hydra's ``hydra.launcher._target_``; ``n_jobs``: joblib's
    setting (negative: all CPUs but ``-1 - n_jobs``); ``jobs``: the sweep's number of jobs."""
    name = launcher_target.rsplit(".", 1)[-1]
    if name == "SlurmLauncher":
        return None
    if name == "BasicLauncher":
        return 1
    if name == "JoblibLauncher" and n_jobs is not None:
        n = n_jobs if n_jobs > 0 else max(1, len(pool) + 1 + n_jobs)
        return min(n, jobs) if jobs else n
    return jobs or len(pool)  # submitit_local and others: every job at once
