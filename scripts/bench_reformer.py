"""Reformer LSH attention side by side, in one process: ``lsh@shared_qk`` (ours) and
lucidrains' ``reformer-pytorch`` ``LSHAttention``, with the same bucket_size and n_hashes.

Both compute shared-QK LSH attention the same way (keys = normalized queries; n_hashes rounds
sorted by (bucket, position); chunks of bucket_size attending to themselves and the chunk
before, wrapping across rounds; self allowed only when nothing else is; rounds combined by
their log-sum-exp). Before timing, the script checks that: reformer-pytorch fed *our*
buckets must give our output. Their rotations come from torch's global RNG, seeded here with
``--seed`` before every call; ours are drawn from the same seed in their layout, so on the CPU
both hash identically and the comparison is of implementations: the outputs agree to
rounding (``max_abs_diff``), except causal rows whose only key is the token itself, where
reformer-pytorch's exp(s - lse) rounds -5e4 + log 2 (~2e-3 in fp32; ours is exact there).

Inputs: seeded gaussian q, v [B, H, n, D] (fp32, B=1 H=8 D=64 by default); reformer-pytorch
takes qk [B*H, n, D] and v [B*H, n, D] (and needs n divisible by 2 bucket_size). Forward only,
under ``torch.inference_mode``; the first call is excluded, then the median of ``--repeats``
``time.perf_counter`` timings. Error: ||out - exact|| / ||exact|| over ``--error-rows``
evenly spaced query rows (rows are independent; the exact target is dense shared-QK softmax
attention with the same self rule, ``attnbench.variants.lsh.shared_qk_attention``, in fp64).

``reformer-pytorch`` is not an attnbench dependency; install it only to run this script:

    pip install reformer-pytorch
    python scripts/bench_reformer.py                              # n = 1024..8192, CSV to --out
    python scripts/bench_reformer.py --seq-lens 256 --repeats 1   # a smoke run
    python scripts/bench_reformer.py --sweep-hashes               # error vs n_hashes, n = 1024

Exit status 2 when the package is missing, 1 when the agreement check fails.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from attnbench import approx
from attnbench import Shape
from attnbench.variants import lsh as L

DEFAULT_OUT = "results/cpu-xeon-2core/lsh-vs-reformer-pytorch.csv"


def _seq_lens(text: str) -> list[int]:
    """A..B (powers of two inclusive) or a comma list: the same syntax as ``run --seq-lens``."""
    from attnbench.config import parse_seq_lens

    return parse_seq_lens(text)


def _median_ms(fn, repeats: int) -> tuple[float, float]:
    """(first call, median of ``repeats`` further calls), in ms."""
    t0 = time.perf_counter()
    fn()
    first = (time.perf_counter() - t0) * 1e3
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return first, statistics.median(times)


def _rel_err(out: torch.Tensor, q: torch.Tensor, v: torch.Tensor, causal: bool, n_rows: int) -> float:
    """||out - exact|| / ||exact|| on ``n_rows`` evenly spaced query rows, exact in fp64."""
    n = q.shape[2]
    rows = torch.linspace(0, n - 1, min(n, n_rows)).round().long().unique()
    with torch.no_grad():
        exact = L.shared_qk_attention(q.double(), None, v.double(), causal=causal, rows=rows)
        diff = out[:, :, rows].double() - exact
        return float(diff.norm() / exact.norm().clamp_min(1e-300))


class _Pair:
    """Our kernel and reformer-pytorch's LSHAttention with the same settings."""

    def __init__(self, lsh_cls, bucket_size: int, n_hashes: int, causal: bool, seed: int):
        self.bucket_size, self.n_hashes, self.causal, self.seed = bucket_size, n_hashes, causal, seed
        self.theirs_mod = lsh_cls(bucket_size=bucket_size, n_hashes=n_hashes, causal=causal,
                                  dropout=0.0).eval()

    def ours(self, q, v):
        with torch.inference_mode():
            return L.lsh_shared_qk(q, None, v, causal=self.causal, bucket_size=self.bucket_size,
                                   n_hashes=self.n_hashes, seed=self.seed).out

    def theirs_ok(self, n: int) -> bool:
        return n % (2 * self.bucket_size) == 0

    def theirs(self, q, v):
        b, h, n, d = q.shape
        torch.manual_seed(self.seed)  # their rotations come from the global RNG
        with torch.inference_mode():
            out = self.theirs_mod(q.reshape(b * h, n, d), v.reshape(b * h, n, d))[0]
        return out.reshape(b, h, n, d)


def _agreement(lsh_cls, bucket_size: int, n_hashes: int, causal: bool) -> float:
    """Max |ours - reformer-pytorch| when reformer-pytorch hashes with our buckets."""

    class FixedBuckets(lsh_cls):
        def __init__(self, buckets, **kw):
            super().__init__(**kw)
            self.fixed = buckets

        def hash_vectors(self, n_buckets, vecs, **kw):
            bh, r, n = self.fixed.shape
            return (self.fixed + (torch.arange(r) * n_buckets).view(1, r, 1)).reshape(bh, r * n)

    b, h, d, n = 1, 2, 32, 4 * bucket_size
    g = torch.Generator().manual_seed(1)
    q = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    nb = L.geometry(n, bucket_size, None)[3]
    buckets = L.lsh_buckets(q, n_hashes, nb, 0).reshape(b * h, n_hashes, n)
    mod = FixedBuckets(buckets, bucket_size=bucket_size, n_hashes=n_hashes, causal=causal).eval()
    with torch.no_grad():
        theirs = mod(q.reshape(b * h, n, d), v.reshape(b * h, n, d))[0].reshape(b, h, n, d)
        ours = L.lsh_shared_qk(q, None, v, causal=causal, bucket_size=bucket_size, n_hashes=n_hashes).out
    return float((theirs - ours).abs().max())


def _table(headers: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(*headers, header_style="bold")
        for r in rows:
            t.add_row(*r)
        Console(width=max(100, len(" | ".join(headers)) + 20)).print(t)
    except ImportError:  # a plain Markdown table
        print("| " + " | ".join(headers) + " |")
        print("|" + "|".join("---:" for _ in headers) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")


def _fmt(x, spec: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _write_csv(path: str, rows: list[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")


def _timing(a, lsh_cls) -> list[dict]:
    pair = _Pair(lsh_cls, a.bucket_size, a.n_hashes, a.causal, a.seed)
    common = {"batch": a.batch, "heads": a.heads, "head_dim": a.head_dim, "dtype": "float32",
              "causal": a.causal, "bucket_size": a.bucket_size, "n_hashes": a.n_hashes,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine()}
    out = []
    for n in _seq_lens(a.seq_lens):
        g = torch.Generator().manual_seed(a.seed)
        q = torch.randn(a.batch, a.heads, n, a.head_dim, generator=g)
        v = torch.randn(a.batch, a.heads, n, a.head_dim, generator=g)
        row = {"n": n, **common}
        first, med = _median_ms(lambda: pair.ours(q, v), a.repeats)
        row.update(ours_first_ms=first, ours_ms=med,
                   ours_rel_err=_rel_err(pair.ours(q, v), q, v, a.causal, a.error_rows))
        if pair.theirs_ok(n):
            first, med = _median_ms(lambda: pair.theirs(q, v), a.repeats)
            row.update(theirs_first_ms=first, theirs_ms=med,
                       theirs_rel_err=_rel_err(pair.theirs(q, v), q, v, a.causal, a.error_rows))
            row["speedup"] = row["theirs_ms"] / row["ours_ms"]
            row["max_abs_diff"] = float((pair.ours(q, v) - pair.theirs(q, v)).abs().max())
        else:
            row.update(theirs_ms=None, theirs_rel_err=None, speedup=None, max_abs_diff=None,
                       theirs_note=f"reformer-pytorch needs n divisible by {2 * a.bucket_size}")
        print(f"n={n:6d}  ours {row['ours_ms']:9.1f} ms  reformer-pytorch "
              f"{_fmt(row.get('theirs_ms'), '9.1f')} ms  rel_err ours {row['ours_rel_err']:.4f} "
              f"theirs {_fmt(row.get('theirs_rel_err'), '.4f')}", flush=True)
        out.append(row)
    print()
    _table(["n", "ours ms", "theirs ms", "theirs/ours", "ours rel_err", "theirs rel_err",
            "max |ours - theirs|"],
           [[str(r["n"]), _fmt(r["ours_ms"], ".1f"), _fmt(r.get("theirs_ms"), ".1f"),
             _fmt(r.get("speedup"), ".2f"), _fmt(r["ours_rel_err"], ".4f"),
             _fmt(r.get("theirs_rel_err"), ".4f"), _fmt(r.get("max_abs_diff"), ".1e")]
            for r in out])
    print("(theirs = reformer-pytorch LSHAttention; medians of forward calls, first call "
          f"excluded; theirs/ours > 1: ours is faster; rel_err against exact shared-QK attention "
          f"on {a.error_rows} sampled rows)")
    return out


CLUSTER_SIZE = 32  # tokens per cluster (on average) of the 'clustered' inputs
CLUSTER_LOGIT = 4.0  # score of a token against the others of its cluster


def _clustered(shape: Shape, seed: int):
    """q, v [B, H, n, D]: each token is one of n / CLUSTER_SIZE random directions, of norm
    CLUSTER_LOGIT sqrt(D) (its shared-QK score with its cluster is ~CLUSTER_LOGIT, with the
    rest ~N(0, 1/D) * CLUSTER_LOGIT), plus 5% noise, in random order: the structure LSH is
    built for. ``approx.inputs``' 'sharp' queries are built from a few of the *k* vectors,
    which shared-QK attention ignores, so for it they are only mildly structured."""
    g = torch.Generator().manual_seed(seed)
    b, h, n, d = shape.batch, shape.heads, shape.seq_len, shape.head_dim
    centers = torch.randn(b, h, max(1, n // CLUSTER_SIZE), d, generator=g)
    centers = centers / centers.norm(dim=-1, keepdim=True)
    which = torch.randint(0, centers.shape[2], (b, h, n), generator=g)
    q = torch.gather(centers, 2, which.unsqueeze(-1).expand(b, h, n, d))
    q = CLUSTER_LOGIT * math.sqrt(d) * (q + 0.05 * torch.randn(b, h, n, d, generator=g))
    return q, torch.randn(b, h, n, d, generator=g)


def _sweep(a, lsh_cls) -> list[dict]:
    n = a.sweep_n
    shape = Shape(batch=a.batch, heads=a.heads, kv_heads=a.heads, seq_len=n, kv_len=n,
                  head_dim=a.head_dim)
    out = []
    for kind in ("gaussian", "sharp", "clustered"):
        if kind == "clustered":
            q, v = _clustered(shape, a.seed)
        else:
            q, _, v = approx.inputs(shape, kind, seed=a.seed)
        for h in (1, 2, 4, 8):
            pair = _Pair(lsh_cls, a.bucket_size, h, a.causal, a.seed)
            row = {"kind": kind, "n": n, "n_hashes": h, "bucket_size": a.bucket_size,
                   "causal": a.causal,
                   "ours_rel_err": _rel_err(pair.ours(q, v), q, v, a.causal, n)}
            row["theirs_rel_err"] = (_rel_err(pair.theirs(q, v), q, v, a.causal, n)
                                     if pair.theirs_ok(n) else None)
            out.append(row)
    print()
    _table(["inputs", "n_hashes", "ours rel_err", "theirs rel_err"],
           [[r["kind"], str(r["n_hashes"]), _fmt(r["ours_rel_err"], ".4f"),
             _fmt(r["theirs_rel_err"], ".4f")] for r in out])
    print(f"(theirs = reformer-pytorch; n = {n}, bucket_size = {a.bucket_size}; error over all "
          "rows against exact shared-QK attention; gaussian / sharp: attnbench.approx.inputs; "
          f"clustered: clusters of ~{CLUSTER_SIZE} tokens with in-cluster logit "
          f"~{CLUSTER_LOGIT:g})")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-lens", default="1024..8192", help="A..B (powers of two) or a list")
    ap.add_argument("--bucket-size", type=int, default=64)
    ap.add_argument("--n-hashes", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per kernel and n")
    ap.add_argument("--error-rows", type=int, default=512, help="query rows the error is taken on")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="CSV of the timing rows")
    ap.add_argument("--sweep-hashes", action="store_true",
                    help="instead: error vs n_hashes (1, 2, 4, 8) on gaussian, sharp and clustered "
                         "inputs")
    ap.add_argument("--sweep-n", type=int, default=1024)
    a = ap.parse_args()

    try:
        from reformer_pytorch.reformer_pytorch import LSHAttention
    except ImportError as e:
        print(f"bench_reformer: the 'reformer-pytorch' package is not importable ({e}).\n"
              "It is not an attnbench dependency; install it only to run this comparison:\n"
              "    pip install reformer-pytorch", file=sys.stderr)
        return 2
    from importlib.metadata import version

    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, reformer-pytorch "
          f"{version('reformer-pytorch')}, bucket_size {a.bucket_size}, n_hashes {a.n_hashes}, "
          f"{'causal' if a.causal else 'non-causal'}, B={a.batch} H={a.heads} D={a.head_dim} fp32")

    for causal in (False, True):  # the same computation, given the same buckets
        err = _agreement(LSHAttention, a.bucket_size, a.n_hashes, causal)
        print(f"check: reformer-pytorch with our buckets ({'causal' if causal else 'non-causal'}) "
              f"vs ours: max abs diff {err:.2e} (fp64)")
        if err > 1e-8:
            print("bench_reformer: reformer-pytorch does not compute the same LSH attention",
                  file=sys.stderr)
            return 1

    if a.sweep_hashes:
        rows = _sweep(a, LSHAttention)
        stem, ext = os.path.splitext(a.out)
        _write_csv(f"{stem}-hash-sweep{ext or '.csv'}", rows)
        return 0
    _write_csv(a.out, _timing(a, LSHAttention))
    return 0


if __name__ == "__main__":
    sys.exit(main())
