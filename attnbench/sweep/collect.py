"""The results files a run directory, a sweep directory or a directory of runs stands for.

    results_files("results/sweeps/stats-20250101T120000Z")   # [<dir>/0/results.jsonl, <dir>/1/..., ...]
    sweep_files("results/sweeps/stats-20250101T120000Z")     # the same; [] for what is not a sweep

``report``'s inputs follow it too: a ``.jsonl`` (or ``.jsonl.gz``) file is itself; a run directory
is its rows file (``results.jsonl``, or ``results.jsonl.gz`` where the run is compacted:
:func:`attnbench.results.rows_file`); otherwise its subdirectories' rows files (``*/``, else
``*/*/``), numbered job directories in numeric order. ``compare`` and ``report``
merge the rows of all of them; a sweep's ``sweep_job`` rows among them are set apart by
:func:`attnbench.sweep.schema.is_sweep_job_row`. A sweep directory is one with ``sweep.json``.
"""
from __future__ import annotations

from pathlib import Path

from attnbench.results import COMPACTED, ROWS, ROWS_SUFFIXES, rows_file

SWEEP_JSON = "sweep.json"  # what makes a directory a sweep's: the command, its words, its launches


def _order(p: Path) -> tuple:
    """Numbered job directories in numeric order (2 before 10), the others after, by name."""
    return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.parts)


def _runs_below(p: Path, depth: str) -> list[Path]:
    """The rows files of the run directories at ``depth`` (``*/``, ``*/*/``) below ``p``, in order."""
    runs = {f.parent for name in (ROWS, COMPACTED) for f in p.glob(depth + name)}
    return [rows_file(r) for r in sorted(runs, key=_order)]


def results_files(path: str | Path) -> list[Path]:
    """Every rows file ``path`` stands for ([] when none)."""
    p = Path(path)
    if p.is_file():
        return [p] if p.name.endswith(ROWS_SUFFIXES) else []
    if rows_file(p).is_file():
        return [rows_file(p)]
    return _runs_below(p, "*/") or _runs_below(p, "*/*/")


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / SWEEP_JSON).is_file()


def sweep_files(path: str | Path) -> list[Path]:
    """The jobs' results files of a sweep directory ([] when ``path`` is not one)."""
    return results_files(path) if is_sweep_dir(path) else []
