"""The end of a training run: ``results.parquet`` of its rows and the accuracy table on stdout."""
from __future__ import annotations

from pathlib import Path

from attnbench.report import accuracy
from attnbench.report.tables import to_markdown
from attnbench.results import read_rows
from attnbench.schema import to_parquet
from attnbench.train import schema


def write_outputs(out: Path) -> Path:
    rows = [r for r in read_rows(out / "results.jsonl") if schema.is_train_row(r)]
    return to_parquet(rows, out / "results.parquet", schema.FIELDS)


def print_summary(out: Path) -> int:
    rows = read_rows(out / "results.jsonl")
    df = accuracy.frame(rows)
    if df.empty:
        print(f"no training rows in {out}")
        return 0
    print(to_markdown(accuracy.table(df)))
    for line in accuracy.reference_lines(df):
        print(line)
    failed = df[df["status"] != "ok"]
    print(f"{len(df)} jobs, {len(failed)} not ok; rows in {out / 'results.jsonl'}")
    return 0
