"""One job of a sweep: the command in-process, in a directory of its own, recorded in job.json.

The job's directory is hydra's ``runtime.output_dir`` (``<sweep dir>/<job number>``; hydra does
not change into it): the command gets it as ``--out``, so no two jobs write the same file. The
command runs as ``attnbench.cli.main([command, *fixed flags, *swept flags, --out DIR,
*overrides])``, its stdout and stderr into ``DIR/job.log``. A command that exits non-zero, or
an exception that escapes it, leaves the job's ``sweep_job`` row in ``DIR/results.jsonl`` and
raises :class:`JobFailed`, which hydra records as the job's failure; the other jobs go on.

On a resumed sweep a job whose job.json says ok returns at once (nothing written); any other
runs again, a ``run`` or ``train`` that left a run behind with the command's ``--resume``.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import shorten
from typing import Any, Callable

from attnbench.sweep import cores, jobs
from attnbench.sweep.argv import FLAG_NS, SET_NS, Flag, swept_words
from attnbench.sweep.launch import outside_hydra

LOG = "job.log"
SAY_CHARS = 160  # a progress line's error, cut at a word (job.json holds it whole)
RESUMABLE = ("run", "train")  # commands with --resume: a partial run continues
EXIT_INTERRUPTED = 130  # attnbench.cli's exit status for Ctrl-C


class JobFailed(Exception):
    """A job whose command did not end well (its line says which and why)."""


@dataclass(frozen=True)
class JobSpec:
    """What every job of a sweep shares (pickled to the launcher's processes)."""
    command: str
    fixed: tuple[str, ...]
    flags: dict[str, Flag] = field(default_factory=dict)
    prefixes: dict[str, str] = field(default_factory=dict)
    resume: bool = False
    pool: tuple[int, ...] = ()  # the sweep's cores: its CPU affinity when it started
    jobs: int | None = None  # the sweep's number of jobs (None: unknown)


def task_function(spec: JobSpec, run: Callable[[list[str]], int]) -> Callable[[Any], int]:
    """Hydra's task: ``run`` is ``attnbench.cli.main``."""
    def task(cfg: Any) -> int:
        return run_job(spec, run, cfg)
    return task


def job_argv(spec: JobSpec, cfg: Any, overrides: list[str], out: Path) -> list[str]:
    """The command line of one job: fixed words, its swept flags, --out, its swept overrides."""
    from omegaconf import OmegaConf

    argv = [spec.command, *spec.fixed]
    for dest, value in (OmegaConf.to_container(cfg[FLAG_NS]) if FLAG_NS in cfg else {}).items():
        argv += spec.flags[dest].words(value)
    argv += ["--out", str(out)]
    if spec.command in RESUMABLE and (out / "run.json").is_file():
        argv.append("--resume")  # an earlier attempt left a run: continue it
    for o in overrides:
        key, _, value = o.lstrip("+").partition("=")
        if key.startswith(f"{SET_NS}."):
            key = key[len(SET_NS) + 1:]
            argv.append(f"{spec.prefixes.get(key, '')}{key}={value}")
    return argv


def run_job(spec: JobSpec, run: Callable[[list[str]], int], cfg: Any) -> int:
    """One job (see the module docstring); 0, or JobFailed."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    before = jobs.read_job(out)
    if spec.resume and before is not None and before.get("status") == "ok":
        return 0
    overrides = list(hc.overrides.task)
    record = {"command": spec.command, "job": int(hc.job.num), "overrides": overrides,
              "swept": swept_words(overrides), "launcher": str(hc.launcher._target_).rsplit(".", 1)[-1],
              "attempts": jobs.set_aside(out, before)}
    argv = job_argv(spec, cfg, overrides, out)
    t0 = time.perf_counter()
    with _cores(spec, hc, argv) as slot:
        argv = _with_threads(spec, argv, slot)
        record.update(argv=argv, slot=slot.index, cores=list(slot.cores), threads=_threads(argv),
                      slot_wait_s=round(time.perf_counter() - t0, 3))
        record = _ended(record, out, lambda: call(run, argv, out / LOG))
    say(f"job {record['job']} {record['status']} in {record['wall_s']:.1f} s: {' '.join(record['swept'])}"
        + (f": {shorten(record['error'], SAY_CHARS, placeholder=' ...')}" if record.get("error") else ""))
    if record["exit_code"] == EXIT_INTERRUPTED:
        raise KeyboardInterrupt
    if record["status"] != "ok":
        jobs.append_failure(out, record)
        raise JobFailed(f"job {record['job']} ({' '.join(record['swept'])}): {record['error']}")
    return 0


def _ended(record: dict[str, Any], out: Path, go: Callable[[], tuple[int | None, str | None]]) -> dict[str, Any]:
    """``record`` written as running, ``go`` called, the record completed and written again."""
    start, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    rows = jobs.data_rows(out)
    record.update(status=jobs.RUNNING, started_at=start.isoformat(), host=platform.node(), pid=os.getpid(),
                  log=str(out / LOG))
    jobs.write_job(out, record)
    code, error = go()
    status = "ok" if code == 0 else "crash" if code is None else "error"
    record.update(status=status, exit_code=code, error=error, wall_s=round(time.perf_counter() - t0, 3),
                  ended_at=dt.datetime.now(dt.timezone.utc).isoformat(), rows_written=jobs.data_rows(out) - rows)
    jobs.write_job(out, record)
    return record


def _cores(spec: JobSpec, hc: Any, argv: list[str]):
    """The job's core slot (run and train on one machine), else the cores it has."""
    from omegaconf import OmegaConf

    target = str(hc.launcher._target_)
    parallel = cores.parallel_jobs(target, OmegaConf.select(hc.launcher, "n_jobs"), spec.jobs, spec.pool)
    if spec.command not in cores.TIMED_COMMANDS or parallel is None or not spec.pool:
        return cores.own_cores()
    per_job = cores.cores_per_job(spec.pool, parallel, _threads(argv))
    return cores.hold_slot(Path(str(hc.sweep.dir)) / ".cores", spec.pool, per_job)


def _threads(argv: list[str]) -> int | None:
    """--threads of the command line (None: not given, or not a number: the command says so)."""
    if "--threads" not in argv[:-1]:
        return None
    try:
        return int(argv[argv.index("--threads") + 1])
    except ValueError:
        return None


def _with_threads(spec: JobSpec, argv: list[str], slot: cores.Slot) -> list[str]:
    """A timing job's command gets ``--threads`` = its cores, unless the sweep gave --threads."""
    if spec.command not in cores.TIMED_COMMANDS or "--threads" in argv:
        return argv
    i = argv.index("--out")
    return [*argv[:i], "--threads", str(len(slot.cores)), *argv[i:]]


def call(run: Callable[[list[str]], int], argv: list[str], log: Path) -> tuple[int | None, str | None]:
    """``run(argv)`` with its output into ``log``: (exit status, its one-line error). An
    exception that escapes ``run`` (its traceback goes to the log) gives (None, the exception)."""
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ python -m attnbench {shlex.join(argv)}\n")
        f.flush()
        start = f.tell()
        with redirect_stdout(f), redirect_stderr(f), outside_hydra():
            try:
                code = run(argv)
            except KeyboardInterrupt:
                return EXIT_INTERRUPTED, "interrupted"
            except BaseException as e:  # noqa: BLE001 - SystemExit or anything cli.main let through
                traceback.print_exc()
                return None, f"{type(e).__name__}: {e}"
    return code, None if code == 0 else error_line(log, start, code)


def error_line(log: Path, start: int, code: int) -> str:
    """The command's last ``attnbench: ...`` line written after ``start`` in ``log``."""
    with open(log, encoding="utf-8", errors="replace") as f:
        f.seek(start)
        lines = [ln.strip() for ln in f if ln.startswith("attnbench:")]
    return lines[-1].removeprefix("attnbench: ").removeprefix("error: ") if lines else \
        f"exit code {code} with no error line; see {log}"


def say(line: str) -> None:
    """One progress line on the job's stderr (the sweep's terminal, or the launcher's log)."""
    print(f"[sweep] {line}", file=sys.stderr, flush=True)
