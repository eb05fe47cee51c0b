"""Predicted peak memory against measured, for every ok row of a small CPU run of every variant:
within 2x, or the variant declares it cannot predict (``memory_fn`` None). Below 4 MiB on both
sides an RSS high-water mark cannot resolve a factor of two (pages, allocator arenas), so such
rows only need to stay below that floor."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.catalog import get
from attnbench.results import read_rows

ROOT = Path(__file__).resolve().parents[1]
FLOOR = 4 * 2 ** 20


@pytest.mark.slow
def test_predicted_peak_within_2x_of_measured(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "attnbench", "run", "--variants", "all", "--seq-lens", "2048",
                        "--mode", "fwd,fwd+bwd", "--out", str(out), "--threads", "2", "--timeout", "300",
                        "timing.budget_s=0.01", "timing.min_repeats=1", "timing.ci_min=1", "timing.warmup_s=0"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [r for r in read_rows(out / "results.jsonl") if r["status"] == "ok"]
    assert len(rows) >= 40
    bad = []
    for r in rows:
        pred, meas = r["predicted_peak_bytes"], r["peak_mem_bytes"]
        if pred is None:
            assert get(r["variant"]).memory_fn is None, f"{r['variant']}: no prediction without declaring it"
            continue
        if max(pred, meas) < FLOOR:
            continue
        ratio = max(pred, 1) / max(meas, 1)
        if not 0.5 <= ratio <= 2.0:
            bad.append(f"{r['variant']} {r['mode']}: predicted {pred / 2**20:.1f} MiB, measured {meas / 2**20:.1f} MiB")
    assert bad == [], "\n".join(bad)
