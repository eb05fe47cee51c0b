"""Sliding-window attention side by side, in one process: ``sliding_window@blocked`` (ours),
``sliding_window@flex`` (FlexAttention, compiled) and lucidrains' ``local-attention`` package.

Same inputs (seeded q, k, v [B, H, n, D], fp32, B=1 H=8 D=64 by default), same window, forward
only (inference mode); the first call of each (compile and block-mask build for flex) is
timed apart and excluded; then ``attnbench.harness.timing.measure`` (warm-up, adaptive repeats
until IQR/median <= 2% or the budget is spent) gives the median. Peak memory above the inputs
is the process's resident high-water mark around one call (``attnbench.harness.memory``).

``local-attention`` is not an attnbench dependency; install it only to run this script:

    pip install local-attention
    python scripts/bench_local_attention.py                       # n = 2048..16384
    python scripts/bench_local_attention.py --seq-lens 4096,16384 --no-flex

Receptive field: LocalAttention cuts the sequence into buckets of ``window_size`` and lets a
bucket attend to ``look_backward`` buckets before it and ``look_forward`` after it; with
``exact_windowsize=True`` it then masks to |i - j| <= window_size * look_backward (non-causal:
also forward). ``window_size=w, look_backward=1, look_forward=1, exact_windowsize=True`` is
exactly the sliding window |i - j| <= w of ``sliding_window`` (checked here on a small case
before timing); its work is 3w keys per query (the three buckets), ours is 64 + 2w.
Exit status 2 when the package is missing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from attnbench.harness import memory, timing
from attnbench.harness.inputs import make_inputs
from attnbench import Shape, get


def _seq_lens(text: str) -> list[int]:
    """A..B (powers of two inclusive) or a comma list: the same syntax as ``run --seq-lens``."""
    from attnbench.config import parse_seq_lens

    return parse_seq_lens(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-lens", default="2048..16384", help="A..B (powers of two) or a list")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--budget", type=float, default=1.0, help="timing budget per kernel and n (s)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-flex", action="store_true", help="skip sliding_window@flex (it compiles)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    a = ap.parse_args()

    try:
        from local_attention import LocalAttention
    except ImportError:
        print("bench_local_attention: the 'local-attention' package is not installed.\n"
              "It is not an attnbench dependency; install it only to run this comparison:\n"
              "    pip install local-attention", file=sys.stderr)
        return 2
    import local_attention

    if a.threads:
        torch.set_num_threads(a.threads)
    w = a.window
    theirs_mod = LocalAttention(window_size=w, causal=False, look_backward=1, look_forward=1,
                                exact_windowsize=True, autopad=True, dropout=0.0).eval()
    ours = get("sliding_window@blocked")
    flex = None if a.no_flex else get("sliding_window@flex")
    version = getattr(local_attention, "__version__", None)
    if version is None:
        from importlib.metadata import version as _v
        version = _v("local-attention")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, local-attention {version}")
    print(f"sliding window w={w}: query i attends to keys j with |i - j| <= {w} (non-causal)")
    print(f"LocalAttention(window_size={w}, causal=False, look_backward=1, look_forward=1, "
          f"exact_windowsize=True, autopad=True): buckets of {w}, each query scores its bucket and "
          f"the neighbours ({3 * w} keys), masked to |i - j| <= {w} -> the same receptive field")

    def shape_for(n: int) -> Shape:
        return Shape(batch=a.batch, heads=a.heads, kv_heads=a.heads, seq_len=n, kv_len=n,
                     head_dim=a.head_dim, dtype="float32")

    def calls(q, k, v):
        def c_ours():
            with torch.inference_mode():
                return ours(q, k, v, window=w).out

        def c_theirs():
            with torch.inference_mode():
                return theirs_mod(q, k, v)

        def c_flex():
            with torch.inference_mode():
                return flex(q, k, v, window=w).out

        out = {"ours": c_ours, "local-attention": c_theirs}
        if flex is not None:
            out["flex"] = c_flex
        return out

    # Same receptive field, checked: all three against each other on a small case.
    q, k, v = make_inputs(shape_for(4 * w), seed=1)
    outs = {name: fn() for name, fn in calls(q, k, v).items()}
    dense = get("sliding_window@dense")(q, k, v, window=w).out
    for name, o in outs.items():
        err = (o - dense).abs().max().item()
        print(f"check n={4 * w}: {name} vs sliding_window@dense max abs diff {err:.2e}")
        if err > 1e-4:
            print(f"bench_local_attention: {name} does not compute the same window", file=sys.stderr)
            return 1

    rows = []
    for n in _seq_lens(a.seq_lens):
        q, k, v = make_inputs(shape_for(n), seed=0)
        row = {"n": n}
        for name, fn in calls(q, k, v).items():
            t0 = time.perf_counter()
            fn()
            row[f"{name}_first_ms"] = (time.perf_counter() - t0) * 1e3
            row[f"{name}_mem_MiB"] = memory.peak_bytes(fn, "cpu") / 2**20
            st = timing.measure(fn, budget_s=a.budget)
            row[f"{name}_ms"] = st.median_ms
            row[f"{name}_iqr_ms"] = st.iqr_ms
            print(f"n={n:6d} {name:16s} median {st.median_ms:9.2f} ms (IQR {st.iqr_ms:.2f}, "
                  f"{st.repeats} repeats; first call {row[f'{name}_first_ms']:.0f} ms; "
                  f"peak {row[f'{name}_mem_MiB']:.0f} MiB above inputs)", flush=True)
        rows.append(row)

    print()
    names = ["ours", "flex", "local-attention"] if flex is not None else ["ours", "local-attention"]
    head = f"{'n':>6} | " + " | ".join(f"{x + ' ms':>18}" for x in names)
    head += " | ours/local-attention" + (" | ours/flex" if flex is not None else "")
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['n']:6d} | " + " | ".join(f"{r[f'{x}_ms']:18.2f}" for x in names)
        line += f" | {r['ours_ms'] / r['local-attention_ms']:20.3f}"
        if flex is not None:
            line += f" | {r['ours_ms'] / r['flex_ms']:9.3f}"
        print(line)
    print("(ratio < 1: ours is faster; medians, first calls excluded)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"window": w, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
