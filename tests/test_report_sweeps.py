"""``attnbench report`` on runs that hold one variant at several parameter settings (schema 2 rows).

Synthetic runs with known answers, n in 2048, 4096, 8192:
  full@sdpa                     t = 1e-6 n^2 ms, memory 1000 n bytes (the baseline)
  sliding_window@blocked[w]     t = 1e-5 n w / 64 ms, memory 8 n w bytes, w = 32 ... 1024 (default 256);
                                w = 1024 runs out of memory at n = 8192, so the sweep's n is 4096
  performer@favor[r]            t = 1e-4 n r / 64 ms, rel_err 0.8 / sqrt(r), rel_err_sharp 2 / sqrt(r),
                                r = 16, 64, 256 (default), 1024; approximate
  block_sparse@blocked[layout]  layout strided (default) or fixed: a text parameter
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from attnbench.report import build as B
from attnbench.report import sweeps as S

NS = (2048, 4096, 8192)
WINDOWS = (32, 64, 128, 256, 512, 1024)
FEATURES = (16, 64, 256, 1024)
GROUP = "fwd_float32_cpu"


def row(variant: str, n: int, *, family: str, params: dict, label: str = "", status: str = "ok",
        t: float | None = None, mem: float | None = None, exact: bool = True, **extra) -> dict:
    pattern, kernel = variant.split("@")
    r = {"schema_version": 2, "variant": variant, "mode": "fwd", "seq_len": n, "batch": 1, "heads": 8,
         "kv_heads": 8, "head_dim": 64, "dtype": "float32", "device": "cpu", "causal": False, "q_len": n,
         "kv_len": n, "pattern": pattern, "kernel": kernel, "family": family, "exact": exact, "params": params,
         "param_label": label, "status": status, "reasons": [] if status == "ok" else [f"{status} at n={n}"],
         "flops": 4.0 * 8 * 64 * n * n, "threads": 2}
    if status == "ok":
        r.update({"time_ms_median": t, "time_ms_iqr": 0.04 * t, "time_ms_min": 0.98 * t, "repeats": 10,
                  "peak_mem_bytes": mem, "samples_ms": [t] * 10})
    r.update(extra)
    return r


def baseline_rows() -> list[dict]:
    return [row("full@sdpa", n, family="dense", params={}, t=1e-6 * n * n, mem=1000.0 * n) for n in NS]


def window_rows() -> list[dict]:
    rows = []
    for w in WINDOWS:
        for n in NS:
            kw = dict(family="window", params={"window": w}, label="" if w == 256 else f"window={w}")
            if w == 1024 and n == 8192:
                rows.append(row("sliding_window@blocked", n, status="oom", **kw))
            else:
                rows.append(row("sliding_window@blocked", n, t=1e-5 * n * w / 64, mem=8.0 * n * w, **kw))
    return rows


def performer_rows() -> list[dict]:
    rows = []
    for r in FEATURES:
        p = {"nb_features": r, "seed": 0, "orthogonal": True, "chunk": 64, "features": None}
        for n in NS:
            rows.append(row("performer@favor", n, family="linear", params=p, exact=False,
                            label="" if r == 256 else f"nb_features={r}", t=1e-4 * n * r / 64, mem=16.0 * n * r,
                            rel_err=0.8 / math.sqrt(r), rel_err_sharp=2 / math.sqrt(r)))
    return rows


def layout_rows() -> list[dict]:
    return [row("block_sparse@blocked", n, family="sparse", params={"block": 64, "layout": lay},
                label="" if lay == "strided" else f"layout={lay}", t=(2e-4 if lay == "fixed" else 1e-4) * n,
                mem=100.0 * n) for lay in ("strided", "fixed") for n in NS]


def write_run(d: Path, rows: list[dict]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "run.json").write_text(json.dumps({
        "schema_version": 2, "hostname": "testhost", "device": "cpu", "device_name": "Test CPU 2-core",
        "started_at": "2026-01-01T00:00:00+00:00", "torch_version": "2.13.0+cpu", "git_sha": "0123456789abcdef",
        "git_dirty": False, "gemm_peak_gflops": 300.0}))
    return d


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    rows = baseline_rows() + window_rows() + performer_rows() + layout_rows()
    return write_run(tmp_path_factory.mktemp("sweep") / "run", rows)


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweeprep") / "report"
    B.build_report([run_dir], out, "full@sdpa")
    return out


def _csv(report: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(report / "tables" / f"{name}_{GROUP}.csv")


# --------------------------------------------------------------------------------------------
def test_labels_carry_the_params_and_sort_by_value(report):
    t = _csv(report, "time")
    labels = list(dict.fromkeys(t["variant"]))
    sw = [lab for lab in labels if lab.startswith("sliding_window@blocked")]
    # the default setting shows its value too: it is one point of the sweep
    assert sw == [f"sliding_window@blocked[window={w}]" for w in WINDOWS]
    assert "performer@favor[nb_features=16]" in labels and "performer@favor[nb_features=256]" in labels
    assert "block_sparse@blocked[layout=fixed]" in labels and "full@sdpa" == labels[0]
    md = (report / "tables" / f"time_{GROUP}.md").read_text()
    assert "| sliding_window@blocked[window=1024] | window |" in md
    sp = _csv(report, "speedup")
    r = sp[(sp["variant"] == "sliding_window@blocked[window=64]") & (sp["seq_len"] == 4096)].iloc[0]
    assert r["speedup"] == pytest.approx((1e-6 * 4096 ** 2) / (1e-5 * 4096))


def test_a_single_setting_keeps_its_plain_label(tmp_path):
    rows = baseline_rows() + [row("sliding_window@blocked", n, family="window", params={"window": 128},
                                  label="window=128", t=1.0, mem=1.0) for n in NS]
    df = B.load([write_run(tmp_path / "r", rows)]).frame
    assert set(df["label"]) == {"full@sdpa", "sliding_window@blocked[window=128]"}
    rows = baseline_rows() + [row("sliding_window@blocked", n, family="window", params={"window": 256},
                                  t=1.0, mem=1.0) for n in NS]
    df = B.load([write_run(tmp_path / "d", rows)]).frame
    assert set(df["label"]) == {"full@sdpa", "sliding_window@blocked"}


def test_settings_of_one_variant_get_different_line_styles(run_dir):
    from attnbench.report.figures import Style

    df = B.load([run_dir]).frame
    style = Style.from_frame(df)
    first = df.groupby("label", sort=True).first().to_dict("index")
    colors = [style.kw(first[f"sliding_window@blocked[window={w}]"])["color"] for w in WINDOWS]
    assert len(set(colors)) == len(WINDOWS)
    lightness = [sum(c) for c in colors]
    assert lightness == sorted(lightness)  # dark (small window) to light (large window)
    # a variant at one setting keeps the colour of its pattern
    assert style.kw(first["full@sdpa"]) == style.line_kw("full", "sdpa", "dense")


def test_window_sweep_table_values(report):
    s = _csv(report, "sweep_window_sliding-window-blocked")
    assert list(s["value"]) == list(WINDOWS)
    assert set(s["seq_len"]) == {4096}  # window=1024 ran out of memory at 8192
    assert list(s["status"]) == ["ok"] * len(WINDOWS)
    for w, r in zip(WINDOWS, s.to_dict("records")):
        assert r["time_ms_median"] == pytest.approx(1e-5 * 4096 * w / 64, rel=1e-5)
        assert r["time_ms_iqr"] == pytest.approx(0.04 * 1e-5 * 4096 * w / 64, rel=1e-5)
        assert r["peak_mem_mib"] == pytest.approx(8.0 * 4096 * w / 2 ** 20, rel=1e-5)
        assert r["baseline_time_ms"] == pytest.approx(1e-6 * 4096 ** 2, rel=1e-5)
        assert r["speedup"] == pytest.approx(1e-6 * 4096 ** 2 / (1e-5 * 4096 * w / 64), rel=1e-5)
        assert r["label"] == f"sliding_window@blocked[window={w}]" and r["param"] == "window"
    assert s["rel_err"].isna().all()
    md = (report / "tables" / f"sweep_window_sliding-window-blocked_{GROUP}.md").read_text()
    assert "| window | variant | time (ms) [IQR] |" in md and "n = 4096" in md
    assert "| 32 | sliding_window@blocked[window=32] | 0.0205 [0.0008] | 1.00 | 819× |" in md
    assert "rel_err" not in md.split("\n\n")[1]  # an exact variant: no error columns


def test_approximate_sweep_has_errors_and_a_tradeoff_figure(report):
    s = _csv(report, "sweep_nb_features_performer-favor")
    assert list(s["value"]) == list(FEATURES) and set(s["seq_len"]) == {8192}
    assert list(s["rel_err"]) == pytest.approx([0.8 / math.sqrt(r) for r in FEATURES], rel=1e-5)
    assert list(s["rel_err_sharp"]) == pytest.approx([2 / math.sqrt(r) for r in FEATURES], rel=1e-5)
    figs = {f.name for f in (report / "figures").iterdir()}
    assert {f"tradeoff_performer-favor_{GROUP}.png", f"tradeoff_performer-favor_{GROUP}.pdf"} <= figs
    assert not any(f.startswith("tradeoff_sliding") for f in figs)  # exact variants: no trade-off


def test_tradeoff_figure_has_one_point_per_setting(run_dir):
    from attnbench.report.figures import Style
    from attnbench.report.sweep_figures import tradeoff_figure

    df = B.load([run_dir]).frame
    g = df  # one group
    s = next(x for x in S.find_sweeps(g) if x.param == "nb_features")
    recs = S.sweep_records(g, s, "full@sdpa")
    fig = tradeoff_figure(s, recs, "full@sdpa", Style.from_frame(df), g[g["variant"] == s.variant].iloc[0],
                          "desc")
    ax = fig.axes[0]
    series = [ln for ln in ax.get_lines() if str(ln.get_label()).startswith("rel_err")]
    assert len(series) == 2 and all(len(ln.get_xdata()) == len(FEATURES) for ln in series)
    assert sorted(a.get_text() for a in ax.texts) == sorted([str(r) for r in FEATURES] * 2)


def test_text_parameter_gets_a_table_and_a_categorical_figure(report):
    s = _csv(report, "sweep_layout_block-sparse-blocked")
    assert list(s["value"]) == ["fixed", "strided"]
    assert list(s["time_ms_median"]) == pytest.approx([2e-4 * 8192, 1e-4 * 8192])
    assert (report / "figures" / f"sweep_layout_block-sparse-blocked_{GROUP}.png").exists()


def test_readme_indexes_the_sweep_files(report):
    text = (report / "README.md").read_text()
    for f in sorted((report / "tables").iterdir()) + sorted((report / "figures").iterdir()):
        assert f"({f.parent.name}/{f.name})" in text, f.name
    assert "Sweep of window for sliding_window@blocked" in text
    assert "Speed/error trade-off of performer@favor over nb_features" in text


def test_two_swept_parameters_and_a_grid(tmp_path):
    """bigbird[block=32,64,random_blocks=0,3]: each parameter swept at each value of the other."""
    rows = baseline_rows()
    for b in (32, 64):
        for rb in (0, 3):
            p = {"block": b, "random_blocks": rb}
            rows += [row("bigbird@blocked", n, family="sparse", params=p, label=f"block={b},random_blocks={rb}",
                         t=1e-4 * n * (b + rb), mem=1.0 * n) for n in NS]
    df = B.load([write_run(tmp_path / "r", rows)]).frame
    stems = sorted(s.stem for s in S.find_sweeps(df))
    assert stems == ["block_bigbird-blocked-random-blocks-0", "block_bigbird-blocked-random-blocks-3",
                     "random_blocks_bigbird-blocked-block-32", "random_blocks_bigbird-blocked-block-64"]


def test_same_input_gives_identical_sweep_files(run_dir, report, tmp_path):
    out = tmp_path / "report"
    B.build_report([run_dir], out, "full@sdpa")
    files1 = sorted(p.relative_to(report) for p in report.rglob("*") if p.is_file())
    assert files1 == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for rel in files1:
        if rel.suffix in (".md", ".tex", ".csv", ".png") and rel.name.startswith(("sweep_", "tradeoff_", "time_")):
            assert (report / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_run_without_settings_has_no_sweep_files(tmp_path):
    rows = baseline_rows() + [row("sliding_window@blocked", n, family="window", params={"window": 256},
                                  t=1e-5 * n, mem=8.0 * n) for n in NS]
    out = tmp_path / "rep"
    B.build_report([write_run(tmp_path / "r", rows)], out)
    names = {f.name for d in ("tables", "figures") for f in (out / d).iterdir()}
    assert not any(n.startswith(("sweep_", "tradeoff_")) for n in names)
    assert {f.stem for f in (out / "figures").iterdir()} == {f"{m}_{GROUP}" for m in
                                                            ("time", "memory", "speedup", "throughput")}
