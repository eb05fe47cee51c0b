"""A compacted run (``python -m attnbench compact``: rows in ``results.jsonl.gz``) reads as the plain
one everywhere, compacts to the same bytes every time, adds rows after expanding back; every kind
of row gets the parquet columns of its own table."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest

from attnbench import compare, results, schema
from attnbench.cli import main
from attnbench.compact import compact
from attnbench.stats.schema import make_row as stats_row
from attnbench.sweep.collect import results_files
from attnbench.sweep.schema import make_row as sweep_row


def _stats_rows() -> list[dict]:
    return [stats_row(source="random", input="sharp", variant="full@sdpa", seq_len=4, stat="entropy",
                      column="entropy", value=1.25, status="ok", seed=0),
            stats_row(source="random", input="sharp", variant="full@sdpa", seq_len=4, stat="map", column="map",
                      series=[0.5, 0.25, 0.125, 0.125], series_shape=[2, 2], status="ok", seed=0),
            stats_row(source="random", variant="lsh@blocked", stat="map", status="unsupported",
                      reasons=["no probabilities"])]


def _run(out: Path, rows: list[dict], torn: bytes = b"") -> Path:
    out.mkdir(parents=True)
    w = results.ResultsWriter(out / results.ROWS)
    for r in rows:
        w.append(r)
    w.close()
    with open(out / results.ROWS, "ab") as f:
        f.write(torn)
    return out


def test_a_compacted_run_reads_as_the_plain_one(tmp_path):
    plain = _run(tmp_path / "plain", _stats_rows())
    packed = compact(shutil.copytree(plain, tmp_path / "packed")).run_dir
    assert not (packed / results.ROWS).exists() and results.rows_file(packed) == packed / results.COMPACTED
    assert results.read_rows(packed / results.ROWS) == results.read_rows(plain / results.ROWS) == _stats_rows()
    assert results.read_rows(results.rows_file(packed)) == _stats_rows()
    assert results_files(packed) == [packed / results.COMPACTED]  # report's and compare's inputs
    assert results_files(tmp_path) == [packed / results.COMPACTED, plain / results.ROWS]  # a directory of runs
    assert compare.results_file(packed) == packed / results.COMPACTED


def test_compaction_is_deterministic_and_drops_only_a_torn_last_line(tmp_path):
    a = _run(tmp_path / "a", _stats_rows(), torn=b'{"row_kind": "sta')
    b = _run(tmp_path / "b", _stats_rows())
    ca, cb = compact(a), compact(b)
    gz = (a / results.COMPACTED).read_bytes()
    assert gz == (b / results.COMPACTED).read_bytes() and ca.rows == cb.rows == 3
    assert gz[4:8] == b"\0\0\0\0" and gzip.decompress(gz).count(b"\n") == 3  # mtime 0; whole lines only
    assert (a / "results.parquet").read_bytes() == (b / "results.parquet").read_bytes()
    compact(a)  # a compacted run again: the same bytes
    assert (a / results.COMPACTED).read_bytes() == gz


def test_compact_refuses_a_directory_without_rows(tmp_path, capsys):
    assert main(["compact", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path) in err and "results.jsonl" in err


def test_stats_parquet_has_typed_series(tmp_path):
    out = _run(tmp_path / "s", _stats_rows())
    df = pd.read_parquet(results.write_parquet(out))
    assert list(df.columns) == list(results.row_kind("stats").names)
    assert list(df["series"][1]) == [0.5, 0.25, 0.125, 0.125] and list(df["series_shape"][1]) == [2, 2]
    assert df["series"][0] is None and df["value"][0] == 1.25 and list(df["reasons"][2]) == ["no probabilities"]


@pytest.mark.parametrize("name", sorted(results.row_kinds()))
def test_each_row_kind_has_the_columns_of_its_own_table(tmp_path, name):
    kind = results.row_kind(name)
    out = _run(tmp_path / name, [kind.make_row(status="ok", reasons=["a note"])])
    df = pd.read_parquet(results.write_parquet(out))
    assert list(df.columns) == list(kind.names) and len(df) == 1 and list(df["reasons"][0]) == ["a note"]
    assert schema.kind_of(kind.make_row()) == name and kind.is_row(kind.make_row())


def test_a_run_mixing_kinds_writes_one_parquet_per_kind(tmp_path):
    out = _run(tmp_path / "job", [*_stats_rows(), sweep_row(command="stats", job=3, status="error")])
    main_file = results.write_parquet(out)
    assert main_file.name == "results.parquet" and len(pd.read_parquet(main_file)) == 3
    jobs = pd.read_parquet(out / "results.sweep_job.parquet")
    assert list(jobs.columns) == list(results.row_kind("sweep_job").names) and jobs["job"].tolist() == [3]
    (out / results.ROWS).write_text("")  # no sweep_job row any more: its parquet goes
    results.write_parquet(out)
    assert not (out / "results.sweep_job.parquet").exists()


def test_adding_rows_to_a_compacted_stats_run_expands_it_and_says_to_compact_again(tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["stats", "--random", "--variants", "full", "--seq-len", "16", "--heads", "1", "--head-dim", "4",
            "--stats", "entropy", "--out", str(out)]
    assert main(argv) == 0
    first = results.read_rows(out / results.ROWS)
    compact(out)
    assert main(["report", str(out), "--out", str(tmp_path / "r"), "--no-figures"]) == 0  # reads the .gz
    assert "statistic" in (tmp_path / "r" / "README.md").read_text().lower()
    capsys.readouterr()
    assert main([*argv[:-2], "--seed", "1", "--out", str(out)]) == 0
    assert f"python -m attnbench compact {out}" in " ".join(capsys.readouterr().err.split())  # wrapped lines
    assert (out / results.ROWS).is_file() and not (out / results.COMPACTED).exists()
    rows = results.read_rows(out / results.ROWS)
    assert rows[:len(first)] == first and {r["seed"] for r in rows} == {0, 1}
    assert len(pd.read_parquet(out / "results.parquet")) == len(rows)
