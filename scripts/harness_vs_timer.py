"""Cross-check the harness's timing against torch.utils.benchmark's adaptive_autorange.

Same process, same call (full@sdpa forward, B=1 H=8 D=64 by default), alternating the two
timers for a few rounds so machine noise hits both; prints each median and their ratio.

    python scripts/harness_vs_timer.py --n 4096 --rounds 3
"""
from __future__ import annotations

import argparse
import statistics

import torch
from torch.utils.benchmark import Timer

from attnbench.harness import timing
from attnbench.harness.inputs import make_inputs
from attnbench import Shape, get


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="full@sdpa")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=2.0, help="harness timing budget (s)")
    a = ap.parse_args()
    spec = get(a.variant)
    shape = Shape(batch=1, heads=8, kv_heads=8, seq_len=a.n, kv_len=a.n, head_dim=64)
    q, k, v = make_inputs(shape)

    def call():
        with torch.inference_mode():
            return spec(q, k, v).out

    ours, theirs = [], []
    for r in range(a.rounds):
        s = timing.measure(call, budget_s=a.budget)
        m = Timer("call()", globals={"call": call}, num_threads=torch.get_num_threads()).adaptive_autorange(
            threshold=0.05, min_run_time=a.budget)
        ours.append(s.median_ms)
        theirs.append(m.median * 1e3)
        print(f"round {r}: harness median {s.median_ms:.2f} ms ({s.repeats} repeats, IQR {s.iqr_ms:.2f}) | "
              f"adaptive_autorange median {m.median * 1e3:.2f} ms ({len(m.times)} measurements)")
    h, t = statistics.median(ours), statistics.median(theirs)
    print(f"{a.variant} n={a.n} threads={torch.get_num_threads()}: harness {h:.2f} ms vs "
          f"adaptive_autorange {t:.2f} ms -> ratio {h / t:.3f} ({(h / t - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
