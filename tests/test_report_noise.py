"""``report`` with spread and noise: exponents with their intervals, crossovers only outside the
noise, marked cells, at most LINE_CAP lines per panel, and a notice when merged runs differ.

Synthetic rows with known answers; nothing here times anything.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnbench.report import build as B
from attnbench.report import noise as N
from attnbench.report import tables as T
from attnbench.scaling import LEVEL, fit_loglog, fit_loglog_ci

GROUP = "fwd_float32_cpu"


def row(variant: str, n: int, *, family: str = "dense", t: float, spread: float = 0.01, params: dict | None = None,
        label: str = "", version: int = 2, **extra) -> dict:
    """An ok row whose ten samples lie evenly within ±``spread`` of ``t``."""
    pattern, kernel = variant.split("@")
    samples = [t * (1 + spread * x) for x in np.linspace(-1, 1, 10)]
    q1, q3 = np.percentile(samples, [25, 75])
    r = {"schema_version": version, "variant": variant, "mode": "fwd", "seq_len": n, "batch": 1, "heads": 8,
         "kv_heads": 8, "head_dim": 64, "dtype": "float32", "device": "cpu", "causal": False, "q_len": n,
         "kv_len": n, "pattern": pattern, "kernel": kernel, "family": family, "exact": True,
         "params": params or {}, "param_label": label, "status": "ok", "reasons": [], "threads": 2,
         "time_ms_median": t, "time_ms_iqr": float(q3 - q1), "time_ms_min": min(samples), "repeats": 10,
         "samples_ms": samples, "peak_mem_bytes": 1000.0 * n}
    r.update(extra)
    return r


def write_run(d: Path, rows: list[dict], **info) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "run.json").write_text(json.dumps({
        "schema_version": 2, "hostname": "testhost", "device": "cpu", "device_name": "Test CPU", "cpu_model": "Test CPU",
        "started_at": "2026-01-01T00:00:00+00:00", "torch_version": "2.13.0+cpu", "torch_threads": 2,
        "git_sha": "0123456789abcdef", "git_dirty": False, "gemm_peak_gflops": 300.0, **info}))
    return d


def _md_row(md: str, label: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


# --------------------------------------------------------------------------------------------
# exponents with their confidence interval
# --------------------------------------------------------------------------------------------
def test_exact_power_law_has_a_zero_width_interval():
    ns = [1024, 2048, 4096, 8192]
    f = fit_loglog_ci(ns, [3e-6 * n ** 1.5 for n in ns])
    assert f.slope == pytest.approx(1.5) and f.se == pytest.approx(0.0, abs=1e-9)
    assert f.lo == pytest.approx(1.5) and f.hi == pytest.approx(1.5) and f.points == 4
    assert fit_loglog(ns, [3e-6 * n ** 1.5 for n in ns])[0] == pytest.approx(1.5)  # the 3-tuple still works


def test_interval_of_noisy_data_covers_the_true_slope():
    rng = np.random.default_rng(0)
    ns = np.array([512, 1024, 2048, 4096, 8192, 16384], dtype=float)
    covered, widths = 0, []
    trials = 400
    for _ in range(trials):
        y = 1e-6 * ns ** 2 * np.exp(rng.normal(0, 0.1, ns.size))  # 10% log-normal noise per point
        f = fit_loglog_ci(ns, y)
        covered += f.lo <= 2.0 <= f.hi
        widths.append(f.half_width)
    assert 0.90 <= covered / trials <= 0.99  # nominal LEVEL = 95%
    assert LEVEL == 0.95 and 0.02 < float(np.median(widths)) < 0.2


def test_points_own_intervals_set_a_floor_and_give_two_points_an_interval():
    ns, y = [2048, 4096, 8192], [1.0, 4.0, 16.0]  # exactly on n^2: no residual
    assert fit_loglog_ci(ns, y).half_width == pytest.approx(0.0, abs=1e-9)
    f = fit_loglog_ci(ns, y, ci_rel=[0.05, 0.05, 0.05])
    assert f.slope == pytest.approx(2.0) and 0.01 < f.half_width < 0.2
    two = fit_loglog_ci([2048, 4096], [1.0, 4.0])
    assert two.slope == pytest.approx(2.0) and math.isnan(two.lo)  # nothing to say how sure
    assert T.fmt_slope(two) == "2.00 (no interval: 2 points)"
    two = fit_loglog_ci([2048, 4096], [1.0, 4.0], ci_rel=[0.1, 0.1])
    assert two.lo < 2.0 < two.hi and T.fmt_slope(two).startswith("2.00 ± ")


# --------------------------------------------------------------------------------------------
# crossovers and speed-ups only outside the noise
# --------------------------------------------------------------------------------------------
NS = (1024, 2048, 4096, 8192)


def _crossover_run(tmp_path: Path, spread: float) -> pd.DataFrame:
    """lin@fast: twice as slow as the baseline at 1024, then 4% faster at every larger n."""
    rows = []
    for n in NS:
        base = 1e-6 * n * n
        rows.append(row("full@sdpa", n, t=base, spread=spread))
        rows.append(row("lin@fast", n, family="linear", t=2 * base if n == 1024 else base / 1.04, spread=spread))
    out = tmp_path / f"rep-{spread}"
    B.build_report([write_run(tmp_path / f"run-{spread}", rows)], out, figures=False)
    return out


def test_a_crossover_inside_the_noise_is_not_claimed(tmp_path):
    out = _crossover_run(tmp_path, spread=0.3)  # ±30% samples: 4% faster is inside the noise
    c = pd.read_csv(out / "tables" / f"crossover_{GROUP}.csv").set_index("variant")
    assert c.loc["lin@fast", "verdict"] == T.NO_CROSSOVER and pd.isna(c.loc["lin@fast", "crossover_n"])
    md = (out / "tables" / f"crossover_{GROUP}.md").read_text()
    assert _md_row(md, "lin@fast")[2] == T.NO_CROSSOVER and "≈" not in _md_row(md, "lin@fast")[2]
    assert _md_row(md, "lin@fast")[4] == "1.04× ns at n=8192"
    sp = (out / "tables" / f"speedup_{GROUP}.md").read_text()
    assert _md_row(sp, "lin@fast")[-1].startswith("1.04× ns") and "`ns` within the noise" in sp


def test_a_crossover_outside_the_noise_is_claimed(tmp_path):
    out = _crossover_run(tmp_path, spread=0.005)  # ±0.5% samples: 4% faster is outside the noise
    c = pd.read_csv(out / "tables" / f"crossover_{GROUP}.csv").set_index("variant")
    assert c.loc["lin@fast", "verdict"] == "crossover" and c.loc["lin@fast", "first_faster_n"] == 2048
    assert 1024 < c.loc["lin@fast", "crossover_n"] < 2048 and bool(c.loc["lin@fast", "outside_noise_at_n_max"])
    sp = (out / "tables" / f"speedup_{GROUP}.md").read_text()
    assert _md_row(sp, "lin@fast")[-1] == "1.04×" and "`ns` within the noise" not in sp  # no legend: unused
    assert _md_row(sp, "full@sdpa")[-1] == "1.00×"  # the baseline against itself claims nothing


def test_faster_uses_the_ci_then_the_samples_and_never_a_noisy_row():
    a, b = row("a@x", 1024, t=1.0, spread=0.01), row("b@x", 1024, t=1.1, spread=0.01)
    assert N.faster(a, b) == 1 and N.faster(b, a) == -1
    assert N.faster({**a, "time_ci_rel": 0.2}, b) == 0  # the stored interval wins over the samples
    assert N.faster({**a, "noisy": True}, b) == 0
    old = {**a, "samples_ms": None}  # no samples, no ci: median ± IQR/2
    assert N.median_interval(old) == pytest.approx((1.0 - a["time_ms_iqr"] / 2, 1.0 + a["time_ms_iqr"] / 2))


# --------------------------------------------------------------------------------------------
# noisy and unstable cells are marked
# --------------------------------------------------------------------------------------------
def test_noisy_and_unstable_cells_carry_a_mark_and_a_legend(tmp_path):
    rows = [row("full@sdpa", n, t=1e-6 * n * n) for n in NS]
    rows += [row("lin@fast", n, family="linear", t=1e-3 * n, noisy=(n == 2048), wait_share=0.4 if n == 2048 else 0.0,
                 disturbed_samples=7 if n == 2048 else 0, spread=0.5 if n == 4096 else 0.01) for n in NS]
    out = tmp_path / "rep"
    B.build_report([write_run(tmp_path / "run", rows)], out, figures=False)
    md = (out / "tables" / f"time_{GROUP}.md").read_text()
    header = [c.strip() for c in md.splitlines()[2].strip("|").split("|")]
    cells = dict(zip(header, _md_row(md, "lin@fast")))
    assert cells["n=2048"].endswith(f" {T.NOISY}") and cells["n=4096"].endswith(f" {T.UNSTABLE}")
    assert not cells["n=1024"].endswith((T.NOISY, T.UNSTABLE))
    assert f"`{T.NOISY}` noisy" in md and f"`{T.UNSTABLE}` unstable" in md and "10% of the median" in md
    csv = pd.read_csv(out / "tables" / f"time_{GROUP}.csv")
    lin = csv[csv["variant"] == "lin@fast"].set_index("seq_len")
    assert lin.loc[2048, "noise"] == "noisy" and lin.loc[4096, "noise"] == "unstable"
    assert lin.loc[2048, "wait_share"] == pytest.approx(0.4) and lin.loc[2048, "disturbed_samples"] == 7
    sp = (out / "tables" / f"speedup_{GROUP}.md").read_text()
    assert dict(zip(header, _md_row(sp, "lin@fast")))["n=2048"].endswith(f"ns {T.NOISY}")  # never a clean speed-up
    tex = (out / "tables" / f"time_{GROUP}.tex").read_text()
    assert "\\dag{}" in tex and "\\textasciitilde{}" in tex
    readme = (out / "README.md").read_text()
    assert "## Spread and noise" in readme and f"`{T.UNSTABLE}` unstable" in readme


def test_unstable_threshold_is_one_constant():
    r = row("a@x", 1024, t=1.0)
    assert not N.is_unstable({**r, "time_ms_iqr": N.UNSTABLE_IQR_REL * 0.99})
    assert N.is_unstable({**r, "time_ms_iqr": N.UNSTABLE_IQR_REL * 1.01})
    assert N.noise_mark({**r, "noisy": None}) == "" and N.noise_mark({**r, "noisy": True}) == T.NOISY


# --------------------------------------------------------------------------------------------
# figures: at most LINE_CAP lines per panel, told apart
# --------------------------------------------------------------------------------------------
def test_no_panel_holds_more_than_the_line_cap(tmp_path):
    import matplotlib

    from attnbench.report import figures as F

    windows = [16 * (i + 1) for i in range(17)]
    rows = [row("full@sdpa", n, t=1e-6 * n * n) for n in NS]
    rows += [row("sliding_window@blocked", n, family="window", t=1e-5 * n * w / 64, params={"window": w},
                 label=f"window={w}") for w in windows for n in NS]
    df = B.load([write_run(tmp_path / "run", rows)]).frame
    labels = set(df["label"])
    drawn = []
    with matplotlib.rc_context(F.rc_params()):
        fig = F.line_figure(df, "time", "full@sdpa", F.Style.from_frame(df), "desc")
    for ax in fig.axes:
        lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) and
                 str(ln.get_label()).removesuffix(" (baseline)") in labels]
        assert 0 < len(lines) <= F.LINE_CAP
        colors = [ln.get_color() for ln in lines]
        assert len(set(map(str, colors))) == len(colors)  # every line of a panel its own colour
        drawn += [str(ln.get_label()) for ln in lines if "(baseline)" not in str(ln.get_label())]
    assert sorted(drawn) == sorted(labels - {"full@sdpa"})  # every setting once, in some panel
    assert len(fig.axes) >= 3 and any("settings 1–" in ax.get_title(loc="left") for ax in fig.axes)


# --------------------------------------------------------------------------------------------
# merged runs of different machines or schema versions
# --------------------------------------------------------------------------------------------
def test_merging_different_machines_and_schema_versions_says_so(tmp_path, capsys):
    a = write_run(tmp_path / "a", [row("full@sdpa", n, t=1e-6 * n * n, version=1) for n in NS],
                  cpu_model="AMD EPYC", device_name="AMD EPYC", gemm_peak_gflops=170.0, schema_version=1)
    b = write_run(tmp_path / "b", [row("full@sdpa", n, t=1e-6 * n * n, version=2) for n in NS],
                  cpu_model="Intel Xeon", device_name="Intel Xeon", gemm_peak_gflops=320.0,
                  started_at="2026-02-01T00:00:00+00:00")
    ap = argparse.ArgumentParser()
    B.add_arguments(ap)
    out = tmp_path / "rep"
    assert B.main(ap.parse_args([str(a), str(b), "--out", str(out), "--no-figures"])) == 0
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Merged")]
    assert len(printed) == 1
    line = printed[0]
    assert "schema versions 1, 2" in line and "AMD EPYC / Intel Xeon" in line and "GEMM peak 170–320" in line
    assert line in (out / "README.md").read_text()


def test_merging_two_cpus_of_one_model_name_says_so(tmp_path):
    """A cloud's "AMD EPYC" is more than one CPU: run.json's ``cpu`` tells them apart, in the
    merge line and in the Inputs table; a run from before the record counts as neither."""
    zen3 = {"vendor": "AuthenticAMD", "family": "25", "model": "1", "isa": "AVX2", "l2": 512 << 10, "l3": 32 << 20}
    zen4 = {**zen3, "model": "17", "isa": "AVX-512", "l2": 1 << 20}
    a = write_run(tmp_path / "a", [row("full@sdpa", n, t=1.0) for n in NS[:2]], cpu=zen3)
    b = write_run(tmp_path / "b", [row("full@sdpa", n, t=1.0) for n in NS[2:]], cpu=zen4)
    c = write_run(tmp_path / "c", [row("full@sdpa", n, t=1.0) for n in NS[:1]])
    said = []
    B.build_report([a, b, c], tmp_path / "rep", figures=False, say=said.append)
    assert len(said) == 1 and ("CPU family 25 model 1, AVX2, L2 512 KiB, L3 32 MiB / family 25 model 17, "
                               "AVX-512, L2 1 MiB, L3 32 MiB") in said[0]
    text = (tmp_path / "rep" / "README.md").read_text()
    assert "| Test CPU (family 25 model 17, AVX-512, L2 1 MiB, L3 32 MiB) |" in text
    said = []
    B.build_report([a, c], tmp_path / "rep2", figures=False, say=said.append)
    assert said == []


def test_merging_runs_of_one_machine_says_nothing(tmp_path):
    a = write_run(tmp_path / "a", [row("full@sdpa", n, t=1.0) for n in NS[:2]])
    b = write_run(tmp_path / "b", [row("full@sdpa", n, t=1.0) for n in NS[2:]], gemm_peak_gflops=310.0)
    said = []
    B.build_report([a, b], tmp_path / "rep", figures=False, say=said.append)
    assert said == [] and "Merged" not in (tmp_path / "rep" / "README.md").read_text()
