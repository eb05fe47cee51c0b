"""Swin kernels side by side: 64 x 64 grid (n = 4096), M = 8, shift on, B = 1, H = 8, D = 64, fp32.

Runs the suite's own harness (one isolated worker per case: sampled-row check against the
pattern, a memory pass, adaptive timed repeats; the first call, compile included for @flex,
is timed apart):

    python -m attnbench run --variants 'swin@*' --seq-lens 4096 --out DIR

then reads DIR/results.jsonl and prints median time, first call, peak memory and each kernel's
ratios to swin@dense (the materialized masked-softmax reference).

    python scripts/bench_swin.py                      # runs into results/runs/swin-<time>
    python scripts/bench_swin.py --out DIR --reuse    # only re-read an existing run
    python scripts/bench_swin.py --mode fwd+bwd       # @flex has no CPU backward: a row with reasons
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from attnbench.results import read_rows, upgraded

KERNELS = ["swin@blocked", "swin@flex", "swin@sdpa_mask", "swin@dense"]
BASE = "swin@dense"


def run(out: Path, a: argparse.Namespace) -> None:
    cmd = [sys.executable, "-m", "attnbench", "run", "--variants", ",".join(KERNELS),
           "--seq-lens", str(a.n), "--batch", "1", "--heads", "8", "--head-dim", "64",
           "--dtype", "float32", "--mode", a.mode, "--time-budget", str(a.time_budget),
           "--out", str(out)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def table(out: Path) -> pd.DataFrame:
    df = pd.DataFrame(upgraded(read_rows(out / "results.jsonl")))
    df = df[df["variant"].isin(KERNELS)].copy()
    df["order"] = df["variant"].map(KERNELS.index)
    df = df.sort_values(["mode", "order"])
    for col in ("time_ms_median", "time_ms_iqr", "first_call_ms", "peak_mem_bytes",
                "predicted_peak_bytes", "gflops_per_s"):
        if col not in df:
            df[col] = float("nan")
    df["peak_MiB"] = df["peak_mem_bytes"] / 2**20
    df["predicted_MiB"] = df["predicted_peak_bytes"] / 2**20
    rows = []
    for mode, g in df.groupby("mode", sort=False):
        base = g[g["variant"] == BASE]
        bt = base["time_ms_median"].iloc[0] if len(base) else float("nan")
        bm = base["peak_MiB"].iloc[0] if len(base) else float("nan")
        g = g.assign(time_vs_dense=g["time_ms_median"] / bt, mem_vs_dense=g["peak_MiB"] / bm)
        rows.append(g)
    cols = ["variant", "mode", "status", "time_ms_median", "time_ms_iqr", "first_call_ms", "peak_MiB",
            "predicted_MiB", "gflops_per_s", "time_vs_dense", "mem_vs_dense"]
    return pd.concat(rows)[cols + ["reasons"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="run directory (default results/runs/swin-<UTC time>)")
    ap.add_argument("--reuse", action="store_true", help="do not run; read --out as it is")
    ap.add_argument("--n", type=int, default=4096, help="tokens (grid: the most square factorization)")
    ap.add_argument("--mode", default="fwd")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per worker (default: all)")
    ap.add_argument("--time-budget", type=float, default=2.0, help="seconds of timed repeats per case")
    a = ap.parse_args()
    out = a.out or Path("results/runs") / time.strftime("swin-%Y%m%dT%H%M%SZ", time.gmtime())
    if not a.reuse:
        run(out, a)
    t = table(out)
    with pd.option_context("display.width", 200, "display.max_columns", 20,
                           "display.float_format", "{:.3g}".format):
        print(t.drop(columns="reasons").to_string(index=False))
    for _, r in t.iterrows():
        if r["status"] != "ok":
            print(f"{r['variant']} ({r['mode']}): {r['status']}: {'; '.join(r['reasons'] or [])}")
    print(f"\nrun directory: {out}")


if __name__ == "__main__":
    main()
