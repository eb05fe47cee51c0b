"""@blocked kernels of the sparse patterns: the block-sparse engine (``engines/blocksparse``) fed
with each pattern's block layout. Plans (index tensors and the masks of partially allowed column
ranges) are built once per (shape, params, causal) and cached, in the worker; the kernels' FLOPs
are the plan's computed score pairs, which the cost functions get from the plan's sizes
(``blocksparse.plan_sizes`` on the layout's per-row counts by formula, O(n / block)) without
building the plan or the layout.

Besides the pattern's parameters the kernels take engine knobs (for tests and tuning): ``dense``
('auto' | 'never' | 'all': which query blocks run as dense rows), ``band`` (strided band views),
``score_bytes`` (the score tile a chunk is sized to; none = the engine's defaults); Longformer's
also ``block`` (none = about a quarter of the window, 8..64).

Queries at negative key positions (N > M) have no block of their own here: these kernels refuse
N > M with a reason, and @dense / @sdpa_mask / @flex compute such cases from the definition.
"""
from __future__ import annotations

import bisect
import functools

import torch

from attnbench import params as P
from attnbench.case import Shape, freeze
from attnbench.engines import blocksparse
from attnbench.patterns import BIGBIRD, BLOCK_SPARSE, LONGFORMER, Pattern
from attnbench.patterns.counts import one_thread
from attnbench.patterns.sparse import (bigbird_row_stats, bigbird_rows, block_sparse_row_stats, block_sparse_rows,
                                       global_positions)
from attnbench.registry import AttnOutput, VariantSpec, add, lookup
from attnbench.variants.masked import pattern_kernel_fields, pattern_reasons

KNOBS = {
    "dense": P.choice("auto", ("auto", "never", "all"), doc="query blocks as dense rows: by cost, none, all"),
    "band": P.boolean(True, doc="read contiguous key-block runs through strided views"),
    "score_bytes": P.integer(None, minimum=1, optional="the engine's tile sizes", doc="score tile per chunk"),
}
LONGFORMER_KNOBS = {"block": P.integer(None, minimum=1, optional="about window / 4, 8..64", doc="block size"),
                    **KNOBS}


def _mask_fn(pattern: Pattern, n: int, m: int, params: dict):
    """The pattern's mask_mod as f(query position in key space, key position)."""
    mask_mod = pattern.make_mask(n, m, params, None)
    off = m - n
    zero = torch.zeros((), dtype=torch.long)
    return lambda qp, kp: mask_mod(zero, zero, qp - off, kp)


def longformer_block(window: int) -> int:
    """Block size of longformer@blocked: about a quarter of the window, 8..64."""
    b = 8
    while b < 64 and 4 * b < window:
        b *= 2
    return b


def _longformer_layout(n: int, m: int, window: int, b: int) -> torch.Tensor:
    """Key blocks holding a key within ``window`` of some query of the query block."""
    off, nbk = m - n, -(-m // b)
    qb = torch.arange(off // b, nbk)
    qlo = torch.clamp(qb * b, min=off)
    qhi = torch.clamp((qb + 1) * b, max=m) - 1
    kb = torch.arange(nbk)
    return ((kb * b + b - 1)[None, :] >= (qlo - window)[:, None]) & ((kb * b)[None, :] <= (qhi + window)[:, None])


def _knobs(params: dict) -> dict:
    return dict(dense=params["dense"], band=params["band"], score_bytes=params["score_bytes"])


def _longformer_plan(n: int, m: int, causal: bool, params: dict) -> blocksparse.BlockPlan:
    b = params["block"] or longformer_block(params["window"])
    g = global_positions(m, params["global_tokens"])
    heavy = g[g >= m - n] - (m - n)  # global queries attend to every key: dense rows
    return blocksparse.build_plan(n, m, b, _longformer_layout(n, m, params["window"], b),
                                  _mask_fn(LONGFORMER, n, m, params), causal=causal, extra_keys=g,
                                  heavy_rows=heavy, **_knobs(params))


def _layout_plan(pattern: Pattern, rows_fn, n: int, m: int, causal: bool, params: dict) -> blocksparse.BlockPlan:
    b = params["block"]
    layout = rows_fn((m - n) // b, -(-m // b), params)  # [query blocks from (M - N) // b, key blocks]
    return blocksparse.build_plan(n, m, b, layout, _mask_fn(pattern, n, m, params), causal=causal,
                                  block_exact=True, **_knobs(params))


@functools.lru_cache(maxsize=32)
def _cached_plan(name: str, n: int, m: int, causal: bool, frozen: tuple) -> blocksparse.BlockPlan:
    params = dict(frozen)
    if name == "longformer":
        return _longformer_plan(n, m, causal, params)
    if name == "bigbird":
        return _layout_plan(BIGBIRD, bigbird_rows, n, m, causal, params)
    return _layout_plan(BLOCK_SPARSE, block_sparse_rows, n, m, causal, params)


def plan(name: str, n: int, m: int, causal: bool, params: dict | None = None) -> blocksparse.BlockPlan:
    """The cached plan of ``name@blocked`` for this case (N <= M); ``params`` may be partial
    (the kernel's declared defaults fill the rest)."""
    if n > m:
        raise ValueError(f"{name}@blocked needs N <= M (got N={n} queries, M={m} keys)")
    params = lookup(f"{name}@blocked").resolve_params(params)
    return _cached_plan(name, n, m, bool(causal), freeze(params))


def _longformer_counts(n: int, m: int, window: int, b: int, causal: bool):
    """(counts, first, last) [query blocks] of :func:`_longformer_layout` by formula (causal:
    blocks up to the query block's own)."""
    off, nbk = m - n, -(-m // b)
    qb = torch.arange(off // b, nbk)
    qlo, qhi = torch.clamp(qb * b, min=off), torch.clamp((qb + 1) * b, max=m) - 1
    first = torch.clamp(torch.div(qlo - window, b, rounding_mode="floor"), min=0)
    last = torch.clamp(torch.div(qhi + window, b, rounding_mode="floor"), max=nbk - 1)
    if causal:
        last = torch.minimum(last, qb)
    return last - first + 1, first, last


def _longformer_key_range(m: int, window: int, causal: bool, g: list[int]):
    """The keys non-global queries at positions p0..p1 may attend: their windows and the
    global keys (causal: those up to p1), as (lowest, one past the highest)."""
    def key_range(p0: int, p1: int) -> tuple[int, int]:
        lo, hi = max(0, p0 - window), min(m - 1, p1 if causal else p1 + window)
        seen = g[:bisect.bisect_right(g, p1)] if causal else g  # sorted global keys these rows see
        if seen:
            lo, hi = min(lo, seen[0]), max(hi, seen[-1])
        return lo, hi + 1

    return key_range


def _longformer_sizes(n: int, m: int, causal: bool, params: dict) -> blocksparse.PlanSizes:
    b = params["block"] or longformer_block(params["window"])
    g = global_positions(m, params["global_tokens"])
    counts, first, last = _longformer_counts(n, m, params["window"], b, causal)
    return blocksparse.plan_sizes(n, m, b, counts, first, last, causal=causal, extra_keys=g,
                                  heavy_rows=g[g >= m - n] - (m - n), **_knobs(params),
                                  key_range=_longformer_key_range(m, params["window"], causal, g.tolist()))


@functools.lru_cache(maxsize=64)
@one_thread()
def _cached_sizes(name: str, n: int, m: int, causal: bool, frozen: tuple) -> blocksparse.PlanSizes:
    params = dict(frozen)
    if name == "longformer":
        return _longformer_sizes(n, m, causal, params)
    b = params["block"]
    row_stats = bigbird_row_stats if name == "bigbird" else block_sparse_row_stats
    counts, first, last = row_stats((m - n) // b, -(-m // b), params).causal_cut(causal)
    return blocksparse.plan_sizes(n, m, b, counts, first, last, causal=causal, **_knobs(params))


def sizes(name: str, n: int, m: int, causal: bool, params: dict | None = None) -> blocksparse.PlanSizes:
    """``plan(name, ...).sizes()`` without building the plan: O(n / block) from the layout's
    per-row statistics (``patterns.counts``), what the cost functions read in the parent."""
    if n > m:
        raise ValueError(f"{name}@blocked needs N <= M (got N={n} queries, M={m} keys)")
    params = lookup(f"{name}@blocked").resolve_params(params)
    return _cached_sizes(name, n, m, bool(causal), freeze(params))


def _make_forward(name: str):
    def forward(q, k, v, *, causal=False, state=None, need_weights=False, **params) -> AttnOutput:
        """q [B, H, N, D], k/v [B, Hkv, M, D]; gathered blocks per query block, dense global rows."""
        n, m = q.shape[2], k.shape[2]
        if n == 0 or m == 0:
            return AttnOutput(out=q.new_zeros(q.shape))
        return AttnOutput(out=blocksparse.attention(q, k, v, plan(name, n, m, causal, params)))

    return forward


def _costs(name: str):
    def live(shape: Shape) -> bool:
        return 0 < shape.seq_len <= shape.kv_len

    def flops(shape: Shape, params) -> float:
        """4 D per score pair the plan computes (its sizes, not the plan: O(n / block))."""
        if not live(shape):
            return 0.0
        sz = sizes(name, shape.seq_len, shape.kv_len, shape.causal, params)
        return blocksparse.flops(sz, shape.batch, shape.heads, shape.head_dim)

    def memory(shape: Shape, params) -> float:
        """Peak bytes above the inputs in shape.mode (engines/blocksparse: peak_bytes)."""
        if not live(shape):
            return 0.0
        sz = sizes(name, shape.seq_len, shape.kv_len, shape.causal, params)
        return blocksparse.peak_bytes(sz, shape.batch, shape.heads, shape.kv_heads, shape.head_dim,
                                      shape.element_size, grad=shape.needs_grad)

    return flops, memory


def _reasons(pattern: Pattern):
    def fn(shape: Shape, params) -> list[str]:
        r = pattern_reasons(pattern, shape, params)
        if shape.seq_len > shape.kv_len:
            r.append(f"@blocked aligns query blocks with key blocks and needs N <= M "
                     f"(got N={shape.seq_len}, M={shape.kv_len}); @dense, @sdpa_mask and @flex run it")
        return r

    return fn


_BLOCKED = {
    "longformer": (LONGFORMER, LONGFORMER_KNOBS, "O(n w d)",
                   "band of key blocks read through strided views (no copy) plus the global key columns "
                   "(masked where the band holds them); global query rows dense"),
    "bigbird": (BIGBIRD, KNOBS, "O(n b d (w + g + r))",
                "window/global/random key blocks gathered per query block; global query blocks as dense rows"),
    "block_sparse": (BLOCK_SPARSE, KNOBS, "O(nnz(layout) b^2 d)",
                     "(presets with stride 'auto': O(n sqrt(n) d)); the layout's key blocks gathered per query "
                     "block (a band of blocks read in place); near-dense rows as dense SDPA rows"),
}
for _name, (_pat, _knobs_declared, _time, _how) in _BLOCKED.items():
    _flops_fn, _memory_fn = _costs(_name)
    _fields = pattern_kernel_fields(_pat)
    _fields.update(params={**_pat.params, **_knobs_declared}, flops_fn=_flops_fn)
    add(VariantSpec(
        name=f"{_name}@blocked", forward=_make_forward(_name), time=_time, memory="O(n d)",
        memory_fn=_memory_fn, extra_reasons=_reasons(_pat), default=True,
        doc=f"{_pat.doc}; block-sparse engine: {_how}", **_fields,
    ))
