"""``python -m attnbench run|train|stats -m ...``: the sweep's entry point (see :mod:`attnbench.sweep`).

``attnbench.cli`` calls :func:`main` with the command, the words after it (``-m`` removed), its
own parser and its own ``main`` (the sweep package never imports the CLI: the CLI imports it).
The sweep directory holds ``sweep.json`` (the command, its words, every launch), hydra's
``multirun.yaml`` and one directory per job. At the end: one table of the jobs on stdout, and
the exit status 0 when every job is ok, 1 when one is not (2: bad input, nothing run; 130:
Ctrl-C).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path
from textwrap import shorten
from typing import Any, Callable

from attnbench.sweep import jobs, launch
from attnbench.sweep.argv import Sweep, SweepUsageError, translate
from attnbench.sweep.collect import SWEEP_JSON
from attnbench.sweep.job import JobFailed, JobSpec, task_function

SWEEPS_DIR = Path("results") / "sweeps"  # default sweep directory: <this>/<command>-<UTC time>
EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


def main(command: str, argv: list[str], *, parser: argparse.ArgumentParser, run: Callable[[list[str]], int]) -> int:
    """Run ``command`` (run, train or stats) as a hydra multirun over ``argv``; the exit status.
    ``parser``: ``attnbench.cli.build_parser()``; ``run``: ``attnbench.cli.main``."""
    try:
        sweep, sweep_dir = resolve(translate(command, list(argv), parser), parser)
        words = hydra_words(sweep, sweep_dir)
    except SweepUsageError as e:
        print(f"attnbench: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    spec = JobSpec(command, sweep.fixed, sweep.flags, sweep.prefixes, sweep.resume,
                   tuple(sorted(os.sched_getaffinity(0))), launch.job_count(list(sweep.swept)))
    started = dt.datetime.now(dt.timezone.utc)
    record_launch(sweep_dir, sweep, started)
    try:
        ended = launch.multirun(words, task_function(spec, run))
    except KeyboardInterrupt:
        print(f"attnbench: interrupted; continue with: {resume_command(sweep, sweep_dir)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    records = jobs.settle(sweep_dir, ended=ended is None or isinstance(ended, JobFailed))
    if ended is not None and not isinstance(ended, JobFailed) and not records:  # hydra refused the words
        if not sweep.resume:
            shutil.rmtree(sweep_dir, ignore_errors=True)  # made here, and nothing ran: leave no sweep behind
        print(f"attnbench: error: hydra: {one_line(ended)}", file=sys.stderr)
        return EXIT_USAGE
    failed = print_jobs(records, spec.jobs, started, sweep, sweep_dir)
    if ended is not None and not isinstance(ended, JobFailed):
        print(f"attnbench: error: the sweep stopped: {one_line(ended)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if failed else 0


def resolve(sweep: Sweep, parser: argparse.ArgumentParser) -> tuple[Sweep, Path]:
    """The sweep to run and its directory: a new one (``--out`` or the default, empty), or, with
    ``--resume``, the stored sweep of ``--out`` (today's hydra words, if any, replace its own)."""
    if not sweep.resume:
        out = Path(sweep.out) if sweep.out else default_dir(sweep.command)
        if (out / SWEEP_JSON).exists():
            raise SweepUsageError(f"--out {out}: holds a sweep already; continue it with --resume, or give another --out")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise SweepUsageError(f"--out {out}: not an empty directory; give a new directory for the sweep")
        return sweep, out.resolve()
    if not sweep.out:
        raise SweepUsageError("--resume needs --out DIR: the sweep directory to continue")
    out = Path(sweep.out)
    stored = read_sweep(out)
    if stored is None:
        raise SweepUsageError(f"--out {out}: no sweep to resume there (no {SWEEP_JSON}); drop --resume to start one")
    if stored["command"] != sweep.command:
        raise SweepUsageError(f"--out {out}: holds a sweep of {stored['command']!r}, not {sweep.command!r}")
    if sweep.words and list(sweep.words) != stored["words"]:
        raise SweepUsageError(f"--resume: this sweep ({' '.join(sweep.words)}) is not the one in {out} "
                              f"({' '.join(stored['words'])}); resume it as it was: {resume_command(sweep, out)}")
    hydra = list(sweep.hydra) or stored["hydra"]
    again = translate(sweep.command, [*stored["words"], *hydra, "--out", str(out), "--resume"], parser)
    return again, out.resolve()


def default_dir(command: str) -> Path:
    return SWEEPS_DIR / f"{command}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"


def hydra_words(sweep: Sweep, sweep_dir: Path) -> list[str]:
    """hydra's command line (less ``-m``): the sweep directory and job name, the user's hydra
    words, the sweep."""
    if any(w.split("=", 1)[0].lstrip("+") == "hydra.sweep.dir" for w in sweep.hydra):
        raise SweepUsageError("hydra.sweep.dir: give --out DIR, the sweep directory, instead")
    return [f"hydra.sweep.dir={quote(str(sweep_dir))}", f"hydra.job.name={sweep.command}", *sweep.hydra, *sweep.swept]


def quote(text: str) -> str:
    """``text`` as one quoted value of hydra's grammar."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def read_sweep(sweep_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(sweep_dir) / SWEEP_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def record_launch(sweep_dir: Path, sweep: Sweep, at: dt.datetime) -> None:
    """sweep.json: the command and its words once, each launch (new or resumed) appended."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    info = read_sweep(sweep_dir) or {"command": sweep.command, "words": list(sweep.words),
                                     "hydra": list(sweep.hydra), "created_at": at.isoformat(), "launches": []}
    info["launches"].append({"at": at.isoformat(), "resume": sweep.resume, "hydra": list(sweep.hydra),
                             "cores": sorted(os.sched_getaffinity(0))})
    tmp = sweep_dir / (SWEEP_JSON + ".tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    tmp.replace(sweep_dir / SWEEP_JSON)


def resume_command(sweep: Sweep, sweep_dir: Path) -> str:
    return f"python -m attnbench {sweep.command} -m --out {sweep_dir} --resume"


def one_line(e: BaseException) -> str:
    text = str(e.code if isinstance(e, SystemExit) else e) or type(e).__name__
    return "; ".join(ln.strip() for ln in text.splitlines() if ln.strip())


def print_jobs(records: list[dict], planned: int | None, started: dt.datetime, sweep: Sweep, sweep_dir: Path) -> int:
    """The table of jobs (stdout) and what to do next; returns how many are not ok."""
    from rich.table import Table

    from attnbench.report.console import REASON_CHARS, make_console, plain

    t = Table(title=f"sweep {sweep.command} -> {sweep_dir}", title_justify="left")
    for c in ("job", "overrides", "status", "rows", "wall (s)", "error"):
        t.add_column(c, no_wrap=c not in ("overrides", "error"))
    for r in records:
        earlier = r.get("status") == "ok" and str(r.get("started_at") or "") < started.isoformat()
        error = shorten(str(r.get("error") or ""), REASON_CHARS, placeholder=" ...")
        t.add_row(str(r.get("job")), " ".join(r.get("swept") or []), f"{r.get('status')}{' (before)' * earlier}",
                  str(r.get("rows_written", "-")), f"{r.get('wall_s') or 0:.1f}", error)
    seen = {r.get("job") for r in records}
    missing = [n for n in range(planned or 0) if n not in seen]
    for n in missing:
        t.add_row(str(n), "", "not started", "-", "-", "")
    console = make_console()
    console.print(t)
    failed = sum(r.get("status") != "ok" for r in records) + len(missing)
    console.print(plain(f"{len(records) + len(missing)} jobs, {failed} not ok; report: python -m attnbench report "
                        f"{sweep_dir}" + (f"; rerun those: {resume_command(sweep, sweep_dir)}" if failed else "")))
    return failed
