"""The roofline: the bandwidth probe, the bound arithmetic, the table and figure, run.json's key."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from attnbench.case import Shape
from attnbench.catalog import get
from attnbench.harness.bandwidth import memory_bandwidth_gbs
from attnbench.harness.flops import block_gemm_gflops
from attnbench.report.roofline import bound, block_ceiling, ceilings, points, roofline_figure, roofline_table

PEAK, BW = 200.0, 40.0  # GFLOP/s, GB/s: ridge at 5 FLOP/byte
GROUP = {"device_name": "test", "device": "cpu", "mode": "fwd", "dtype": "float32", "causal": False,
         "batch": 1, "heads": 2, "head_dim": 16}


def _row(variant: str, n: int, gflops: float, **extra) -> dict:
    """A synthetic ok kernel row of GROUP's shape, its flops from the registry."""
    shape = Shape(batch=1, heads=2, kv_heads=2, seq_len=n, kv_len=n, head_dim=16)
    spec = get(variant)
    return {"variant": variant, "label": variant, "status": "ok", "seq_len": n, "q_len": n, "kv_len": n,
            "batch": 1, "heads": 2, "kv_heads": 2, "head_dim": 16, "dtype": "float32", "device": "cpu",
            "causal": False, "mode": "fwd", "params": {}, "flops": spec.flops(shape), "gflops_per_s": gflops,
            "gemm_peak_gflops": PEAK, "mem_bw_gbs": BW, **extra}


def _ai(variant: str, n: int) -> float:
    shape = Shape(batch=1, heads=2, kv_heads=2, seq_len=n, kv_len=n, head_dim=16)
    spec = get(variant)
    return spec.flops(shape) / spec.bytes(shape)


def test_probe_gives_a_positive_finite_bandwidth_on_a_tiny_budget():
    r = memory_bandwidth_gbs("cpu", "float32", budget_s=0.02)
    assert math.isfinite(r["mem_bw_gbs"]) and r["mem_bw_gbs"] > 0
    assert r["mem_bw_bytes"] >= 64 * 2**20


def test_block_probe_rates_the_batched_64_cube_bmm_on_a_tiny_budget():
    r = block_gemm_gflops("cpu", "float32", budget_s=0.02)
    assert math.isfinite(r["gemm_block_gflops"]) and r["gemm_block_gflops"] > 0
    assert r["gemm_block_shape"] == "256x64x64x64"


def test_block_ceiling_is_the_highest_probe_and_none_before_the_probe():
    df = pd.DataFrame([_row("full@naive", 64, 10.0, gemm_block_gflops=70.0),
                       _row("full@naive", 128, 10.0, gemm_block_gflops=90.0)])
    assert block_ceiling(df) == 90.0
    assert block_ceiling(df.drop(columns=["gemm_block_gflops"])) is None
    t = roofline_table(df, GROUP, "s", "test")
    assert "[64×64]·[64×64] products, 90.0 GFLOP/s" in t.notes[0]
    fig = roofline_figure(df, "test")
    dashed = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [90.0, 90.0]


def test_bound_is_memory_below_the_ridge_and_the_peak_above():
    assert bound(2.0, PEAK, BW) == (80.0, "memory")  # 40 GB/s x 2 FLOP/B
    assert bound(50.0, PEAK, BW) == (200.0, "compute")


def test_table_divides_achieved_by_the_bound_at_the_largest_n():
    df = pd.DataFrame([_row("full@naive", 64, 10.0), _row("full@naive", 256, 100.0)])
    ai = _ai("full@naive", 256)  # D=16 fp32, N=M=256: 4 N M D / (16 N D) = 64 FLOP/B, above the ridge
    assert ai == pytest.approx(64.0)
    t = roofline_table(df, GROUP, "fwd_float32_cpu", "test")
    rec = t.csv.iloc[0]
    assert rec["seq_len"] == 256 and rec["binds"] == "compute"
    assert rec["intensity_flop_per_byte"] == pytest.approx(ai)
    assert rec["bound_gflops_per_s"] == pytest.approx(min(PEAK, BW * ai))
    assert rec["bound_fraction"] == pytest.approx(100.0 / min(PEAK, BW * ai))
    low = pd.DataFrame([_row("full@naive", 256, 30.0, mem_bw_gbs=0.5)])  # 0.5 GB/s: ridge at 400 FLOP/B
    rec = roofline_table(low, GROUP, "s", "test").csv.iloc[0]
    assert rec["binds"] == "memory" and rec["bound_fraction"] == pytest.approx(30.0 / (0.5 * ai))


def test_several_runs_take_the_highest_ceilings():
    df = pd.DataFrame([_row("full@naive", 64, 10.0), _row("full@naive", 128, 10.0, mem_bw_gbs=60.0)])
    assert ceilings(df) == (PEAK, 60.0, True)


def test_figure_builds_and_is_none_without_rows_or_bandwidth(tmp_path):
    from attnbench.report.figures import save

    df = pd.DataFrame([_row("full@naive", n, g) for n, g in ((64, 5.0), (256, 20.0))]
                      + [_row("linear@elu", n, g, noisy=True) for n, g in ((64, 3.0), (256, 8.0))])
    assert len(points(df)) == 4
    fig = roofline_figure(df, "test")
    assert fig is not None and [p.name for p in save(fig, tmp_path / "roof")] == ["roof.png", "roof.pdf"]
    assert roofline_figure(df.iloc[0:0], "test") is None
    assert roofline_figure(df.drop(columns=["mem_bw_gbs"]), "test") is None  # a run before the probe
    assert roofline_table(df.drop(columns=["mem_bw_gbs"]), GROUP, "s", "test") is None


def test_a_run_records_the_bandwidth_in_run_json(tiny_run):
    """A real ``python -m attnbench run`` (conftest.tiny_run: its probes and one case)."""
    info = json.loads((tiny_run / "run.json").read_text())
    assert info["mem_bw_gbs"] > 0 and info["mem_bw_bytes"] >= 64 * 2**20
    assert info["gemm_block_gflops"] > 0
    assert info["transparent_hugepage"] in ("always", "madvise", "never", None)


def test_the_gemm_probe_is_cut_only_for_runs_of_tiny_case_budgets():
    from attnbench.bench import PROBE_BUDGET_S, probe_budget

    assert probe_budget(1.0) == probe_budget(5.0) == PROBE_BUDGET_S  # the default budget and up: unchanged
    assert probe_budget(0.05) == 0.5 and probe_budget(0.001) == 0.25
