"""Sparse patterns with global tokens or block layouts: Longformer, BigBird, block-sparse.

Definitions (qp = i + M - N is the query's position among the keys; blocks are in key space,
query block qb = floor(qp / block), key block kb = j // block):

* ``longformer``: sliding window |qp - j| <= window, plus global tokens (``global_tokens``: an
  int k = the first k positions, or a list of positions): a query at a global position attends
  to every key, and every query attends to the global keys.
* ``bigbird``: a query block attends to the key blocks within ``window_blocks // 2`` blocks of
  it, to ``global_blocks`` global blocks (the first ceil(g/2) and last floor(g/2) blocks, as in
  BigBird's ITC code; global query blocks also attend everywhere), and to ``random_blocks``
  random blocks drawn once per (number of key blocks, ``seed``) among the others.
* ``block_sparse``: a block layout; presets ``strided`` (|qb - kb| < s or qb - kb = 0 mod s)
  and ``fixed`` (qb // s == kb // s, plus the last ``summary`` blocks of each stride segment,
  attended by everyone) are the Sparse Transformer's (Child et al. 2019) at block granularity
  with ``stride`` s blocks; ``stride='auto'`` is round(sqrt(key blocks)), the paper's stride
  ~ sqrt(n), so either preset does O(n sqrt(n)) work. An explicit bool matrix
  [key blocks x key blocks] gives the rows of query blocks 0.. directly.

Queries at negative positions (N > M): they are never global and have no random blocks; the
window (Longformer, BigBird), the global keys and the presets' formulas apply to them as to any
position, so a query just before the first key still sees its window's keys and the global
ones; an explicit layout has no row for them, so they attend to nothing (a zero output row).
"""
from __future__ import annotations

import functools

import torch

from attnbench import params as P
from attnbench.patterns.base import Pattern


def global_positions(m: int, spec) -> torch.Tensor:
    """Global token positions from an int (the first k) or a list, kept inside [0, m)."""
    if isinstance(spec, int):
        return torch.arange(min(spec, m))
    idx = torch.tensor(sorted(set(spec)), dtype=torch.long)
    return idx[(idx >= 0) & (idx < m)]


def _longformer(n, m, params, device):
    w, off = int(params["window"]), m - n
    flags = torch.zeros(max(m, 1), dtype=torch.bool, device=device)
    flags[global_positions(m, params["global_tokens"]).to(device)] = True

    def mask_mod(b, h, q_idx, kv_idx):
        qp = q_idx + off
        d = qp - kv_idx
        q_global = (qp >= 0) & flags[qp.clamp(min=0)]
        return ((d <= w) & (d >= -w)) | flags[kv_idx] | q_global

    return mask_mod


def first_query_block(n: int, m: int, block: int) -> int:
    """floor((M - N) / block): the block of query 0 (negative when N > M by a block or more)."""
    return (m - n) // block


@functools.lru_cache(maxsize=64)
def bigbird_layout(nbk: int, window_blocks: int, global_blocks: int, random_blocks: int, seed: int) -> torch.Tensor:
    """Bool [nbk, nbk] block layout of query blocks 0..nbk-1, cached per (nbk, params)."""
    with torch.inference_mode(False):  # cached: never an inference tensor (autograd may use it later)
        i = torch.arange(nbk)
        fixed = ((i[:, None] - i[None, :]).abs() <= window_blocks // 2) | bigbird_global(nbk, global_blocks)[None, :]
        fixed |= bigbird_global(nbk, global_blocks)[:, None]
        # Random blocks: r per query block among the blocks not already attended (seeded).
        gen = torch.Generator().manual_seed(seed)
        score = torch.rand(nbk, nbk, generator=gen).masked_fill(fixed, -1.0)
        r = min(random_blocks, nbk)
        rand = torch.zeros(nbk, nbk, dtype=torch.bool)
        if r > 0:
            top = score.topk(r, dim=1)
            rand.scatter_(1, top.indices, top.values >= 0)  # only real candidates
        return fixed | rand


def bigbird_global(nbk: int, global_blocks: int) -> torch.Tensor:
    """Bool [nbk]: the first ceil(g/2) and the last floor(g/2) blocks."""
    i = torch.arange(nbk)
    return (i < (global_blocks + 1) // 2) | (i >= nbk - global_blocks // 2)


def bigbird_rows(qb0: int, nbk: int, params: dict) -> torch.Tensor:
    """Bool [nbk - qb0, nbk]: the layout rows of query blocks qb0..nbk-1 (qb0 may be negative)."""
    lay = bigbird_layout(nbk, int(params["window_blocks"]), int(params["global_blocks"]),
                         int(params["random_blocks"]), int(params["seed"]))
    if qb0 >= 0:
        return lay[qb0:]
    qb = torch.arange(qb0, 0)[:, None]  # [-qb0, 1] negative query blocks
    kb = torch.arange(nbk)[None, :]
    before = ((kb - qb) <= int(params["window_blocks"]) // 2) | bigbird_global(nbk, int(params["global_blocks"]))[None, :]
    return torch.cat([before, lay], 0)


def _block_table(rows: torch.Tensor, qb0: int, bs: int, off: int, device):
    table = rows.to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        return table[torch.div(q_idx + off, bs, rounding_mode="floor") - qb0, kv_idx // bs]

    return mask_mod


def _bigbird(n, m, params, device):
    bs = int(params["block"])
    nbk, qb0 = -(-m // bs), first_query_block(n, m, bs)
    return _block_table(bigbird_rows(qb0, nbk, params), qb0, bs, m - n, device)


def block_stride(stride, nbk: int) -> int:
    """The preset's stride in blocks: an int >= 1, or 'auto' = round(sqrt(key blocks)), the
    Sparse Transformer's choice (stride ~ sqrt(n)) that makes the pattern O(n sqrt(n))."""
    if stride == "auto":
        return max(1, round(nbk ** 0.5))
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"block_sparse stride {stride!r}: allowed: an int >= 1 or 'auto' (sqrt of the key blocks)")
    return stride


def block_sparse_layout(nbq: int, nbk: int, params: dict) -> torch.Tensor:
    """Bool [nbq, nbk]: the layout rows of the last ``nbq`` query blocks (key space)."""
    return block_sparse_rows(nbk - nbq, nbk, params)


def block_sparse_rows(qb0: int, nbk: int, params: dict) -> torch.Tensor:
    """Bool [nbk - qb0, nbk]: layout rows of query blocks qb0..nbk-1 from a preset's formula,
    or from an explicit [nbk, nbk] matrix (no row for a negative block: nothing attended)."""
    lay = params["layout"]
    if not isinstance(lay, str):
        t = torch.as_tensor(lay, dtype=torch.bool)
        if t.shape != (nbk, nbk):
            raise ValueError(f"block_sparse layout has shape {tuple(t.shape)}, this case needs {(nbk, nbk)} "
                             f"(key blocks ceil(M / block) x the same)")
        return torch.cat([torch.zeros(max(0, -qb0), nbk, dtype=torch.bool), t[max(qb0, 0):]], 0)
    s = block_stride(params["stride"], nbk)
    qb = torch.arange(qb0, nbk)[:, None]  # query blocks in key-block space
    kb = torch.arange(nbk)[None, :]
    if lay == "strided":
        return ((qb - kb).abs() < s) | ((qb - kb) % s == 0)
    c = int(params["summary"])
    return (torch.div(qb, s, rounding_mode="floor") == kb // s) | (kb % s >= s - c)


def _block_sparse(n, m, params, device):
    bs = int(params["block"])
    nbk, qb0 = -(-m // bs), first_query_block(n, m, bs)
    return _block_table(block_sparse_rows(qb0, nbk, params), qb0, bs, m - n, device)


def _layout_reasons(n: int, m: int, params: dict) -> list[str]:
    lay, nbk = params["layout"], -(-m // int(params["block"]))
    if not isinstance(lay, str) and (len(lay), len(lay[0])) != (nbk, nbk):
        return [f"block_sparse layout is {len(lay)} x {len(lay[0])} blocks; M = {m} keys in blocks of "
                f"{params['block']} need {nbk} x {nbk}"]
    return []


LONGFORMER = Pattern(
    name="longformer", family="sparse", make_mask=_longformer, decode=True,
    params={"window": P.integer(256, minimum=0, doc="keys on each side of the query"),
            "global_tokens": P.positions(16, doc="the first k positions, or a list of positions")},
    doc="sliding window plus global tokens (attend to / attended by all)",
    paper="Beltagy et al. 2020, Longformer",
    examples=({"window": 3, "global_tokens": 2}, {"window": 5, "global_tokens": [0, 20, 36]}),
)
BIGBIRD = Pattern(
    name="bigbird", family="sparse", make_mask=_bigbird,
    params={"block": P.integer(64, minimum=1, doc="tokens per block"),
            "window_blocks": P.integer(3, minimum=1, doc="blocks of the sliding window (w // 2 each side)"),
            "global_blocks": P.integer(2, minimum=0, doc="global blocks (first ceil(g/2), last floor(g/2))"),
            "random_blocks": P.integer(3, minimum=0, doc="random key blocks per query block"),
            "seed": P.integer(0, minimum=0, doc="seed of the random blocks")},
    doc="BigBird ITC: 3-block window, global blocks, seeded random blocks",
    paper="Zaheer et al. 2020, Big Bird",
    examples=({"block": 4, "window_blocks": 3, "global_blocks": 2, "random_blocks": 1, "seed": 1},
              {"block": 8, "window_blocks": 1, "global_blocks": 0, "random_blocks": 2, "seed": 0}),
)
BLOCK_SPARSE = Pattern(
    name="block_sparse", family="sparse", make_mask=_block_sparse,
    params={"block": P.integer(64, minimum=1, doc="tokens per block"),
            "layout": P.layout("strided", ("strided", "fixed"), doc="preset or explicit bool matrix"),
            "stride": P.int_or_auto("auto", minimum=1, doc="stride in blocks ('auto': sqrt of the key blocks)"),
            "summary": P.integer(1, minimum=0, doc="summary blocks per stride segment ('fixed')")},
    doc="block layout matrix; presets: Sparse Transformer strided / fixed (stride 'auto' = sqrt(n / block) blocks)",
    paper="Child et al. 2019, Sparse Transformers",
    examples=({"block": 4, "layout": "strided", "stride": 3}, {"block": 8, "layout": "fixed", "stride": 2}),
    shape_reasons=_layout_reasons,
)
