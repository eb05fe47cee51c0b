"""The results files a run directory, a sweep directory or a directory of runs stands for.

    results_files("results/sweeps/stats-20250101T120000Z")   # [<dir>/0/results.jsonl, <dir>/1/..., ...]
    sweep_files("results/sweeps/stats-20250101T120000Z")     # the same; [] for what is not a sweep

The same rule as ``report``'s inputs: a ``.jsonl`` file is itself; a directory with
``results.jsonl`` is that file; otherwise its subdirectories' files (``*/results.jsonl``, else
``*/*/results.jsonl``), numbered job directories in numeric order. ``compare`` and ``report``
merge the rows of all of them; a sweep's ``sweep_job`` rows among them are set apart by
:func:`attnbench.sweep.schema.is_sweep_job_row`. A sweep directory is one with ``sweep.json``.
"""
from __future__ import annotations

from pathlib import Path

RESULTS = "results.jsonl"
SWEEP_JSON = "sweep.json"  # what makes a directory a sweep's: the command, its words, its launches


def _order(p: Path) -> tuple:
    """Numbered job directories in numeric order (2 before 10), the others after, by name."""
    return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.parts)


def results_files(path: str | Path) -> list[Path]:
    """Every results.jsonl ``path`` stands for ([] when none)."""
    p = Path(path)
    if p.is_file():
        return [p] if p.suffix == ".jsonl" else []
    if (p / RESULTS).is_file():
        return [p / RESULTS]
    return sorted(p.glob(f"*/{RESULTS}"), key=_order) or sorted(p.glob(f"*/*/{RESULTS}"), key=_order)


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / SWEEP_JSON).is_file()


def sweep_files(path: str | Path) -> list[Path]:
    """The jobs' results files of a sweep directory ([] when ``path`` is not one)."""
    return results_files(path) if is_sweep_dir(path) else []
