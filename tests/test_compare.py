"""``attnbench compare``: verdicts that hold up against noise.

Synthetic runs (seeded lognormal samples with 3-10% spread and occasional slow outliers, the
shape of real CPU timings) stand in for benchmarks, so the file is fast: an A/A study (20
pairs of runs of the same kernels, at most one false alarm), a 10% slowdown that must be
flagged at a 5% threshold, the no-samples fallback, status changes, and bad input (exit 2,
one line). One test times a real CPU kernel (torch.mm) against itself plus a 30% spin.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest

from attnbench import compare
from attnbench.results import read_rows
from attnbench.schema import KEY_FIELDS

REFERENCE_RUNS = Path(__file__).resolve().parents[1] / "results" / "cpu-xeon-2core"

# (variant, n, median ms, relative spread sigma of the lognormal)
CASES = [
    ("full@sdpa", 512, 0.9, 0.05), ("full@sdpa", 1024, 3.1, 0.04), ("full@sdpa", 2048, 12.0, 0.03),
    ("full@naive", 512, 4.0, 0.08), ("full@naive", 1024, 15.0, 0.06),
    ("sliding_window@blocked", 1024, 2.2, 0.10), ("sliding_window@blocked", 2048, 4.5, 0.07),
]


def row(variant: str, n: int, samples=None, *, status: str = "ok", median=None, iqr=None,
        schema_version: int = 1, device: str = "cpu", reasons=()) -> dict:
    r = {"schema_version": schema_version, "variant": variant, "mode": "fwd", "seq_len": n, "batch": 1,
         "heads": 8, "kv_heads": 8, "head_dim": 64, "dtype": "float32", "device": device,
         "causal": False, "status": status, "reasons": list(reasons)}
    if samples is not None:
        a = np.asarray(samples, dtype=float)
        q1, med, q3 = np.percentile(a, [25, 50, 75])
        r.update(time_ms_median=float(med), time_ms_iqr=float(q3 - q1), time_ms_min=float(a.min()),
                 repeats=int(a.size), samples_ms=[round(float(x), 6) for x in a])
    elif status == "ok":
        r.update(time_ms_median=median, time_ms_iqr=iqr, repeats=3)
    return r


def synth_samples(rng, median: float, sigma: float, count: int) -> np.ndarray:
    """Lognormal around ``median`` with ~5% of samples hit by a 10-40% slow outlier."""
    s = median * rng.lognormal(0.0, sigma, size=count)
    hit = rng.random(count) < 0.05
    s[hit] *= 1.0 + rng.uniform(0.1, 0.4, size=hit.sum())
    return s


def synth_run(seed: int, *, slow: dict[str, float] | None = None, count: int = 40) -> list[dict]:
    rng = np.random.default_rng(seed)
    slow = slow or {}
    return [row(v, n, synth_samples(rng, med * slow.get(v, 1.0), sigma, count)) for v, n, med, sigma in CASES]


def write_run(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="attnbench compare")
    compare.add_arguments(p)
    return p.parse_args(list(map(str, argv)))


# -- noise: the A/A study and a real slowdown ------------------------------------------------
def test_a_a_at_most_one_false_alarm_in_20_pairs():
    alarms, worst = 0, 1.0
    for i in range(20):
        df = compare.compare_runs(synth_run(1000 + 2 * i), synth_run(1001 + 2 * i), 0.05, 0.01)
        assert len(df) == len(CASES) and set(df["test"]) == {"mann-whitney"}
        alarms += compare.failed(df)
        worst = max(worst, df["ratio"].max())
        assert not (df["verdict"] == "improved").any(), df
    assert alarms <= 1, f"{alarms} false alarms in 20 A/A comparisons (worst ratio {worst:.3f})"


def test_a_a_on_real_samples_split_in_halves():
    """Real stored samples (autocorrelated, heavy-tailed): odd vs even repeats of one run."""
    rows = [r for d in ("patterns-blocked-fwd", "kv-share-decode")
            for r in read_rows(REFERENCE_RUNS / d / "results.jsonl") if len(r.get("samples_ms") or []) >= 20]
    assert len(rows) >= 20

    def half(r, k):
        return row(r["variant"], r["seq_len"], r["samples_ms"][k::2]) | {"mode": r["mode"]}

    df = compare.compare_runs([half(r, 0) for r in rows], [half(r, 1) for r in rows], 0.05, 0.01)
    assert len(df) == len(rows)
    assert (df["verdict"] == "same").mean() >= 0.95, df[df["verdict"] != "same"]


def test_ten_percent_slowdown_flagged_at_five_percent(tmp_path, capsys):
    base = write_run(tmp_path / "base", synth_run(7))
    new = write_run(tmp_path / "new", synth_run(8, slow={"full@naive": 1.10}))
    rc = compare.main(cli(base, new, "--threshold", "5%"))
    out = capsys.readouterr().out
    assert rc == 1
    df = compare.compare_runs(read_rows(base / "results.jsonl"), read_rows(new / "results.jsonl"), 0.05, 0.01)
    flagged = df[df["verdict"] == "regressed"]
    assert set(flagged["variant"]) == {"full@naive"} and len(flagged) == 2
    assert (flagged["p_adj"] < 1e-3).all() and (flagged["ratio"] > 1.05).all()
    # worst first: the regressed cases head the table, larger ratio first
    assert list(df["verdict"][:2]) == ["regressed", "regressed"]
    assert df["ratio"][0] >= df["ratio"][1]
    assert "2 regressed beyond 5%, 0 improved beyond 5%, 5 same" in out
    assert "full@naive" in out and "regressed" in out
    # the same slowdown is within a 15% threshold
    assert compare.main(cli(base, new, "--threshold", "0.15")) == 0


def test_two_cpus_of_one_name_are_named_in_the_output(tmp_path, capsys):
    zen3 = {"family": "25", "model": "1", "isa": "AVX2", "l2": 512 << 10, "l3": 32 << 20}
    runs = []
    for name, cpu in (("base", {**zen3, "model": "17", "isa": "AVX-512", "l2": 1 << 20}), ("new", zen3)):
        d = write_run(tmp_path / name, synth_run(7))
        (d / "run.json").write_text(json.dumps({"device_name": "AMD EPYC", "cpu": cpu}))
        runs.append(d)
    compare.main(cli(*runs))
    out = " ".join(capsys.readouterr().out.split())  # rich may wrap the long lines
    assert "AMD EPYC (family 25 model 17, AVX-512, L2 1 MiB, L3 32 MiB)" in out
    assert "AMD EPYC (family 25 model 1, AVX2, L2 512 KiB, L3 32 MiB)" in out
    assert "different CPUs: BASE family 25 model 17" in out


def test_speedup_is_improved_and_passes(tmp_path, capsys):
    base = write_run(tmp_path / "base", synth_run(7))
    new = write_run(tmp_path / "new", synth_run(8, slow={"full@sdpa": 0.8}))
    assert compare.main(cli(base, new)) == 0
    assert "0 regressed beyond 5%, 3 improved beyond 5%" in capsys.readouterr().out


def test_holm_adjustment():
    assert compare.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert compare.holm([]) == []


def test_large_ratio_without_significance_is_same():
    """Two samples each way apart by 20% but only 5 noisy samples: not significant -> same."""
    b = [row("k@x", 64, [10, 30, 11, 29, 12])]
    n = [row("k@x", 64, [12, 36, 13, 35, 14])]
    df = compare.compare_runs(b, n, 0.05, 0.01)
    assert df["ratio"][0] > 1.05 and df["p_value"][0] > 0.01 and df["verdict"][0] == "same"


# -- fallback without samples ----------------------------------------------------------------
def test_fallback_without_samples_uses_iqr_overlap():
    base = [row("a@x", 512, median=10.0, iqr=0.4), row("b@x", 512, median=10.0, iqr=0.4),
            row("c@x", 512, median=10.0, iqr=0.4), row("d@x", 512, median=10.0, iqr=None)]
    new = [row("a@x", 512, median=11.0, iqr=0.4),   # [10.8, 11.2] vs [9.8, 10.2]: apart
           row("b@x", 512, median=11.0, iqr=2.0),   # [10.0, 12.0] overlaps: noise
           row("c@x", 512, median=9.0, iqr=0.4),    # faster, apart
           row("d@x", 512, median=10.3, iqr=None)]  # within the threshold
    df = compare.compare_runs(base, new, "5%", 0.01).set_index("variant")
    assert set(df["test"]) == {"iqr"} and df["p_value"].isna().all()
    assert df.loc["a@x", "verdict"] == "regressed"
    assert df.loc["b@x", "verdict"] == "same"
    assert df.loc["c@x", "verdict"] == "improved"
    assert df.loc["d@x", "verdict"] == "same"


def test_fallback_with_few_samples_uses_their_quartiles():
    base = [row("a@x", 512, [10.0, 10.1, 9.9])]
    df = compare.compare_runs(base, [row("a@x", 512, [12.0, 12.1, 11.9])], 0.05, 0.01)
    assert df["test"][0] == "iqr" and df["verdict"][0] == "regressed"
    df = compare.compare_runs(base, [row("a@x", 512, [7.0, 12.1, 14.0])], 0.05, 0.01)
    assert df["verdict"][0] == "same"


# -- status changes and one-sided cases ------------------------------------------------------
def test_status_changes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    s = lambda m: synth_samples(rng, m, 0.05, 20)  # noqa: E731
    base = [row("a@x", 512, s(1.0)), row("a@x", 1024, s(4.0)),
            row("b@x", 512, status="error", reasons=["RuntimeError: boom"]),
            row("c@x", 512, s(2.0)), row("d@x", 512, s(1.0)),
            row("e@x", 512, status="unsupported", reasons=["device cpu not supported"])]
    new = [row("a@x", 512, s(1.0)), row("a@x", 1024, status="oom", reasons=["OutOfMemoryError: 4 GB"]),
           row("b@x", 512, s(1.0)),
           row("c@x", 512, status="skipped", reasons=["predicted peak exceeds budget"]),
           row("e@x", 512, status="unsupported", reasons=["device cpu not supported"]),
           row("f@x", 512, s(1.0))]
    df = compare.compare_runs(base, new, 0.05, 0.01)
    v = {(r.variant, r.seq_len): r.verdict for r in df.itertuples()}
    assert v == {("a@x", 512): "same", ("a@x", 1024): "broken", ("b@x", 512): "fixed",
                 ("c@x", 512): "not run", ("d@x", 512): "gone", ("e@x", 512): "n/a",
                 ("f@x", 512): "new"}
    assert df["verdict"][0] == "broken"  # worst first
    rc = compare.main(cli(write_run(tmp_path / "b", base), write_run(tmp_path / "n", new)))
    out = capsys.readouterr().out
    assert rc == 1
    assert "OOM" in out and "broken: a@x fwd n=1024: oom: OutOfMemoryError: 4 GB" in out
    assert "0 regressed beyond 5%, 1 broken" in out and "1 new" in out and "1 gone" in out


def test_only_new_and_gone_cases_do_not_fail(tmp_path):
    base = synth_run(3)
    new = synth_run(4)[:-2] + [row("extra@x", 512, synth_samples(np.random.default_rng(1), 1.0, 0.05, 20))]
    df = compare.compare_runs(base, new, 0.05, 0.01)
    assert (df["verdict"] == "gone").sum() == 2 and (df["verdict"] == "new").sum() == 1
    assert compare.main(cli(write_run(tmp_path / "b", base), write_run(tmp_path / "n", new))) == 0


# -- bad input: exit 2 with one line ---------------------------------------------------------
def _exit2(capsys, *argv) -> str:
    rc = compare.main(cli(*argv))
    cap = capsys.readouterr()
    assert rc == 2, cap
    assert cap.err.startswith("attnbench: error:") and cap.err.count("\n") == 1, cap.err
    assert cap.out == ""
    return cap.err


def test_old_schema_rows_match_new_rows(tmp_path, capsys):
    """Schema 1 rows (no parameters recorded: they ran at the defaults) match schema 2 rows that
    record the declared defaults: every case is compared, none is 'new' or 'gone'."""
    from attnbench.catalog import get

    b = write_run(tmp_path / "b", synth_run(1))
    v2 = [r | {"schema_version": 2, "params": get(r["variant"]).defaults} for r in synth_run(2)]
    n = write_run(tmp_path / "n", v2)
    rc = compare.main(cli(b, n))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "new" not in out.split("same")[-1] and "gone" not in out, out


def test_rows_without_schema_version_are_version_1(tmp_path, capsys):
    b = write_run(tmp_path / "b", [{k: v for k, v in r.items() if k != "schema_version"} for r in synth_run(1)])
    rc = compare.main(cli(b, write_run(tmp_path / "n", synth_run(2))))
    assert rc == 0, capsys.readouterr()


def test_newer_schema_exit_2(tmp_path, capsys):
    b = write_run(tmp_path / "b", synth_run(1))
    n = write_run(tmp_path / "n", [r | {"schema_version": 99} for r in synth_run(2)])
    err = _exit2(capsys, b, n)
    assert "schema_version 99 is newer than this attnbench's" in err


def test_nothing_matched_exit_2_lists_both_sides(tmp_path, capsys):
    b = write_run(tmp_path / "b", synth_run(1))
    n = write_run(tmp_path / "n", [r | {"device": "cuda"} for r in synth_run(2)])
    err = _exit2(capsys, b, n)
    assert "no case of NEW matches a case of BASE" in err
    assert "device (base cpu vs new cuda)" in err
    assert "BASE has 7 rows: variants 3 (full@naive, full@sdpa, sliding_window@blocked)" in err
    assert "n 512..2048 (3 values)" in err


@pytest.mark.parametrize("bad", ["5x", "abc", "150%", "5", "0", "-5%", ""])
def test_bad_threshold_exit_2(tmp_path, capsys, bad):
    b = write_run(tmp_path / "b", synth_run(1))
    err = _exit2(capsys, b, b, f"--threshold={bad}")
    assert f"--threshold {bad!r}" in err and "'5%'" in err and "0.05" in err


def test_threshold_forms_agree():
    assert compare.parse_threshold("5%") == pytest.approx(0.05) == compare.parse_threshold("0.05")
    assert compare.parse_threshold(" 12.5% ") == pytest.approx(0.125)


def test_bad_alpha_and_missing_paths_exit_2(tmp_path, capsys):
    b = write_run(tmp_path / "b", synth_run(1))
    assert "--alpha '2'" in _exit2(capsys, b, b, "--alpha", "2")
    assert "no results.jsonl in directory" in _exit2(capsys, b, tmp_path)
    assert "no such file" in _exit2(capsys, b, tmp_path / "nope")
    (tmp_path / "empty.jsonl").write_text("")
    assert "holds no result rows" in _exit2(capsys, b, tmp_path / "empty.jsonl")
    assert "--variants 'zzz*'" in _exit2(capsys, b, b, "--variants", "zzz*")


# -- the CLI surface -------------------------------------------------------------------------
def test_cli_accepts_files_filters_and_writes_csv(tmp_path, capsys):
    b = write_run(tmp_path / "b", synth_run(7)) / "results.jsonl"
    n = write_run(tmp_path / "n", synth_run(8, slow={"full@naive": 1.10})) / "results.jsonl"
    csv = tmp_path / "cmp.csv"
    assert compare.main(cli(b, n, "--variants", "full@sdpa,sliding*", "--csv", csv)) == 0
    out = capsys.readouterr().out
    assert "full@naive" not in out and "0 regressed beyond 5%, 0 improved beyond 5%, 5 same" in out
    import pandas as pd

    df = pd.read_csv(csv)
    assert len(df) == 5 and {*KEY_FIELDS, "ratio", "p_value", "verdict"} <= set(df.columns)


def test_reference_run_against_itself(capsys):
    d = REFERENCE_RUNS / "all-fwd"
    assert compare.main(cli(d, d)) == 0
    out = capsys.readouterr().out
    assert "0 regressed beyond 5%" in out and "n/a (not failures)" in out


# -- a real measured kernel ------------------------------------------------------------------
def test_real_kernel_slowdown_flagged_and_a_a_passes():
    """torch.mm timed by the harness, against itself and against itself plus a 30% spin.

    The three are measured in interleaved rounds, so a change in the machine's load (other
    jobs on two shared cores) hits all of them alike.
    """
    import torch

    from attnbench.harness.timing import measure

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(256, 256), torch.randn(256, 256)
        base = lambda: torch.mm(a, b)  # noqa: E731
        extra_s = 0.3 * measure(base, budget_s=0.1, warmup_s=0.05).median_ms / 1e3

        def slowed():
            out = torch.mm(a, b)
            t_end = time.perf_counter() + extra_s
            while time.perf_counter() < t_end:
                pass
            return out

        pooled: dict[str, list[float]] = {"base": [], "again": [], "slowed": []}
        t0 = time.perf_counter()
        for _ in range(8):
            for name, fn in (("base", base), ("slowed", slowed), ("again", base)):
                pooled[name] += measure(fn, budget_s=0.04, warmup_s=0.005, ci_min=10**9).samples_ms
        assert time.perf_counter() - t0 < 60  # a bound on the test's cost, not a timing claim
    finally:
        torch.set_num_threads(threads)
    runs = {k: [row("mm@torch", 256, v)] for k, v in pooled.items()}
    df = compare.compare_runs(runs["base"], runs["slowed"], 0.05, 0.01)
    # (the spin adds fixed time: if other jobs slow the mm down, the ratio falls below 1.3)
    assert df["verdict"][0] == "regressed", df.T
    # A/A: the same kernel; 25% leaves room for load drift on shared 2-core CI machines
    df = compare.compare_runs(runs["base"], runs["again"], 0.25, 0.01)
    assert df["verdict"][0] == "same", df.T


# -- disturbed runs (issue 10): load is not a regression ---------------------------------------
def _loaded(rows: list[dict], factor: float, noisy_every: int = 1) -> list[dict]:
    """The same cases measured 3x slower, every ``noisy_every``-th flagged noisy (schema 3)."""
    out = []
    for i, r in enumerate(rows):
        r = {**r, "schema_version": 3, "samples_ms": [x * factor for x in r["samples_ms"]],
             "time_ms_median": r["time_ms_median"] * factor, "noisy": i % noisy_every == 0,
             "wait_share": 0.4 if i % noisy_every == 0 else 0.01}
        out.append(r)
    return out


def test_noisy_cases_get_no_timing_verdict():
    base = [{**r, "schema_version": 3, "noisy": False} for r in synth_run(1)]
    df = compare.compare_runs(base, _loaded(synth_run(2), 3.0, noisy_every=2))
    noisy = df[df["verdict"] == "noisy"]
    assert len(noisy) == (len(CASES) + 1) // 2
    assert set(df["verdict"]) == {"noisy", "regressed"}  # the clean ones still judged
    assert "noisy" in compare.summary_line(df, 0.05)
    judged = compare.compare_runs(base, _loaded(synth_run(2), 3.0, noisy_every=2), judge_noisy=True)
    assert set(judged["verdict"]) == {"regressed"}


def test_environment_notes_say_what_differs():
    base_info = {"device_name": "Intel Xeon", "torch_threads": 2, "torch_version": "2.13.0", "gemm_peak_gflops": 320}
    new_info = {"device_name": "AMD EPYC", "torch_threads": 1, "torch_version": "2.12.0", "gemm_peak_gflops": 66,
                "gemm_noisy": True, "gemm_wait_share": 0.5}
    base = [{**r, "schema_version": 3, "noisy": False} for r in synth_run(1)]
    notes = compare.environment_notes(base_info, new_info, base, _loaded(synth_run(2), 3.0))
    text = "\n".join(notes)
    for needle in ("different machines: BASE Intel Xeon, NEW AMD EPYC", "different threads per worker",
                   "different torch versions", "GEMM peak BASE 320, NEW 66", "NEW's GEMM probe was disturbed",
                   f"NEW was disturbed: {len(CASES)} of {len(CASES)} timed cases noisy"):
        assert needle in text
    assert "BASE was disturbed" not in text
    same = compare.environment_notes(base_info, base_info, base, base)
    assert same == []
    old = compare.environment_notes({}, {}, synth_run(1), base)
    assert old == ["BASE predates disturbance detection (schema < 3): a loaded machine there is not flagged"]
    zen3 = {"family": "25", "model": "1", "isa": "AVX2", "l2": 512 << 10, "l3": 32 << 20}
    zen4 = {"family": "25", "model": "17", "isa": "AVX-512", "l2": 1 << 20, "l3": 32 << 20}
    epyc = {**base_info, "device_name": "AMD EPYC"}
    hosts = compare.environment_notes({**epyc, "cpu": zen4}, {**epyc, "cpu": zen3}, base, base)
    assert hosts == ["different CPUs: BASE family 25 model 17, AVX-512, L2 1 MiB, L3 32 MiB, NEW family 25 model 1, "
                     "AVX2, L2 512 KiB, L3 32 MiB — ratios measure that difference too"]
    assert compare.environment_notes(epyc, {**epyc, "cpu": zen3}, base, base) == []  # one side predates the record
    cached = compare.environment_notes(base_info, {**base_info, "allocator": "mimalloc"}, base, base)
    assert cached == ["different allocators (--allocator): BASE default, NEW mimalloc — ratios measure that "
                      "difference too"]  # a run from before the option ran under the default allocator
