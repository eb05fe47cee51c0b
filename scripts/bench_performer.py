"""FAVOR+ side by side, in one process: ``performer@favor`` (ours) and performer-pytorch's
``FastAttention`` (lucidrains), same inputs, same random features, fp32, B=1 H=8 D=64.

For each n and causal / non-causal: median forward time of each (inference mode; the first
call is made apart and not timed; then ``attnbench.harness.timing.measure``: warm-up and
adaptive repeats, or exactly ``--repeats``), the resident peak above the inputs of one call,
and each one's relative error against exact softmax attention,
||out - exact||_F / ||exact||_F over ``--err-rows`` evenly spaced query rows (the fp64 dense
reference on those rows only, so the check costs O(rows n D) at any n), on the suite's two
kinds of input (``attnbench.approx.inputs``): 'gaussian' (q, k, v ~ N(0, 1)) and 'sharp'
(each query made of 3 keys, softmax concentrated on them).

Same features: ours is called with ``features=FastAttention.projection_matrix`` (the same
orthogonal rows, norms chi-distributed: performer-pytorch's ``scaling=0``), so the two differ
only in how they compute (``--own-features``: ours draws its own from ``seed``). They are not
the same function: performer-pytorch adds eps = 1e-4 (times r^-1/2) to every feature after its
max trick, and its key max is global, so for keys far below that max the eps dominates and its
attention drifts towards uniform weights; ours is the exact FAVOR+ estimator (its own dense
definition, ``favor_reference``). With ``eps = 0`` the two agree to rounding (checked in
tests), so the error columns show what the eps does. The causal path of performer-pytorch on
CPU is its "memory inefficient non-cuda version" (the CUDA kernel of fast-transformers is not
available here): per chunk a [n/128, r, D] prefix-sum tensor; ours is chunked with a running
state (``chunk``, default 64).

performer-pytorch is not an attnbench dependency; install it only for this script:

    pip install performer-pytorch
    python scripts/bench_performer.py                                # n = 1024..16384, both maskings
    python scripts/bench_performer.py --seq-lens 256 --repeats 1     # a quick smoke run
    python scripts/bench_performer.py --sweep-features               # error vs nb_features at n=1024

Writes a CSV (``--out``) and prints a table with the ratios (theirs / ours: > 1 means ours is
faster or smaller). Exit status 2 when performer-pytorch is missing (the sweep runs without it,
ours only).
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import warnings
from pathlib import Path

import torch

from attnbench import reference
from attnbench.approx import inputs
from attnbench.harness import memory, timing
from attnbench import Shape
from attnbench.variants.linear import DEFAULT_CHUNK, performer_favor

DEFAULT_OUT = "results/cpu-xeon-2core/performer-vs-performer-pytorch.csv"
DEFAULT_SWEEP_OUT = "results/cpu-xeon-2core/performer-error-vs-features.csv"
MISSING = ("bench_performer: the 'performer-pytorch' package is not installed.\n"
           "It is not an attnbench dependency; install it only to run this comparison:\n"
           "    pip install performer-pytorch")


def _seq_lens(text: str) -> list[int]:
    """A..B (powers of two inclusive) or a comma list: the same syntax as ``run --seq-lens``."""
    from attnbench.config import parse_seq_lens

    return parse_seq_lens(text)


def _fast_attention(d: int, r: int, causal: bool, seed: int):
    """performer-pytorch's FastAttention, its features drawn from torch's RNG at ``seed``."""
    from performer_pytorch import FastAttention

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # "unable to import cuda code ..." per causal module
            return FastAttention(dim_heads=d, nb_features=r, causal=causal).eval()


def _rel_err(out: torch.Tensor, exact: torch.Tensor, rows: torch.Tensor | None) -> float:
    got = out.double() if rows is None else out[:, :, rows].double()
    return float((got - exact).norm() / exact.norm())


def _uniform(v: torch.Tensor, n: int, causal: bool, rows: torch.Tensor | None) -> torch.Tensor:
    """The trivial baseline: every query averages the values it may see (uniform weights)."""
    b, h, m, d = v.shape
    rows = torch.arange(n) if rows is None else rows
    if not causal:
        return v.double().mean(2, keepdim=True).expand(b, h, len(rows), d)
    last = (rows + m - n).clamp(min=0, max=m - 1)  # N == M here: query i sees keys 0..i
    return v.double().cumsum(2)[:, :, last] / (last + 1).double()[:, None]


def _exact(q, k, v, causal: bool, rows: torch.Tensor | None) -> torch.Tensor:
    if rows is None:
        return reference.attention(q.double(), k.double(), v.double(), causal=causal).out
    return reference.attention_rows(q, k, v, rows, causal=causal)


def _table(rows: list[dict], cols: list[tuple[str, str, str]], title: str) -> None:
    """rich table on a terminal-like stdout, then the same as Markdown (for notes and issues)."""
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for _, head, _ in cols:
            t.add_column(head, justify="right")
        for r in rows:
            t.add_row(*[_fmt(r.get(key), fmt) for key, _, fmt in cols])
        Console(width=200).print(t)
    except ImportError:
        pass
    print()
    print("| " + " | ".join(h for _, h, _ in cols) + " |")
    print("|" + "|".join("---:" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(key), fmt) for key, _, fmt in cols) + " |")
    print()


def _fmt(x, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, fmt) if fmt else str(x)


def _write_csv(path: str, rows: list[dict]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with p.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} rows -> {p}")


def _measure(fn, a) -> timing.TimingStats:
    if a.repeats:
        return timing.measure(fn, budget_s=0.0, min_repeats=a.repeats, max_repeats=a.repeats, warmup_s=0.0)
    return timing.measure(fn, budget_s=a.budget)


def compare(a: argparse.Namespace) -> int:
    try:
        import performer_pytorch  # noqa: F401
    except ImportError:
        print(MISSING, file=sys.stderr)
        return 2
    from importlib.metadata import version

    b, h, d, r = a.batch, a.heads, a.head_dim, a.nb_features
    maskings = {"both": (False, True), "yes": (True,), "no": (False,)}[a.causal]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, performer-pytorch "
          f"{version('performer-pytorch')}; B={b} H={h} D={d} fp32, nb_features={r}, ours chunk={a.chunk}, "
          f"{'own features (seed 0)' if a.own_features else 'the same features for both'}")
    rows = []
    for causal in maskings:
        theirs_mod = _fast_attention(d, r, causal, a.seed)
        feats = None if a.own_features else theirs_mod.projection_matrix
        for n in _seq_lens(a.seq_lens):
            shape = Shape(batch=b, heads=h, kv_heads=h, seq_len=n, kv_len=n, head_dim=d, causal=causal)
            err_rows = None if n <= a.err_rows else reference.sample_rows(n, a.err_rows)
            row: dict = {"n": n, "causal": causal, "nb_features": r, "chunk": a.chunk}
            for kind in ("gaussian", "sharp"):
                q, k, v = inputs(shape, kind, seed=a.seed)

                def ours():
                    with torch.inference_mode():
                        return performer_favor(q, k, v, causal=causal, nb_features=r, seed=a.seed,
                                               chunk=a.chunk, features=feats).out

                def theirs():
                    with torch.inference_mode():
                        return theirs_mod(q, k, v)

                exact = _exact(q, k, v, causal, err_rows)
                o_ours, o_theirs = ours(), theirs()
                row[f"ours_err_{kind}"] = _rel_err(o_ours, exact, err_rows)
                row[f"theirs_err_{kind}"] = _rel_err(o_theirs, exact, err_rows)
                row[f"max_abs_diff_{kind}"] = float((o_ours - o_theirs).abs().max())
                row[f"uniform_err_{kind}"] = _rel_err(_uniform(v, n, causal, err_rows), exact, None)
                del o_ours, o_theirs, exact
                if kind != "gaussian":
                    continue
                for name, fn in (("ours", ours), ("theirs", theirs)):
                    t0 = time.perf_counter()
                    fn()
                    row[f"{name}_first_ms"] = (time.perf_counter() - t0) * 1e3
                    row[f"{name}_mem_MiB"] = memory.peak_bytes(fn, "cpu") / 2**20
                    st = _measure(fn, a)
                    row[f"{name}_ms"], row[f"{name}_iqr_ms"], row[f"{name}_repeats"] = (
                        st.median_ms, st.iqr_ms, st.repeats)
            row["speedup"] = row["theirs_ms"] / row["ours_ms"]
            row["mem_ratio"] = row["theirs_mem_MiB"] / row["ours_mem_MiB"] if row["ours_mem_MiB"] else float("nan")
            rows.append(row)
            print(f"n={n:6d} causal={causal!s:5}: ours {row['ours_ms']:9.2f} ms, performer-pytorch "
                  f"{row['theirs_ms']:9.2f} ms (x{row['speedup']:.2f}); rel_err gaussian "
                  f"{row['ours_err_gaussian']:.3f} / {row['theirs_err_gaussian']:.3f}, sharp "
                  f"{row['ours_err_sharp']:.3f} / {row['theirs_err_sharp']:.3f}", flush=True)
    cols = [("n", "n", "d"), ("causal", "causal", ""), ("ours_ms", "ours ms", ".2f"),
            ("theirs_ms", "perf-pytorch ms", ".2f"), ("speedup", "theirs/ours time", ".2f"),
            ("ours_mem_MiB", "ours MiB", ".0f"), ("theirs_mem_MiB", "perf-pytorch MiB", ".0f"),
            ("ours_err_gaussian", "err gauss ours", ".3f"), ("theirs_err_gaussian", "err gauss theirs", ".3f"),
            ("ours_err_sharp", "err sharp ours", ".3f"), ("theirs_err_sharp", "err sharp theirs", ".3f"),
            ("uniform_err_gaussian", "err gauss uniform", ".3f"), ("uniform_err_sharp", "err sharp uniform", ".3f")]
    _table(rows, cols, "performer@favor vs performer-pytorch FastAttention (forward, medians; first call excluded)")
    print("time/memory ratio > 1: ours is faster / smaller. err: ||out - softmax|| / ||softmax|| on "
          f"{a.err_rows} sampled query rows (all rows when n <= {a.err_rows}); 'uniform': the error of "
          "averaging the visible values with equal weights, the output performer-pytorch's eps drifts to.")
    _write_csv(a.out, rows)
    return 0


def sweep(a: argparse.Namespace) -> int:
    """FAVOR+'s error against exact softmax as nb_features grows, at n = --sweep-n."""
    try:
        import performer_pytorch  # noqa: F401
        have_theirs = True
    except ImportError:
        print(MISSING + "\n(the sweep goes on with ours only)", file=sys.stderr)
        have_theirs = False
    b, h, d, n = a.batch, a.heads, a.head_dim, a.sweep_n
    feats, seeds = [int(x) for x in a.features.split(",")], list(range(a.seeds))
    print(f"FAVOR+ error vs nb_features at n={n}, B={b} H={h} D={d} fp32, mean over seeds {seeds}")
    rows = []
    for causal in {"both": (False, True), "yes": (True,), "no": (False,)}[a.causal]:
        shape = Shape(batch=b, heads=h, kv_heads=h, seq_len=n, kv_len=n, head_dim=d, causal=causal)
        data = {kind: inputs(shape, kind, seed=0) for kind in ("gaussian", "sharp")}
        exact = {kind: _exact(*data[kind], causal, None) for kind in data}
        for r in feats:
            row: dict = {"n": n, "causal": causal, "nb_features": r, "seeds": len(seeds)}
            for kind, (q, k, v) in data.items():
                with torch.inference_mode():
                    errs = [_rel_err(performer_favor(q, k, v, causal=causal, nb_features=r, seed=s).out,
                                     exact[kind], None) for s in seeds]
                    row[f"ours_err_{kind}"] = sum(errs) / len(errs)
                    row[f"ours_err_{kind}_std"] = float(torch.tensor(errs).std()) if len(errs) > 1 else 0.0
                    if have_theirs:
                        errs = [_rel_err(_fast_attention(d, r, causal, s)(q, k, v), exact[kind], None)
                                for s in seeds]
                        row[f"theirs_err_{kind}"] = sum(errs) / len(errs)
            rows.append(row)
            print(f"causal={causal!s:5} r={r:5d}: gaussian {row['ours_err_gaussian']:.4f}, sharp "
                  f"{row['ours_err_sharp']:.4f}", flush=True)
    cols = [("causal", "causal", ""), ("nb_features", "r", "d"),
            ("ours_err_gaussian", "err gauss ours", ".4f"), ("ours_err_gaussian_std", "(std)", ".4f"),
            ("ours_err_sharp", "err sharp ours", ".4f"), ("ours_err_sharp_std", "(std)", ".4f")]
    if have_theirs:
        cols += [("theirs_err_gaussian", "err gauss perf-pytorch", ".4f"),
                 ("theirs_err_sharp", "err sharp perf-pytorch", ".4f")]
    _table(rows, cols, f"FAVOR+ relative error vs exact softmax, n={n}, mean over {len(seeds)} seeds")
    _write_csv(a.sweep_out, rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-lens", default="1024..16384", help="A..B (powers of two) or a list")
    ap.add_argument("--nb-features", type=int, default=256, help="random features r (both)")
    ap.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="ours: causal chunk size")
    ap.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="inputs and features")
    ap.add_argument("--own-features", action="store_true",
                    help="ours draws its own features instead of using performer-pytorch's matrix")
    ap.add_argument("--budget", type=float, default=1.0, help="timing budget per kernel and n (s)")
    ap.add_argument("--repeats", type=int, default=None, help="exactly this many timed calls (no warm-up)")
    ap.add_argument("--err-rows", type=int, default=256, help="query rows the error is measured on")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="CSV of the comparison")
    ap.add_argument("--sweep-features", action="store_true", help="error vs nb_features instead")
    ap.add_argument("--features", default="16,32,64,128,256,512,1024", help="sweep: nb_features list")
    ap.add_argument("--sweep-n", type=int, default=1024)
    ap.add_argument("--seeds", type=int, default=3, help="sweep: seeds to average over")
    ap.add_argument("--sweep-out", default=DEFAULT_SWEEP_OUT, help="CSV of the sweep")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.repeats is not None and a.repeats < 1:
        ap.error(f"--repeats {a.repeats}: must be >= 1")
    return sweep(a) if a.sweep_features else compare(a)


if __name__ == "__main__":
    sys.exit(main())
