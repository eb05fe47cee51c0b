"""Predicted peak memory against measured, for every ok row of a small CPU run of every variant:
within 2x, or the variant declares it cannot predict (``memory_fn`` None). Below 4 MiB on both
sides an RSS high-water mark cannot resolve a factor of two (pages, allocator arenas), so such
rows only need to stay below that floor.

The run measures memory only (``--no-check``: outputs are checked against their definitions by
test_kernels, test_patterns and the family tests, at sizes where that is cheap). The generic
``P@dense`` and ``P@flex`` kernels of the mask patterns are one function each over the pattern's
mask: they run once per kernel and kind of pattern (with a bias or not), not once per pattern.
What differs between patterns there is the mask's evaluation (``dense_mask``), and each
pattern's ``P@sdpa_mask`` row measures exactly that beside fused attention, where it weighs most;
@flex's block mask is built by the first call and cached, so the measured call is the same
compiled kernel's over the same buffers."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.catalog import get
from attnbench.results import read_rows

ROOT = Path(__file__).resolve().parents[1]
FLOOR = 4 * 2 ** 20


def _variants() -> list[str]:
    """Every registered variant, the generic @dense / @flex kernels of the mask patterns once per
    kernel and kind of pattern (the first by name; with a bias: swin)."""
    from attnbench.catalog import names
    from attnbench.patterns import PATTERNS

    chosen, seen = [], set()
    for spec in map(get, names("all")):  # what ``--variants all`` runs
        pattern = PATTERNS.get(spec.reference)
        if pattern is not None and spec.kernel in ("dense", "flex"):
            kind = (spec.kernel, pattern.make_bias is not None)
            if kind in seen:
                continue
            seen.add(kind)
        chosen.append(spec.name)
    return chosen


def test_variants_keep_every_kernel_and_every_pattern():
    """What the run below leaves out is covered: every kernel name still runs, and every pattern
    still runs its mask through @sdpa_mask."""
    from attnbench.catalog import names

    chosen = _variants()
    every = names("all")
    assert set(chosen) <= set(every) and len(chosen) >= 30
    assert {get(n).kernel for n in chosen} == {get(n).kernel for n in every}
    left_out = set(every) - set(chosen)
    assert left_out and all(get(n).kernel in ("dense", "flex") for n in left_out)
    for name in left_out:
        assert f"{get(name).reference}@sdpa_mask" in chosen, name
    assert "full@flex" in chosen  # FlexAttention without a pattern's mask


@pytest.mark.slow
def test_predicted_peak_within_2x_of_measured(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "attnbench", "run", "--variants", ",".join(_variants()),
                        "--seq-lens", "2048", "--mode", "fwd,fwd+bwd", "--out", str(out), "--threads", "2",
                        "--timeout", "300", "--no-check", "timing.budget_s=0.01", "timing.min_repeats=1",
                        "timing.ci_min=1", "timing.warmup_s=0"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    every = read_rows(out / "results.jsonl")
    assert {r["variant"] for r in every} == set(_variants())
    rows = [r for r in every if r["status"] == "ok"]
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
