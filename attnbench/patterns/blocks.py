"""Block layouts of BigBird and the block-sparse presets, as bool rows (what the masks and the
@blocked kernels read) and as per-row statistics by formula (:class:`~attnbench.patterns.counts.BlockRows`,
what the cost model reads: O(n / b), never the [n / b, n / b] layout).

Query blocks are in key space (qb = floor(qp / b), from floor((M - N) / b), negative when N > M
by a block or more); see ``attnbench.patterns.sparse`` for the definitions.
"""
from __future__ import annotations

import functools

import torch

from attnbench.cache import building
from attnbench.patterns.counts import BlockRows, pieces, rows_by_pieces, rows_from_layout

# BigBird's random blocks: up to this many key blocks they are the top ``random_blocks`` of one
# seeded uniform score matrix [nbk, nbk] (the original draw, O(nbk^2): 0.15 s at 2048 blocks on a
# 2-core CPU, 1 GB at 16384); beyond, each row draws its blocks by Floyd's sampling from a seeded
# stream, O(r) per row. Both give r distinct blocks uniformly among the row's free ones; the
# realization depends on (nbk, seed) either way.
BIGBIRD_MATRIX_BLOCKS = 2048


def first_query_block(n: int, m: int, block: int) -> int:
    """floor((M - N) / block): the block of query 0 (negative when N > M by a block or more)."""
    return (m - n) // block


def bigbird_global(nbk: int, global_blocks: int) -> torch.Tensor:
    """Bool [nbk]: the first ceil(g/2) and the last floor(g/2) blocks."""
    i = torch.arange(nbk)
    return (i < (global_blocks + 1) // 2) | (i >= nbk - global_blocks // 2)


def _window(qb: torch.Tensor, nbk: int, window_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The window of rows ``qb``: key blocks [a, z] (empty, a > z, for a row far before the keys)."""
    h = window_blocks // 2
    return torch.clamp(qb - h, min=0), torch.clamp(qb + h, max=nbk - 1)


def _free_pieces(qb: torch.Tensor, nbk: int, window_blocks: int, global_blocks: int):
    """The blocks rows ``qb`` do not attend yet, as two runs per row: (start1, len1, start2, len2)."""
    a, z = _window(qb, nbk, window_blocks)
    g0, e = (global_blocks + 1) // 2, nbk - global_blocks // 2  # the middle [g0, e) is not global
    len1 = torch.clamp(torch.clamp(a, max=e) - g0, min=0)
    start2 = torch.clamp(z + 1, min=g0)
    len2 = torch.clamp(e - start2, min=0)
    glob = (qb < g0) | (qb >= e)  # global rows attend everything
    return g0, torch.where(glob, 0, len1), start2, torch.where(glob, 0, len2)


def _floyd_rows(qb: torch.Tensor, u: torch.Tensor, nbk: int, window_blocks: int, global_blocks: int) -> torch.Tensor:
    """[rows, r] random blocks of rows ``qb`` from their uniforms ``u`` [rows, r] (Floyd), one
    column at a time (elementwise ops on [rows] only)."""
    g0, len1, start2, len2 = _free_pieces(qb, nbk, window_blocks, global_blocks)
    free = len1 + len2
    k = torch.clamp(free, max=u.shape[1])
    cols: list[torch.Tensor] = []
    for t in range(u.shape[1]):
        j = free - k + t
        x = (u[:, t] * (j + 1)).long()  # uniform in [0, j]
        taken = functools.reduce(torch.logical_or, [c == x for c in cols], torch.zeros_like(x, dtype=torch.bool))
        cols.append(torch.where(taken, j, x))
    out = [torch.where(t < k, c + torch.where(c < len1, g0, start2 - len1), -1)  # rank -> block; none past k
           for t, c in enumerate(cols)]
    return torch.stack(out, 1) if out else torch.zeros(len(qb), 0, dtype=torch.long)


def _floyd_random(nbk: int, window_blocks: int, global_blocks: int, r: int, seed: int) -> torch.Tensor:
    """[nbk, r] random blocks per row (-1: none), r distinct among the free blocks, by Floyd's
    sampling (for j = F - r .. F - 1: t uniform in [0, j], j if t is taken): O(nbk r)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(nbk, r, dtype=torch.long)
    for a, z in pieces(0, nbk):  # the uniforms of rows a..z-1, next in the seeded stream
        u = torch.rand(z - a, r, generator=gen, dtype=torch.float64)
        out[a:z] = _floyd_rows(torch.arange(a, z), u, nbk, window_blocks, global_blocks)
    return out


def _fixed_layout(nbk: int, window_blocks: int, global_blocks: int) -> torch.Tensor:
    i = torch.arange(nbk)
    glob = bigbird_global(nbk, global_blocks)
    return ((i[:, None] - i[None, :]).abs() <= window_blocks // 2) | glob[None, :] | glob[:, None]


@functools.lru_cache(maxsize=4)  # [nbk, r] int64: 37 MB at n = 10^8
def bigbird_random(nbk: int, window_blocks: int, global_blocks: int, random_blocks: int, seed: int) -> torch.Tensor:
    """[nbk, r] BigBird's random key blocks of query blocks 0..nbk-1 (-1: none; r =
    min(random_blocks, nbk)), never a window or global block of the row (BIGBIRD_MATRIX_BLOCKS)."""
    r = min(random_blocks, nbk)
    with building():  # cached: never an inference tensor (autograd may use it later)
        if nbk > BIGBIRD_MATRIX_BLOCKS:
            return _floyd_random(nbk, window_blocks, global_blocks, r, seed)
        gen = torch.Generator().manual_seed(seed)
        fixed = _fixed_layout(nbk, window_blocks, global_blocks)
        score = torch.rand(nbk, nbk, generator=gen).masked_fill(fixed, -1.0)
        if r == 0:
            return torch.zeros(nbk, 0, dtype=torch.long)
        top = score.topk(r, dim=1)
        return torch.where(top.values >= 0, top.indices, -1)  # only real candidates


@functools.lru_cache(maxsize=64)
def bigbird_layout(nbk: int, window_blocks: int, global_blocks: int, random_blocks: int, seed: int) -> torch.Tensor:
    """Bool [nbk, nbk] block layout of query blocks 0..nbk-1, cached per (nbk, params)."""
    with building():
        lay = _fixed_layout(nbk, window_blocks, global_blocks)
        rand = bigbird_random(nbk, window_blocks, global_blocks, random_blocks, seed)
        rows = torch.arange(nbk)[:, None].expand_as(rand)
        lay[rows[rand >= 0], rand[rand >= 0]] = True
        return lay


def _bigbird_args(params: dict) -> tuple[int, int, int, int]:
    return (int(params["window_blocks"]), int(params["global_blocks"]), int(params["random_blocks"]),
            int(params["seed"]))


def bigbird_rows(qb0: int, nbk: int, params: dict) -> torch.Tensor:
    """Bool [nbk - qb0, nbk]: the layout rows of query blocks qb0..nbk-1 (qb0 may be negative)."""
    w, g, r, seed = _bigbird_args(params)
    lay = bigbird_layout(nbk, w, g, r, seed)
    if qb0 >= 0:
        return lay[qb0:]
    qb = torch.arange(qb0, 0)[:, None]  # [-qb0, 1] negative query blocks
    kb = torch.arange(nbk)[None, :]
    before = ((kb - qb) <= w // 2) | bigbird_global(nbk, g)[None, :]
    return torch.cat([before, lay], 0)


def _bigbird_fixed_stats(qb: torch.Tensor, nbk: int, window_blocks: int, global_blocks: int) -> dict:
    """Count, first, last (and below the diagonal) of the window [a, z] of rows ``qb`` united with
    the global runs [0, h] and [t, nbk): all blocks but the middle (h, t) less the window."""
    a, z = _window(qb, nbk, window_blocks)
    h, t = min((global_blocks + 1) // 2, nbk) - 1, max(nbk - global_blocks // 2, 0)
    gap = max(0, t - h - 1)  # the middle, no global block
    gap_in_win = torch.clamp(torch.clamp(z, max=t - 1) - torch.clamp(a, min=h + 1) + 1, min=0)
    gap_le = torch.clamp(torch.clamp(qb, max=t - 1) - h, min=0)  # the middle up to qb
    gap_le_in_win = torch.clamp(torch.clamp(qb, max=t - 1) - torch.clamp(a, min=h + 1) + 1, min=0)
    live, win = qb >= 0, z >= a
    first = torch.where(win, a, t) if h < 0 else torch.zeros_like(qb)
    last = torch.where(win, torch.clamp(z, min=h), h) if t >= nbk else torch.full_like(qb, nbk - 1)
    return {"count": nbk - gap + gap_in_win, "first": first, "last": last,
            "count_le": torch.where(live, qb + 1 - gap_le + gap_le_in_win, 0),
            "last_le": torch.where(live, qb, -1)}


def _bigbird_random_rows(qb0: int, nbk: int, params: dict) -> torch.Tensor:
    """[nbk - qb0, r] the random blocks of query blocks qb0.. (-1: none; negative rows have none)."""
    w, g, r, seed = _bigbird_args(params)
    rand = bigbird_random(nbk, w, g, r, seed)  # [nbk, r]
    if qb0 >= 0:
        return rand[qb0:]
    return torch.cat([torch.full((-qb0, rand.shape[1]), -1, dtype=torch.long), rand])


def bigbird_row_stats(qb0: int, nbk: int, params: dict) -> BlockRows:
    """:class:`BlockRows` of :func:`bigbird_rows` by formula (window and global runs as
    intervals, the random blocks disjoint from them by construction) plus the random blocks'
    lists: O((nbk - qb0) r), no [nbk, nbk] step beyond BIGBIRD_MATRIX_BLOCKS."""
    rand = _bigbird_random_rows(qb0, nbk, params)  # [rows, r]
    return rows_by_pieces(qb0, nbk, lambda a, z: _bigbird_piece(a, z, nbk, rand[a - qb0:z - qb0], params))


def _bigbird_piece(a: int, z: int, nbk: int, rand: torch.Tensor, params: dict) -> BlockRows:
    g = int(params["global_blocks"])
    qb = torch.arange(a, z)
    st = _bigbird_fixed_stats(qb, nbk, int(params["window_blocks"]), g)
    count, first, last, count_le, last_le = st["count"], st["first"], st["last"], st["count_le"], st["last_le"]
    for col in rand.unbind(1):  # r columns: elementwise, no reduction over a short axis
        ok = col >= 0
        le = ok & (col <= qb)
        count, count_le = count + ok, count_le + le
        first = torch.minimum(first, torch.where(ok, col, nbk))
        last = torch.maximum(last, col)
        last_le = torch.maximum(last_le, torch.where(le, col, -1))
    glob = (qb >= 0) & ((qb < (g + 1) // 2) | (qb >= nbk - g // 2))  # global query blocks: every key block
    return BlockRows(
        qb0=a, nbk=nbk, count=torch.where(glob, nbk, count), first=torch.where(glob, 0, first),
        last=torch.where(glob, nbk - 1, last), count_le=torch.where(glob, qb + 1, count_le),
        last_le=torch.where(glob, qb, last_le), has_diag=qb >= 0, has_last=glob | (last == nbk - 1))


def block_stride(stride, nbk: int) -> int:
    """The preset's stride in blocks: an int >= 1, or 'auto' = round(sqrt(key blocks)), the
    Sparse Transformer's choice (stride ~ sqrt(n)) that makes the pattern O(n sqrt(n))."""
    if stride == "auto":
        return max(1, round(nbk ** 0.5))
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"block_sparse stride {stride!r}: allowed: an int >= 1 or 'auto' (sqrt of the key blocks)")
    return stride


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


def _summary_upto(x: torch.Tensor, s: int, c: int) -> torch.Tensor:
    """Blocks kb in [0, x] with kb % s >= s - c (the 'fixed' preset's summary blocks); x >= -1."""
    return (x + 1) // s * c + torch.clamp((x + 1) % s - (s - c), min=0)


def _strided_stats(qb: torch.Tensor, nbk: int, s: int) -> tuple:
    """|qb - kb| < s (the band W) or kb = qb mod s (the column P); they share qb alone."""
    wlo, whi = torch.clamp(qb - s + 1, min=0), torch.clamp(qb + s - 1, max=nbk - 1)
    nw = torch.clamp(whi - wlo + 1, min=0)
    rem = torch.remainder(qb, s)
    np_ = torch.where(rem <= nbk - 1, (nbk - 1 - rem) // s + 1, 0)
    plast = rem + (nbk - 1 - rem) // s * s
    live = qb >= 0
    count = nw + np_ - live.long()
    first = torch.minimum(torch.where(nw > 0, wlo, nbk), torch.where(np_ > 0, rem, nbk))
    last = torch.maximum(torch.where(nw > 0, whi, -1), torch.where(np_ > 0, plast, -1))
    count_le = torch.where(live, qb - wlo + 1 + qb // s, 0)
    has_last = ((nw > 0) & (whi == nbk - 1)) | ((np_ > 0) & (plast == nbk - 1))
    return count, first, last, count_le, has_last


def _fixed_stats(qb: torch.Tensor, nbk: int, s: int, c: int) -> tuple:
    """qb // s == kb // s (the segment) or kb % s >= s - c (summary blocks)."""
    c = min(c, s)
    live = qb >= 0
    slo = torch.div(qb, s, rounding_mode="floor") * s
    shi = torch.clamp(slo + s - 1, max=nbk - 1)
    nseg = torch.where(live, shi - slo + 1, 0)
    total = _summary_upto(torch.tensor(nbk - 1), s, c)
    both = torch.where(live, _summary_upto(shi, s, c) - _summary_upto(slo - 1, s, c), 0)
    top = nbk - 1 if (nbk - 1) % s >= s - c else (nbk - 1) // s * s - 1  # last summary block
    first = torch.where(live, slo, nbk).clamp(max=s - c if c and s - c <= nbk - 1 else nbk)
    last = torch.where(live, shi, -1).clamp(min=top if c else -1)
    count_le = torch.where(live, qb - slo + 1 + _summary_upto(slo - 1, s, c), 0)
    has_last = (live & (shi == nbk - 1)) | bool(c and top == nbk - 1)
    return nseg + total - both, first, last, count_le, has_last


def block_sparse_row_stats(qb0: int, nbk: int, params: dict) -> BlockRows:
    """:class:`BlockRows` of :func:`block_sparse_rows`: by formula for the presets, O(nbk - qb0);
    from the matrix for an explicit layout (its own size)."""
    if not isinstance(params["layout"], str):
        return rows_from_layout(block_sparse_rows(qb0, nbk, params), qb0)
    return rows_by_pieces(qb0, nbk, lambda a, z: _preset_piece(a, z, nbk, params))


def _preset_piece(a: int, z: int, nbk: int, params: dict) -> BlockRows:
    s = block_stride(params["stride"], nbk)
    qb = torch.arange(a, z)
    if params["layout"] == "strided":
        count, first, last, count_le, has_last = _strided_stats(qb, nbk, s)
    else:
        count, first, last, count_le, has_last = _fixed_stats(qb, nbk, s, int(params["summary"]))
    live = qb >= 0
    return BlockRows(qb0=a, nbk=nbk, count=count, first=first, last=last, count_le=count_le,
                     last_le=torch.where(live, qb, -1), has_diag=live, has_last=has_last)
