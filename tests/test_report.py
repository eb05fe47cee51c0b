"""``attnbench report``: tables, figures and README from stored rows (synthetic runs with known answers).

The synthetic runs have exact power laws, so fitted exponents and the crossover are known:
  full@sdpa               t = 1e-6 n^2 ms, memory 1000 n bytes      (the baseline)
  lin@fast                t = 3e-3 n ms,   memory 500 n bytes; crossover at n = 3000 (approximate)
  quad@naive              t = 2e-6 n^2 ms, memory 4 n^2 bytes; OOM at n = 8192
  sliding_window@blocked  t = 0.25e-6 n^2 ms (always 4x faster)
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from attnbench.report import build as B
from attnbench.report import tables as T
from attnbench.scaling import fit_loglog

NS = (512, 1024, 2048, 4096, 8192)
RESULTS = Path(__file__).resolve().parents[1] / "results" / "cpu-xeon-2core"


def _row(variant: str, n: int, *, family: str, status: str = "ok", t: float | None = None,
         mem: float | None = None, mode: str = "fwd", dtype: str = "float32", exact: bool = True,
         **extra) -> dict:
    pattern, kernel = variant.split("@")
    r = {"schema_version": 1, "variant": variant, "mode": mode, "seq_len": n, "batch": 1, "heads": 8,
         "kv_heads": 8, "head_dim": 64, "dtype": dtype, "device": "cpu", "causal": False, "q_len": n,
         "kv_len": n, "pattern": pattern, "kernel": kernel, "family": family, "exact": exact,
         "status": status, "reasons": [] if status == "ok" else [f"{status} at n={n}"],
         "flops": 4.0 * 8 * 64 * n * n, "params": {}, "threads": 2}
    if status == "ok":
        r.update({"time_ms_median": t, "time_ms_iqr": 0.02 * t, "time_ms_min": 0.98 * t, "repeats": 10,
                  "peak_mem_bytes": mem, "samples_ms": [t] * 10,
                  "gflops_per_s": r["flops"] / (t * 1e6), "peak_fraction": r["flops"] / (t * 1e6) / 300.0})
    r.update(extra)
    return r


def synthetic_rows() -> list[dict]:
    rows = []
    for n in NS:
        rows.append(_row("full@sdpa", n, family="dense", t=1e-6 * n * n, mem=1000.0 * n))
        rows.append(_row("lin@fast", n, family="linear", t=3e-3 * n, mem=500.0 * n, exact=False,
                         rel_err=0.05, rel_err_sharp=0.4, accuracy=0.61,
                         stats={"entropy": 1.5 + n / 1e4, "sparsity": 0.25}))
        if n < 8192:
            rows.append(_row("quad@naive", n, family="dense", t=2e-6 * n * n, mem=4.0 * n * n, accuracy=0.65))
        else:
            rows.append(_row("quad@naive", n, family="dense", status="oom"))
        rows.append(_row("sliding_window@blocked", n, family="window", t=0.25e-6 * n * n, mem=2000.0 * n,
                         accuracy=0.63))
    rows.append(_row("full@cudnn", 512, family="dense", status="unsupported"))
    return rows


def write_run(d: Path, rows: list[dict], *, started: str = "2026-01-01T00:00:00+00:00",
              device_name: str = "Test CPU 2-core") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "run.json").write_text(json.dumps({
        "schema_version": 1, "hostname": "testhost", "device": "cpu", "device_name": device_name,
        "started_at": started, "torch_version": "2.13.0+cpu", "git_sha": "0123456789abcdef",
        "git_dirty": False, "gemm_peak_gflops": 300.0}))
    return d


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("res") / "run-a", synthetic_rows())


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rep1") / "report"
    B.build_report([run_dir], out, "full@sdpa")
    return out


def _csv(report: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(report / "tables" / f"{name}_fwd_float32_cpu.csv")


# --------------------------------------------------------------------------------------------
def test_scaling_exponents_are_the_known_powers(report):
    s = _csv(report, "scaling").set_index("variant")
    assert s.loc["full@sdpa", "time_exponent"] == pytest.approx(2.0, abs=0.01)
    assert s.loc["lin@fast", "time_exponent"] == pytest.approx(1.0, abs=0.01)
    assert s.loc["full@sdpa", "mem_exponent"] == pytest.approx(1.0, abs=0.01)
    assert s.loc["quad@naive", "mem_exponent"] == pytest.approx(2.0, abs=0.01)
    assert s.loc["full@sdpa", "time_exponent_se"] == pytest.approx(0.0, abs=1e-6)
    # n >= 2048 when two such n exist: 2048..8192 (quad@naive: 2048, 4096 before its OOM)
    assert s.loc["full@sdpa", "time_n_min"] == 2048 and s.loc["full@sdpa", "time_points"] == 3
    assert s.loc["quad@naive", "time_n_max"] == 4096
    md = (report / "tables" / "scaling_fwd_float32_cpu.md").read_text()
    assert "2.00 ± 0.00" in md and "95% confidence interval" in md
    # quad@naive: two points (2048, 4096) whose samples are all equal: a zero-width interval from them
    assert s.loc["quad@naive", "time_exponent_lo"] == pytest.approx(2.0, abs=1e-6)


def test_fit_falls_back_to_all_ok_points_and_reports_spread():
    g = pd.DataFrame([{"seq_len": n, "status": "ok", "time_ms_median": float(n) ** 1.5} for n in (256, 512, 1024)])
    pts, rule = T.fit_points(g, "time_ms_median", 2048)
    assert rule == "all ok n" and len(pts) == 3
    s, se, k = fit_loglog([1, 2, 4, 8], [1.0, 2.2, 3.9, 8.5])
    assert k == 4 and 0.9 < s < 1.1 and 0 < se < 0.1
    assert fit_loglog([1, 2], [1.0, 4.0])[1] != fit_loglog([1, 2], [1.0, 4.0])[1]  # nan with two points


def test_crossover_at_known_n(report):
    c = _csv(report, "crossover").set_index("variant")
    assert c.loc["lin@fast", "verdict"] == "crossover"
    assert c.loc["lin@fast", "crossover_n"] == pytest.approx(3000, rel=1e-3)
    assert c.loc["lin@fast", "first_faster_n"] == 4096
    assert c.loc["sliding_window@blocked", "verdict"] == "always"
    assert c.loc["quad@naive", "verdict"] == "never in range"
    md = (report / "tables" / "crossover_fwd_float32_cpu.md").read_text()
    assert "≈ 3000" in md and "always" in md and "never in range" in md


def test_crossover_rules():
    assert T.crossover([])["verdict"] == "no common n"
    # faster, then slower, then faster for good: the last switch counts
    c = T.crossover([(1, "win", 2.0), (2, "loss", 0.5), (4, "win", 2.0)])
    assert c["verdict"] == "crossover" and c["crossover_n"] == pytest.approx(2 * 2 ** 0.5)
    # the baseline failing (OOM) at the largest n counts as a win, without interpolation
    c = T.crossover([(1, "loss", 0.5), (2, "win", None)])
    assert c["verdict"] == "crossover" and c["crossover_n"] == 2
    assert T.crossover([(1, "win", 2.0), (2, "loss", None)])["verdict"] == "never in range"
    # within the noise: a tie at the largest n is no crossover; ties between a loss and wins bracket it
    assert T.crossover([(1, "loss", 0.5), (2, "tie", 1.1)])["verdict"] == T.NO_CROSSOVER
    c = T.crossover([(1, "loss", 0.5), (2, "tie", 1.02), (4, "win", 2.0)])
    assert c["verdict"] == "crossover" and c["crossover_n"] is None and (c["last_slower_n"], c["first_faster_n"]) == (1, 4)
    c = T.crossover([(1, "tie", 0.98), (2, "win", 2.0)])
    assert c["verdict"] == "faster from" and c["first_faster_n"] == 2


def test_failed_cases_show_their_mark_never_blank(report):
    md = (report / "tables" / "time_fwd_float32_cpu.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    quad = next(ln for ln in lines if ln.startswith("| quad@naive "))
    cells = [c.strip() for c in quad.strip("|").split("|")]
    assert cells[header.index("n=8192")] == "OOM"
    cudnn = next(ln for ln in lines if ln.startswith("| full@cudnn "))
    cc = [c.strip() for c in cudnn.strip("|").split("|")]
    assert cc[header.index("n=512")] == "n/a" and cc[header.index("n=1024")] == "—"
    for ln in lines:
        assert all(c.strip() for c in ln.strip("|").split("|")), ln  # no blank cell anywhere
        assert " 0 " not in ln and "| 0 |" not in ln
    assert "`OOM` out of memory" in md and "`n/a` unsupported" in md and "Legend:" in md
    assert "quad@naive `OOM`: oom at n=8192" in md  # the first reason, under the table
    for name in ("speedup", "memory", "gflops"):
        t = (report / "tables" / f"{name}_fwd_float32_cpu.md").read_text()
        row = next(ln for ln in t.splitlines() if ln.startswith("| quad@naive "))
        assert "OOM" in row and "Legend:" in t


def test_time_cells_carry_the_iqr(report):
    md = (report / "tables" / "time_fwd_float32_cpu.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| full@sdpa "))
    assert "4.19 [0.08]" in row  # 1e-6 * 2048^2 ms, IQR 2 %
    assert "interquartile range" in md


def test_latex_is_booktabs_tabular_with_escaped_underscores(report):
    for f in sorted((report / "tables").glob("*.tex")):
        tex = f.read_text()
        assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex, f.name
        assert "\\documentclass" not in tex and "\\begin{table}" not in tex
        body = [ln for ln in tex.splitlines() if not ln.startswith("%")]
        assert body[0].startswith("\\begin{tabular}") and body[-1] == "\\end{tabular}"
        for ln in body[1:-1]:
            for cell in re.split(r"(?<!\\)&", ln.removesuffix("\\\\")):
                assert not re.search(r"(?<!\\)[_%&#]", cell), (f.name, cell)
    tex = (report / "tables" / "time_fwd_float32_cpu.tex").read_text()
    assert "sliding\\_window@blocked" in tex
    assert "$\\times$" in (report / "tables" / "speedup_fwd_float32_cpu.tex").read_text()


def test_csv_parses_back_with_numbers(report):
    t = _csv(report, "time")
    assert {"device_name", "variant", "seq_len", "status", "time_ms_median"} <= set(t.columns)
    assert pd.api.types.is_float_dtype(t["time_ms_median"])
    ok = t[(t["variant"] == "full@sdpa") & (t["seq_len"] == 4096)].iloc[0]
    assert ok["time_ms_median"] == pytest.approx(1e-6 * 4096 ** 2, rel=1e-5)
    oom = t[(t["variant"] == "quad@naive") & (t["seq_len"] == 8192)].iloc[0]
    assert oom["status"] == "oom" and oom["mark"] == "OOM" and pd.isna(oom["time_ms_median"])
    sp = _csv(report, "speedup")
    r = sp[(sp["variant"] == "sliding_window@blocked") & (sp["seq_len"] == 1024)].iloc[0]
    assert r["speedup"] == pytest.approx(4.0)
    mem = _csv(report, "memory")
    assert mem[(mem["variant"] == "full@sdpa") & (mem["seq_len"] == 1024)]["peak_mem_mib"].iloc[0] == \
        pytest.approx(1000 * 1024 / 2 ** 20, rel=1e-5)
    for f in sorted((report / "tables").glob("*.csv")):
        assert len(pd.read_csv(f)) > 0, f.name


def test_accuracy_and_stats_tables_only_when_rows_have_them(report, tmp_path):
    acc = _csv(report, "accuracy").set_index("variant")
    assert list(acc.index) == ["lin@fast"] and acc.loc["lin@fast", "rel_err_sharp"] == pytest.approx(0.4)
    st = _csv(report, "stats")
    assert {"entropy", "sparsity"} <= set(st.columns) and len(st) == len(NS)
    plain = [{k: v for k, v in r.items() if k not in ("rel_err", "rel_err_sharp", "stats", "accuracy")}
             for r in synthetic_rows()]
    out = tmp_path / "rep"
    B.build_report([write_run(tmp_path / "plain", plain)], out, figures=False)
    names = {f.name for f in (out / "tables").iterdir()}
    assert "time_fwd_float32_cpu.md" in names
    assert not any(n.startswith(("accuracy_", "stats_")) for n in names)


def test_figures_exist_as_png_and_pdf(report):
    figs = sorted((report / "figures").iterdir())
    stems = {f.stem for f in figs}
    assert stems == {f"{m}_fwd_float32_cpu" for m in ("time", "memory", "speedup", "throughput", "bubble")}
    for f in figs:
        data = f.read_bytes()
        assert len(data) > 5000, f.name
        assert data[:8] == b"\x89PNG\r\n\x1a\n" if f.suffix == ".png" else data[:5] == b"%PDF-"
        if f.suffix == ".pdf":
            assert b"/CreationDate" not in data


def test_readme_indexes_every_file(report, run_dir):
    text = (report / "README.md").read_text()
    assert text.startswith(B.GENERATED_MARK)
    for f in sorted((report / "tables").iterdir()) + sorted((report / "figures").iterdir()):
        assert f"({f.parent.name}/{f.name})" in text, f.name
    assert str(run_dir) in text and "Test CPU 2-core" in text and "2026-01-01 00:00:00" in text
    assert "float32" in text and "`OOM` out of memory" in text and "`T/O`" in text


def test_same_input_gives_identical_report(run_dir, report, tmp_path):
    out = tmp_path / "report"  # same folder name: README's title is the folder name
    B.build_report([run_dir], out, "full@sdpa")
    files1 = sorted(p.relative_to(report) for p in report.rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files1 == files2
    for rel in files1:
        if rel.suffix in (".md", ".tex", ".csv"):
            assert (report / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_rebuild_replaces_old_files_and_keeps_hand_written_readme(run_dir, tmp_path):
    out = tmp_path / "rep"
    (out / "tables").mkdir(parents=True)
    (out / "tables" / "time_stale.md").write_text("old")
    B.build_report([run_dir], out, figures=False)
    assert not (out / "tables" / "time_stale.md").exists()
    hand = tmp_path / "hand"
    hand.mkdir()
    (hand / "README.md").write_text("# my notes\n")
    with pytest.raises(B.ReportError, match="did not write"):
        B.build_report([run_dir], hand, figures=False)
    assert (hand / "README.md").read_text() == "# my notes\n"


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def test_baseline_missing_is_a_clear_error(run_dir, tmp_path):
    with pytest.raises(ValueError) as e:
        B.build_report([run_dir], tmp_path / "r", "full@sdpx", figures=False)
    assert isinstance(e.value, B.ReportError)
    msg = str(e.value)
    assert "'full@sdpx'" in msg and "did you mean 'full@sdpa'" in msg and "lin@fast" in msg
    assert not (tmp_path / "r").exists()  # nothing written


def test_bad_paths_and_empty_results(tmp_path):
    with pytest.raises(B.ReportError, match="no_such_dir.*no such file"):
        B.build_report([tmp_path / "no_such_dir"], tmp_path / "r")
    (tmp_path / "empty").mkdir()
    with pytest.raises(B.ReportError, match="no results.jsonl"):
        B.build_report([tmp_path / "empty"], tmp_path / "r")
    write_run(tmp_path / "norows", [])
    with pytest.raises(B.ReportError, match="no result rows"):
        B.build_report([tmp_path / "norows"], tmp_path / "r")


def test_cli_main_prints_one_line_and_exits_2(tmp_path, capsys):
    ap = argparse.ArgumentParser()
    B.add_arguments(ap)
    assert B.main(ap.parse_args([str(tmp_path / "missing"), "--out", str(tmp_path / "o")])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnbench: error: RESULTS") and "missing" in err[0]
    run = write_run(tmp_path / "ok", synthetic_rows())
    assert B.main(ap.parse_args([str(run), "--out", str(tmp_path / "o"), "--no-figures"])) == 0
    assert (tmp_path / "o" / "README.md").exists() and not (tmp_path / "o" / "figures").exists()
    assert B.default_out(["results/cpu-xeon-2core/all-fwd", "results/cpu-xeon-2core/kv-share-decode"]) == \
        Path("reports/cpu-xeon-2core")
    assert B.default_out(["results/cpu-xeon-2core/all-fwd"]) == Path("reports/cpu-xeon-2core/all-fwd")


# --------------------------------------------------------------------------------------------
# merging runs
# --------------------------------------------------------------------------------------------
def test_merge_keeps_device_columns_and_splits_groups(tmp_path):
    a = write_run(tmp_path / "a", synthetic_rows(), device_name="Machine A")
    b = write_run(tmp_path / "b", synthetic_rows(), device_name="Machine B", started="2026-02-01T00:00:00+00:00")
    out = tmp_path / "rep"
    B.build_report([a, b], out, figures=False)
    tabs = {f.name for f in (out / "tables").iterdir()}
    assert {"time_fwd_float32_cpu_machine-a.csv", "time_fwd_float32_cpu_machine-b.csv"} <= tabs
    t = pd.read_csv(out / "tables" / "time_fwd_float32_cpu_machine-b.csv")
    assert set(t["device_name"]) == {"Machine B"} and set(t["run"].dropna()) == {str(b)}
    readme = (out / "README.md").read_text()
    assert "Machine A" in readme and "Machine B" in readme and "replaces" not in readme


def test_merge_dedupes_by_latest_run_and_says_so(tmp_path):
    old = write_run(tmp_path / "old", synthetic_rows(), started="2026-01-01T00:00:00+00:00")
    newer = [_row("full@sdpa", 2048, family="dense", t=9.0, mem=1.0), _row("other@x", 2048, family="dense", t=1.0, mem=1.0)]
    new = write_run(tmp_path / "new", newer, started="2026-03-01T00:00:00+00:00")
    # input order does not matter: started_at decides
    loaded = B.load([new, old])
    df = loaded.frame
    sd = df[(df["variant"] == "full@sdpa") & (df["seq_len"] == 2048)]
    assert len(sd) == 1 and sd["time_ms_median"].iloc[0] == 9.0 and sd["run"].iloc[0] == str(new)
    assert len(df[df["variant"] == "full@sdpa"]) == len(NS)
    note = "\n".join(loaded.notes)
    assert "1 case(s)" in note and f"full@sdpa fwd n=2048: {new} replaces {old}" in note
    out = tmp_path / "rep"
    B.build_report([new, old], out, figures=False)
    assert f"{new} replaces {old}" in (out / "README.md").read_text()


def test_groups_by_mode_and_dtype_in_file_names(tmp_path):
    rows = synthetic_rows() + [_row("full@sdpa", n, family="dense", t=0.01 * n, mem=0.0, mode="decode")
                               for n in NS] + [_row("full@sdpa", 1024, family="dense", t=1.0, mem=1.0,
                                                    dtype="bfloat16")]
    out = tmp_path / "rep"
    B.build_report([write_run(tmp_path / "r", rows)], out, figures=False)
    tabs = {f.name for f in (out / "tables").iterdir()}
    assert {"time_fwd_float32_cpu.md", "time_decode_float32_cpu.md", "time_fwd_bfloat16_cpu.md"} <= tabs


@pytest.mark.skipif(not (RESULTS / "all-fwd" / "results.jsonl").exists(), reason="reference results not present")
def test_reference_results_tables(tmp_path):
    out = tmp_path / "rep"
    B.build_report([RESULTS / "all-fwd"], out, figures=False)
    md = (out / "tables" / "time_fwd_float32_cpu.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| full@naive "))
    assert row.rstrip(" |").endswith("skip")
    s = pd.read_csv(out / "tables" / "scaling_fwd_float32_cpu.csv").set_index("variant")
    assert s.loc["full@naive", "mem_exponent"] == pytest.approx(2.0, abs=0.05)


def test_baseline_failure_and_kv_head_labels(tmp_path):
    rows = [_row("full@sdpa", n, family="dense", t=1e-6 * n * n, mem=1.0) for n in (1024, 2048)]
    rows.append(_row("full@sdpa", 4096, family="dense", status="oom"))
    rows += [_row("win@fast", n, family="linear", t=2e-3 * n, mem=1.0) for n in (1024, 2048, 4096)]
    # the same variant run with 8 and with 2 K/V heads: two rows, told apart by name
    rows += [{**_row("gqa@sdpa", n, family="kv_share", t=1.0, mem=1.0), "kv_heads": kv} for n in (1024,) for kv in (8, 2)]
    out = tmp_path / "rep"
    B.build_report([write_run(tmp_path / "r", rows)], out, figures=False)
    sp = (out / "tables" / "speedup_fwd_float32_cpu.md").read_text()
    win = next(ln for ln in sp.splitlines() if ln.startswith("| win@fast "))
    assert win.rstrip(" |").endswith("no base") and "`no base`" in sp
    c = pd.read_csv(out / "tables" / "crossover_fwd_float32_cpu.csv").set_index("variant")
    assert c.loc["win@fast", "verdict"] == "crossover" and c.loc["win@fast", "first_faster_n"] == 2048
    t = (out / "tables" / "time_fwd_float32_cpu.md").read_text()
    assert "| gqa@sdpa | kv_share | 8 |" in t and "| gqa@sdpa [kv=2] | kv_share | 2 |" in t


def test_inputs_name_the_allocator_and_its_environment(tmp_path):
    d = write_run(tmp_path / "run-m", synthetic_rows())
    info = json.loads((d / "run.json").read_text())
    info.update(allocator="mimalloc", allocator_env={"MIMALLOC_PURGE_DELAY": "60000"})
    (d / "run.json").write_text(json.dumps(info))
    B.build_report([d], tmp_path / "rep", "full@sdpa", figures=False)
    text = (tmp_path / "rep" / "README.md").read_text()
    assert "Allocator (`--allocator`, attnbench/harness/allocator.py): " in text and ": mimalloc." in text
    assert "`MIMALLOC_PURGE_DELAY=60000`" in text
