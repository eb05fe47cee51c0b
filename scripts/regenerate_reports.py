"""Regenerate every committed report from the committed results; never re-measures.

Each run directory ``results/<machine>/<run>/`` (``results.jsonl``, or ``results.jsonl.gz`` where
compacted, + ``run.json``) gets its generated report in ``reports/<machine>/<run>/`` (tables,
figures, README index), built by ``python -m attnbench report``. The training runs of a machine
(``train-<task>``) are also reported together in ``reports/<machine>/train-all/``, with the machine's main kernel run
(``main-fwd``) beside them for the accuracy-speed-memory bubble chart. The hand-written ``reports/<machine>/README.md`` (analysis and
the figures of the scripts' CSVs) is not touched.

    python scripts/regenerate_reports.py              # every run under results/
    python scripts/regenerate_reports.py --check      # rebuild into a temp dir, fail if tables differ
"""
from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attnbench.report.build import build_report  # noqa: E402
from attnbench.results import COMPACTED, ROWS, read_rows, rows_file  # noqa: E402

SKIP = {"runs"}  # results/runs/ holds local, uncommitted runs


def run_dirs(results: Path) -> list[Path]:
    """Run directories, and sweep directories (``sweep.json``: every job's rows in one report)."""
    runs = {p.parent for name in (ROWS, COMPACTED, "sweep.json") for p in results.glob(f"*/*/{name}")}
    return sorted(p for p in runs if p.parent.name not in SKIP)


def jobs_of(run: Path) -> dict[tuple, str]:
    """job key -> config_hash of a training run's rows."""
    from attnbench.train.schema import is_train_row, job_key

    return {job_key(r): r.get("config_hash") for r in read_rows(rows_file(run)) if is_train_row(r)}


def poolable(runs: list[Path]) -> tuple[list[Path], list[Path]]:
    """(runs that pool, runs left to their own report): a run with a job of the same key as an
    earlier run's but another task config (``model.pool=cls`` beside mean pooling) would replace
    that job's row in a combined report."""
    seen: dict[tuple, str] = {}
    keep, apart = [], []
    for run in runs:
        mine = jobs_of(run)
        if any(k in seen and seen[k] != h for k, h in mine.items()):
            apart.append(run)
            continue
        seen.update(mine)
        keep.append(run)
    return keep, apart


def combined(results: Path) -> list[tuple[Path, list[Path]]]:
    """(report path relative to reports/, its inputs): every machine's training runs together."""
    out = []
    for machine in sorted(p for p in results.iterdir() if p.is_dir() and p.name not in SKIP):
        runs = sorted(p for p in machine.glob("train-*") if rows_file(p).is_file())
        # the vision skeletons apart: their tasks are not LRA's, and a pattern not trained on them would
        # lose its place in the LRA-style average and bubble chart
        vision = [p for p in runs if p.name.startswith("train-vision")]
        train = [p for p in runs if p not in vision]
        vision, apart = poolable(vision)
        train, apart2 = poolable(train)
        for p in apart + apart2:
            print(f"{p}: jobs of another task config than an earlier run's; reported on its own only")
        kernel = [machine / "main-fwd"] if rows_file(machine / "main-fwd").is_file() else []
        if train:
            out.append((machine.relative_to(results) / "train-all", train + kernel))
        if vision:
            out.append((machine.relative_to(results) / "vision-all", vision))
    return out


def baseline_for(run: Path, preferred: str = "full@sdpa") -> str:
    """full@sdpa where the run has it, else its first full@* kernel (a run of @flex kernels
    only is compared with full@flex)."""
    from attnbench.sweep.collect import results_files

    have = {r["variant"] for f in results_files(run) for r in read_rows(f) if r.get("variant")}
    if preferred in have:
        return preferred
    full = sorted(v for v in have if v.startswith("full@"))
    return full[0] if full else sorted(have)[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--reports", type=Path, default=Path("reports"))
    ap.add_argument("--check", action="store_true", help="build into a temp dir and compare tables with the committed ones")
    args = ap.parse_args(argv)
    os.chdir(ROOT)  # relative paths: the reports name their inputs the same on every clone
    dirs = run_dirs(args.results)
    if not dirs:
        print(f"no run directories (*/*/results.jsonl or .gz) under {args.results}", file=sys.stderr)
        return 2
    stale = []
    jobs = [(d.relative_to(args.results), [d]) for d in dirs] + combined(args.results)
    for rel, inputs in jobs:
        committed = args.reports / rel
        out = Path(tempfile.mkdtemp()) / rel if args.check else committed
        files = build_report(inputs, out, baseline_for(inputs[-1]), figures=not args.check,
                             say=lambda m: print(f"{rel}: {m}"))
        print(f"{rel}: {len(files)} files -> {out}")
        if args.check:
            for f in (out / "tables").glob("*"):
                twin = committed / "tables" / f.name
                if not twin.exists() or not filecmp.cmp(f, twin, shallow=False):
                    stale.append(str(twin))
    if stale:
        print("stale committed tables (re-run scripts/regenerate_reports.py):\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
