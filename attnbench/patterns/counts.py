"""Closed-form counts of attended (query, key) pairs, for the cost model: O(1) for bands, O(n / b)
for block layouts, never O(N M) and never an [N, M] or [n / b, n / b] tensor.

Positions as everywhere: query i sits at key position qp = i + M - N; keys are 0..M-1. Block
layouts are described row by row (:class:`BlockRows`, query blocks qb = floor(qp / b) in key
space, from floor((M - N) / b) to ceil(M / b) - 1), so a pattern may give its rows by formula
and the same numbers serve the pair count and the block-sparse engine's planner.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Callable, Iterator

import torch

# Rows per piece in the O(n / b) passes over query blocks: each temporary stays 256 KB, memory
# the allocator reuses (fresh multi-MB temporaries fault their pages in: 3-5x slower at 10^6
# rows on a 2-core VM).
ROW_PIECE = 1 << 15


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch ops on the calling thread inside, the thread count as it was after (also a
    decorator). The counting passes are memory-bound; intra-op threads spinning against another
    process on the cores made them 4-6x slower (2 cores, a benchmark running beside)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def pieces(lo: int, hi: int) -> list[tuple[int, int]]:
    """[lo, hi) cut into ranges of at most ROW_PIECE (one empty range if lo >= hi)."""
    return [(a, min(a + ROW_PIECE, hi)) for a in range(lo, hi, ROW_PIECE)] or [(lo, lo)]


def positive_sum(a: int, c: int, x0: int, x1: int) -> int:
    """sum over integers x in [x0, x1] of max(0, a + c x)."""
    if x1 < x0:
        return 0
    if c == 0:
        return (x1 - x0 + 1) * max(0, a)
    if c > 0:  # a + c x >= 0 from x = ceil(-a / c)
        x0 = max(x0, -(a // c))
    else:  # a + c x >= 0 up to x = floor(a / -c)
        x1 = min(x1, a // -c)
    if x1 < x0:
        return 0
    return (x1 - x0 + 1) * (2 * a + c * (x0 + x1)) // 2


def clipped_band_sum(x0: int, x1: int, lo: int, hi: int, step: int, floor_: int, cap: int) -> int:
    """sum over x in [x0, x1] of the length of [max(floor_, lo + step x), min(cap, hi + step x)]
    (0 when empty), step >= 1: both ends move by ``step`` per x."""
    if x1 < x0:
        return 0
    xl = -((floor_ - lo) // -step)  # from here on lo + step x >= floor_
    xu = (cap - hi) // step  # up to here hi + step x <= cap
    cuts = sorted({x0, x1 + 1, *(x for x in (xl, xu + 1) if x0 < x <= x1)})
    total = 0
    for p, q in zip(cuts, cuts[1:]):
        low = (lo, step) if p >= xl else (floor_, 0)  # the bound active on [p, q - 1]
        up = (hi, step) if p <= xu else (cap, 0)
        total += positive_sum(up[0] - low[0] + 1, up[1] - low[1], p, q - 1)
    return total


def band_pairs(p0: int, p1: int, lo: int, hi: int, m: int) -> int:
    """Pairs (qp, j) with qp in [p0, p1], j in [0, m) and lo <= j - qp <= hi."""
    return clipped_band_sum(p0, p1, lo, hi, 1, 0, m - 1)


def mod_sum(x0: int, x1: int, b: int) -> int:
    """sum over x in [x0, x1] of (x mod b)."""
    def upto(x):  # sum over [0, x)
        q, r = divmod(x, b)
        return q * (b * (b - 1) // 2) + r * (r - 1) // 2

    return upto(x1 + 1) - upto(x0) if x1 >= x0 else 0


@dataclass(frozen=True)
class BlockRows:
    """A block layout, one entry per query block qb = qb0 .. nbk - 1 (key space), all [rows]:
    ``count`` key blocks in the row, ``first`` / ``last`` of them (any value where count is 0),
    ``count_le`` / ``last_le`` the same among blocks <= qb (what causal keeps), ``has_diag``
    (block qb itself) and ``has_last`` (the last key block, short when b does not divide M)."""

    qb0: int
    nbk: int
    count: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor
    count_le: torch.Tensor
    last_le: torch.Tensor
    has_diag: torch.Tensor
    has_last: torch.Tensor

    def causal_cut(self, causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(count, first, last) per row, with only blocks <= qb when ``causal``; first and last
        are 0 where the row is empty (the block-sparse engine's convention)."""
        count, first, last = (self.count_le, self.first, self.last_le) if causal else (
            self.count, self.first, self.last)
        has = count > 0
        zero = torch.zeros_like(count)
        return count, torch.where(has, first, zero), torch.where(has, last, zero)


def rows_by_pieces(qb0: int, nbk: int, piece: Callable[[int, int], BlockRows]) -> BlockRows:
    """:class:`BlockRows` of query blocks qb0..nbk-1 from ``piece(a, z)`` (the rows a..z-1),
    evaluated ROW_PIECE rows at a time into tensors allocated once."""
    out: dict = {}
    for a, z in pieces(qb0, nbk):
        part = piece(a, z)
        for name in (f.name for f in fields(BlockRows) if f.name not in ("qb0", "nbk")):  # the [rows] tensors
            t = getattr(part, name)
            out.setdefault(name, torch.empty(nbk - qb0, dtype=t.dtype))[a - qb0:z - qb0] = t
    return BlockRows(qb0=qb0, nbk=nbk, **out)


def rows_from_layout(layout: torch.Tensor, qb0: int) -> BlockRows:
    """:class:`BlockRows` of a bool layout [rows, nbk] whose first row is query block ``qb0``
    (O(rows x nbk): for explicit layouts and as the reference the formulas are tested against)."""
    lay = torch.as_tensor(layout, dtype=torch.bool)
    rows, nbk = lay.shape
    qb = torch.arange(qb0, qb0 + rows)
    kb = torch.arange(nbk)
    le = lay & (kb[None, :] <= qb[:, None])  # [rows, nbk]
    idx = torch.where(lay, kb, -1)  # [rows, nbk]
    return BlockRows(
        qb0=qb0, nbk=nbk, count=lay.sum(1), first=torch.where(lay, kb, nbk).min(1).values,
        last=idx.max(1).values, count_le=le.sum(1), last_le=torch.where(le, kb, -1).max(1).values,
        has_diag=(qb >= 0) & lay[torch.arange(rows), qb.clamp(0, nbk - 1)],
        has_last=lay[:, nbk - 1] if nbk else torch.zeros(rows, dtype=torch.bool))


def block_pairs(rows: BlockRows, n: int, m: int, b: int, causal: bool) -> int:
    """(query, key) pairs a block layout allows, per batch and head: every key of a listed
    block; with ``causal`` only keys <= qp (blocks before the diagonal whole, the diagonal
    block a triangle, nothing for a query at a negative position)."""
    total = 0
    for a, z in pieces(0, len(rows.count)):
        qb = torch.arange(rows.qb0 + a, rows.qb0 + z)
        lo = torch.clamp(qb * b, min=m - n)  # first / last query position of each block
        hi = torch.clamp((qb + 1) * b, max=m) - 1
        nrows = hi - lo + 1
        if not causal:
            keys = rows.count[a:z] * b - rows.has_last[a:z].long() * (rows.nbk * b - m)
            total += int((nrows * keys).sum())
            continue
        diag = rows.has_diag[a:z].long()
        before = (rows.count_le[a:z] - diag) * b * nrows  # blocks < qb: all b keys
        t0, t1 = lo - qb * b + 1, hi - qb * b + 1  # the diagonal block: qp - qb b + 1 keys each
        total += int(torch.where(qb >= 0, before + diag * (t0 + t1) * nrows // 2, 0).sum())
    return total
