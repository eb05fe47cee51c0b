"""One row schema: every writer's row has every field; old runs (schema 1, committed) still load
in report and compare; results.parquet has typed columns; docs/schema.md is generated from it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench import compare, results, schema
from attnbench.results import read_rows, rows_file, upgraded
from attnbench.vocab import STATUSES

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted({p.parent for name in (results.ROWS, results.COMPACTED) for p in (ROOT / "results").rglob(name)})


def _timed(row: dict) -> bool:
    """A kernel row, or a model row of the timed grid (not a max-n probe)."""
    return row.get("row_kind") is None or (row["row_kind"] == "model" and row.get("probe") != "max_n")


# runs with timed rows (a max-n search, statistics or training runs hold none: compare refuses them, tested below)
ROWS = {p: read_rows(rows_file(p)) for p in COMMITTED}
TIMED = [p for p in COMMITTED if any(_timed(r) for r in ROWS[p])]


def test_make_row_has_every_field_and_refuses_unknown_ones():
    row = schema.make_row(variant="full@sdpa", status="unsupported", reasons=["no"])
    assert list(row) == list(schema.NAMES)
    assert row["schema_version"] == schema.SCHEMA_VERSION and row["time_ms_median"] is None
    with pytest.raises(schema.SchemaError, match="unknown row fields"):
        schema.make_row(variant="x", time_median=1.0)
    with pytest.raises(schema.SchemaError, match="status 'fine'"):
        schema.make_row(status="fine")


def test_schema_statuses_are_the_vocabulary():
    assert "status" in schema.NAMES and set(STATUSES) >= {"ok", "unsupported", "skipped"}


@pytest.mark.parametrize("run", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_runs_upgrade_to_complete_rows(run):
    rows = upgraded(read_rows(rows_file(run)))
    assert rows
    for r in rows:
        assert set(schema.NAMES) <= set(r) and r["schema_version"] == schema.SCHEMA_VERSION
        assert isinstance(r["params"], dict) and isinstance(r["param_label"], str)


@pytest.mark.parametrize("run", TIMED, ids=[p.name for p in TIMED])
def test_committed_runs_compare_with_themselves(run, capsys):
    import argparse

    p = argparse.ArgumentParser()
    compare.add_arguments(p)
    rc = compare.main(p.parse_args([str(run), str(run)]))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert " 0 regressed" in out.splitlines()[-1] or out.splitlines()[-1].startswith("0 regressed"), out[-500:]


def test_a_max_n_search_alone_has_nothing_to_compare_and_says_so():
    search_only = [p for p in COMMITTED if ROWS[p] and all(r.get("probe") == "max_n" for r in ROWS[p])]
    assert search_only  # the committed max-n runs
    with pytest.raises(compare.CompareError, match="max-n search probes only"):
        compare.load_run(search_only[0])


@pytest.mark.parametrize("kind", ["stats", "train"])
def test_a_run_of_statistics_or_training_rows_has_nothing_to_compare_and_says_so(kind):
    runs = [p for p in COMMITTED if ROWS[p] and all(r.get("row_kind") == kind for r in ROWS[p])]
    assert runs
    with pytest.raises(compare.CompareError, match="attention statistics or training rows only"):
        compare.load_run(runs[0])


def test_parquet_columns_are_typed(tmp_path):
    import pandas as pd

    rows = [schema.make_row(variant="sliding_window@blocked", params={"window": 64}, param_label="window=64",
                            mode="fwd", seq_len=1024, status="ok", reasons=[], time_ms_median=1.5,
                            samples_ms=[1.4, 1.5, 1.6], repeats=3, peak_mem_bytes=1024, causal=False),
            schema.make_row(variant="full@flex", params={}, param_label="", mode="fwd", seq_len=1024,
                            status="unsupported", reasons=["no backward"], causal=False)]
    df = pd.read_parquet(schema.to_parquet(rows, tmp_path / "results.parquet"))
    assert list(df.columns) == list(schema.NAMES)
    assert df["time_ms_median"].dtype == "float64" and df["seq_len"].dtype == "int64"
    assert df["peak_mem_bytes"].isna().tolist() == [False, True]
    assert json.loads(df["params"][0]) == {"window": 64} and list(df["samples_ms"][0]) == [1.4, 1.5, 1.6]
    assert list(df["reasons"][1]) == ["no backward"]


def test_schema_doc_is_current():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "schema_doc.py"), "--check"], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
