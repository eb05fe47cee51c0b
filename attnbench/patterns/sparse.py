"""Sparse patterns with global tokens or block layouts: Longformer, BigBird, block-sparse.

Definitions (qp = i + M - N is the query's position among the keys; blocks are in key space,
query block qb = floor(qp / block), key block kb = j // block):

* ``longformer``: sliding window |qp - j| <= window, plus global tokens (``global_tokens``: an
  int k = the first k positions, or a list of positions): a query at a global position attends
  to every key, and every query attends to the global keys.
* ``bigbird``: a query block attends to the key blocks within ``window_blocks // 2`` blocks of
  it, to ``global_blocks`` global blocks (the first ceil(g/2) and last floor(g/2) blocks, as in
  BigBird's ITC code; global query blocks also attend everywhere), and to ``random_blocks``
  random blocks drawn once per (number of key blocks, ``seed``) among the others (uniformly:
  the top of a seeded score matrix up to ``BIGBIRD_MATRIX_BLOCKS`` key blocks, row-wise draws
  beyond, so that no step is O((n / block)^2); ``attnbench.patterns.blocks``).
* ``block_sparse``: a block layout; presets ``strided`` (|qb - kb| < s or qb - kb = 0 mod s)
  and ``fixed`` (qb // s == kb // s, plus the last ``summary`` blocks of each stride segment,
  attended by everyone) are the Sparse Transformer's (Child et al. 2019) at block granularity
  with ``stride`` s blocks; ``stride='auto'`` is round(sqrt(key blocks)), the paper's stride
  ~ sqrt(n), so either preset does O(n sqrt(n)) work. An explicit bool matrix
  [key blocks x key blocks] gives the rows of query blocks 0.. directly.

Each pattern also counts its pairs by formula (``Pattern.pairs``): what @flex, @dense and
@sdpa_mask report as FLOPs, O(n / block) at most (``attnbench.patterns.counts``).

Queries at negative positions (N > M): they are never global and have no random blocks; the
window (Longformer, BigBird), the global keys and the presets' formulas apply to them as to any
position, so a query just before the first key still sees its window's keys and the global
ones; an explicit layout has no row for them, so they attend to nothing (a zero output row).
"""
from __future__ import annotations

import torch

from attnbench import params as P
from attnbench.patterns.base import Pattern
from attnbench.patterns.blocks import (  # noqa: F401  bigbird_layout, block_stride: re-exported for their readers
    bigbird_layout, bigbird_row_stats, bigbird_rows, block_sparse_row_stats, block_sparse_rows, block_stride,
    first_query_block)
from attnbench.patterns.counts import band_pairs, block_pairs


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


def _block_table(rows: torch.Tensor, qb0: int, bs: int, off: int, device):
    table = rows.to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        return table[torch.div(q_idx + off, bs, rounding_mode="floor") - qb0, kv_idx // bs]

    return mask_mod


def _bigbird(n, m, params, device):
    bs = int(params["block"])
    nbk, qb0 = -(-m // bs), first_query_block(n, m, bs)
    return _block_table(bigbird_rows(qb0, nbk, params), qb0, bs, m - n, device)


def block_sparse_layout(nbq: int, nbk: int, params: dict) -> torch.Tensor:
    """Bool [nbq, nbk]: the layout rows of the last ``nbq`` query blocks (key space)."""
    return block_sparse_rows(nbk - nbq, nbk, params)


def _block_sparse(n, m, params, device):
    bs = int(params["block"])
    nbk, qb0 = -(-m // bs), first_query_block(n, m, bs)
    return _block_table(block_sparse_rows(qb0, nbk, params), qb0, bs, m - n, device)


def _count_in(sorted_pos: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """How many of ``sorted_pos`` lie in [lo, hi] (elementwise)."""
    return torch.clamp(torch.searchsorted(sorted_pos, hi, right=True) - torch.searchsorted(sorted_pos, lo), min=0)


def longformer_pairs(n: int, m: int, causal: bool, params: dict) -> int:
    """Allowed pairs of ``longformer`` in O(global tokens): the window of every row, global rows
    made whole, then each global key for the rows whose window does not hold it already."""
    w, off = int(params["window"]), m - n
    hi = 0 if causal else w  # the window is qp - w .. qp + hi
    g = global_positions(m, params["global_tokens"])  # [G] sorted
    gq = g[g >= off]  # global positions that are queries: whole rows
    total = band_pairs(off, m - 1, -w, hi, m)
    total -= int((torch.clamp(gq + hi, max=m - 1) - torch.clamp(gq - w, min=0) + 1).sum())
    total += int((gq + 1).sum()) if causal else m * len(gq)
    first_row = torch.clamp(g, min=off) if causal else torch.full_like(g, off)  # rows that see key g
    sees = (m - first_row) - _count_in(gq, first_row, torch.full_like(g, m - 1))
    a, z = torch.clamp(g - hi, min=off), torch.clamp(g + w, max=m - 1)  # rows whose window holds g
    in_window = torch.clamp(z - a + 1, min=0) - _count_in(gq, a, z)
    return total + int((sees - in_window).sum())


def _layout_pairs(row_stats):
    def pairs(n: int, m: int, causal: bool, params: dict) -> int:
        """Allowed pairs of the block layout from its rows' statistics, O(n / block)."""
        b = int(params["block"])
        nbk = -(-m // b)
        return block_pairs(row_stats(first_query_block(n, m, b), nbk, params), n, m, b, causal)

    return pairs


def _layout_reasons(n: int, m: int, params: dict) -> list[str]:
    lay, nbk = params["layout"], -(-m // int(params["block"]))
    if not isinstance(lay, str) and (len(lay), len(lay[0])) != (nbk, nbk):
        return [f"block_sparse layout is {len(lay)} x {len(lay[0])} blocks; M = {m} keys in blocks of "
                f"{params['block']} need {nbk} x {nbk}"]
    return []


LONGFORMER = Pattern(
    name="longformer", family="sparse", make_mask=_longformer, decode=True, pairs=longformer_pairs,
    params={"window": P.integer(256, minimum=0, doc="keys on each side of the query"),
            "global_tokens": P.positions(16, doc="the first k positions, or a list of positions")},
    doc="sliding window plus global tokens (attend to / attended by all)",
    paper="Beltagy et al. 2020, Longformer",
    examples=({"window": 3, "global_tokens": 2}, {"window": 5, "global_tokens": [0, 20, 36]}),
)
BIGBIRD = Pattern(
    name="bigbird", family="sparse", make_mask=_bigbird, pairs=_layout_pairs(bigbird_row_stats),
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
    name="block_sparse", family="sparse", make_mask=_block_sparse, pairs=_layout_pairs(block_sparse_row_stats),
    params={"block": P.integer(64, minimum=1, doc="tokens per block"),
            "layout": P.layout("strided", ("strided", "fixed"), doc="preset or explicit bool matrix"),
            "stride": P.int_or_auto("auto", minimum=1, doc="stride in blocks ('auto': sqrt of the key blocks)"),
            "summary": P.integer(1, minimum=0, doc="summary blocks per stride segment ('fixed')")},
    doc="block layout matrix; presets: Sparse Transformer strided / fixed (stride 'auto' = sqrt(n / block) blocks)",
    paper="Child et al. 2019, Sparse Transformers",
    examples=({"block": 4, "layout": "strided", "stride": 3}, {"block": 8, "layout": "fixed", "stride": 2}),
    shape_reasons=_layout_reasons,
)
