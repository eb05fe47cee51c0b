"""CUDA trust tests: run where a GPU is lent (``pytest -m cuda``); skipped with a reason elsewhere."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def test_cuda_peak_memory_is_exact():
    from attnbench.harness.memory import cuda_peak_bytes

    n_bytes = 64 * 2**20  # a multiple of the caching allocator's 2 MiB segments and 512 B blocks

    def alloc():
        t = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
        t.fill_(1)
        return None

    assert cuda_peak_bytes(alloc) == n_bytes


def test_cuda_run_rows_ok(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "attnbench", "run", "--variants", "full@sdpa,full@flash,full@naive",
         "--device", "cuda", "--dtype", "bfloat16", "--seq-lens", "256,1024", "--out", str(out),
         "--time-budget", "0.2"],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        assert row["status"] == "ok", row["reasons"]
        assert row["repeats"] >= 10  # CUDA: at least 10 synchronized repeats
        assert row["peak_mem_bytes"] > 0
