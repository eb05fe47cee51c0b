"""The report's list of sweep jobs that failed: their ``row_kind = "sweep_job"`` rows.

A job of ``attnbench COMMAND -m`` whose command did not end well leaves one such row in its own
``results.jsonl`` (:mod:`attnbench.sweep.schema`); the rows are no kernel, training or
statistics rows, and a report of the sweep directory lists them as a section of their own::

    ## Sweep jobs that failed
    | job | command | swept | status | reason | exit | wall (s) |

``lines`` builds the section from rows, ``lines_for`` from the report's inputs (the files
:func:`attnbench.sweep.collect.results_files` finds, the same rule as the report's own).
"""
from __future__ import annotations

from pathlib import Path
from textwrap import shorten
from typing import Any, Iterable

from attnbench.report.console import REASON_CHARS
from attnbench.results import read_rows
from attnbench.sweep.collect import results_files
from attnbench.sweep.argv import swept_words
from attnbench.sweep.schema import is_sweep_job_row


def rows_for(inputs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The sweep_job rows of every results file the inputs stand for, each with its ``run``
    (the job's directory)."""
    out = []
    for p in inputs:
        for f in results_files(p):
            out += [dict(r, run=str(f.parent)) for r in read_rows(f) if is_sweep_job_row(r)]
    return out


def _cell(text: Any) -> str:
    return " ".join(str(text if text is not None else "").split()).replace("|", "\\|")


def lines(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines listing the failed jobs (the last row of each job directory); [] when none."""
    last = {(str(r.get("run")), r.get("job")): r for r in rows if is_sweep_job_row(r)}
    if not last:
        return []
    sweeps = sorted({str(Path(run).parent) for run, _ in last})
    commands = sorted({str(r.get("command")) for r in last.values()})
    out = ["## Sweep jobs that failed", "",
           f"{len(last)} job(s) of {len(sweeps)} sweep(s) did not end well: their other rows (if any) are in the "
           f"tables above. Rerun only those with `python -m attnbench {'|'.join(commands)} -m --out SWEEP_DIR "
           f"--resume`; each job's output is in its `job.log`.", "",
           "| job | command | swept | status | reason | exit | wall (s) |", "|---|---|---|---|---|---|---|"]
    for (run, job), r in sorted(last.items(), key=lambda kv: (kv[0][0], kv[0][1] if kv[0][1] is not None else -1)):
        reasons = r.get("reasons") or []
        reason = shorten(reasons[0], REASON_CHARS, placeholder=" ...") if reasons else ""
        wall = f"{r['wall_s']:.1f}" if isinstance(r.get("wall_s"), (int, float)) else "-"
        swept = " ".join(swept_words(r.get("overrides") or []))
        out.append(f"| `{_cell(run)}` | {_cell(r.get('command'))} | {_cell(swept)} | {_cell(r.get('status'))} "
                   f"| {_cell(reason)} | {_cell(r.get('exit_code'))} | {wall} |")
    return out + [""]


def lines_for(inputs: Iterable[str | Path]) -> list[str]:
    """:func:`lines` of the report's inputs."""
    return lines(rows_for(inputs))
