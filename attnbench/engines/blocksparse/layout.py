"""Planning on query blocks: geometry, the dense / band / gather split, band runs, the packing
of gather chunks and the grouping of dense rows. Index arithmetic only: the chunks themselves
are made in :mod:`attnbench.engines.blocksparse.chunks`. :class:`Blocks` is the query blocks'
extent from their counts alone, what :mod:`.sizes` plans on (the same split, no layout)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnbench.engines.blocksparse import tuning  # the engine's tuning constants, read at call time


@dataclass(eq=False)
class Geometry:
    """The plan's sizes and every query block's extent (query blocks in key space)."""

    n: int
    m: int
    b: int  # block size
    off: int  # m - n: query i sits at key position i + off
    nbq: int
    nbk: int
    causal: bool
    lay: torch.Tensor  # bool [nbq, nbk]: the layout (causal applied)
    blk: torch.Tensor  # [nbq] key-space block number of each query block
    qlo: torch.Tensor  # [nbq] first valid query position of each block
    qhi: torch.Tensor  # [nbq] last valid query position
    counts: torch.Tensor  # [nbq] key blocks read
    first: torch.Tensor  # [nbq] first key block read (0 where none)
    last: torch.Tensor  # [nbq] last key block read (0 where none)
    full_rows: torch.Tensor  # bool [nbq]: all b rows are queries
    qpos: torch.Tensor  # [nbq, b] query positions
    qidx: torch.Tensor  # [nbq, b] query indices (valid where ``valid``)
    valid: torch.Tensor  # bool [nbq, b]: qpos in [off, m)
    extras: torch.Tensor  # [E] extra key positions
    E: int
    heavy: torch.Tensor  # bool [n]: heavy (dense) query rows


@dataclass(eq=False)
class Split:
    """How each query block is computed."""

    dense: torch.Tensor  # bool [nbq]: as dense rows against its key range [kstart, kend)
    light: torch.Tensor  # bool [nbq]: in a light (band or gather) chunk
    contiguous: torch.Tensor  # bool [nbq]: reads one run of key blocks (band candidate)
    rel: torch.Tensor  # [nbq] first key block - query block (equal along a band run)
    kstart: torch.Tensor  # [nbq] key range of the block as dense rows
    kend: torch.Tensor  # [nbq]


@dataclass(eq=False)
class Blocks:
    """The query blocks (key space) as :class:`Geometry` has them, without per-token
    tensors: sizes, counts and extents [nbq], the extra keys and the heavy rows."""

    n: int
    m: int
    b: int  # block size
    off: int  # m - n: query i sits at key position i + off
    causal: bool
    counts: torch.Tensor  # [nbq] key blocks read (causal applied)
    first: torch.Tensor  # [nbq] first key block read (0 where none)
    last: torch.Tensor  # [nbq] last key block read (0 where none)
    blk: torch.Tensor  # [nbq] key-space block number of each query block
    qlo: torch.Tensor  # [nbq] first valid query position of each block
    qhi: torch.Tensor  # [nbq] last valid query position
    full_rows: torch.Tensor  # bool [nbq]: all b rows are queries
    extras: torch.Tensor  # [E] extra key positions
    E: int
    heavy: torch.Tensor  # [H] sorted heavy query rows (the caller's)
    all_dense: bool  # dense='all': every row is computed as a dense row


def geometry(n: int, m: int, block: int, layout, *, causal: bool, extra_keys, heavy_rows,
             all_dense: bool) -> Geometry:
    """Check the inputs and describe every query block (see ``build_plan``)."""
    if n > m:
        raise ValueError(f"block-sparse plan needs N <= M (queries bottom-right aligned), got {n} > {m}")
    b = int(block)
    if b < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    off = m - n
    nbk = -(-m // b)
    q0 = off // b
    nbq = nbk - q0
    layout = torch.as_tensor(layout, dtype=torch.bool).cpu()
    if tuple(layout.shape) != (nbq, nbk):
        raise ValueError(f"layout has shape {tuple(layout.shape)}, expected {(nbq, nbk)}")
    lay = layout.clone()
    blk = torch.arange(q0, nbk)
    qlo = torch.clamp(blk * b, min=off)  # first / last valid query position of each block
    qhi = torch.clamp((blk + 1) * b, max=m) - 1
    if causal:
        lay &= (torch.arange(nbk) * b)[None, :] <= qhi[:, None]
    extras = extra_positions(extra_keys, m)
    heavy = heavy_flags(heavy_rows, n, all_dense)
    counts = lay.sum(1)
    has = counts > 0
    first = torch.where(has, lay.to(torch.int8).argmax(1), torch.zeros_like(counts))
    last = torch.where(has, nbk - 1 - lay.flip(1).to(torch.int8).argmax(1), torch.zeros_like(counts))
    qpos = blk[:, None] * b + torch.arange(b)[None, :]  # [nbq, b]
    return Geometry(
        n=n, m=m, b=b, off=off, nbq=nbq, nbk=nbk, causal=causal, lay=lay, blk=blk, qlo=qlo, qhi=qhi,
        counts=counts, first=first, last=last,
        full_rows=(qlo == blk * b) & (qhi == (blk + 1) * b - 1),  # all b rows are queries
        qpos=qpos, qidx=qpos - off, valid=(qpos >= off) & (qpos < m),
        extras=extras, E=int(extras.numel()), heavy=heavy)


def extra_positions(extra_keys, m: int) -> torch.Tensor:
    """[E] sorted distinct extra key positions inside [0, m)."""
    if extra_keys is None:
        return torch.zeros(0, dtype=torch.long)
    extras = torch.as_tensor(extra_keys, dtype=torch.long).flatten()  # [E given]
    return torch.unique(extras[(extras >= 0) & (extras < m)])


def block_extents(n: int, m: int, block: int, counts, first, last, causal: bool, extra_keys, heavy_rows,
                  all_dense: bool) -> Blocks:
    """:class:`Blocks` from the query blocks' counts, first and last key blocks [nbq]."""
    if n > m:
        raise ValueError(f"block-sparse plan needs N <= M (queries bottom-right aligned), got {n} > {m}")
    b = int(block)
    off, nbk = m - n, -(-m // b)
    blk = torch.arange(off // b, nbk)
    counts, first, last = (torch.as_tensor(t, dtype=torch.long) for t in (counts, first, last))
    if counts.shape != blk.shape:
        raise ValueError(f"block counts have shape {tuple(counts.shape)}, expected {tuple(blk.shape)}")
    qlo, qhi = torch.clamp(blk * b, min=off), torch.clamp((blk + 1) * b, max=m) - 1
    extras = extra_positions(extra_keys, m)
    hr = torch.as_tensor([] if heavy_rows is None else heavy_rows, dtype=torch.long).flatten()
    return Blocks(n=n, m=m, b=b, off=off, causal=causal, counts=counts, first=first, last=last, blk=blk,
                  qlo=qlo, qhi=qhi, full_rows=(qlo == blk * b) & (qhi == (blk + 1) * b - 1),
                  extras=extras, E=int(extras.numel()), heavy=torch.unique(hr[(hr >= 0) & (hr < n)]),
                  all_dense=all_dense)


def heavy_flags(heavy_rows, n: int, all_rows: bool) -> torch.Tensor:
    """bool [n]: the heavy query rows (every row with ``all_rows``)."""
    heavy = torch.zeros(n, dtype=torch.bool)
    if heavy_rows is not None:
        hr = torch.as_tensor(heavy_rows, dtype=torch.long).flatten()  # [rows given]
        heavy[hr[(hr >= 0) & (hr < n)]] = True
    if all_rows:
        heavy[:] = True
    return heavy


def split_blocks(geo: Geometry, dense: str, band: bool) -> Split:
    """Dense blocks (key range barely larger than what they read anyway, ``dense='auto'``),
    band candidates (contiguous key blocks), and the blocks light chunks must compute."""
    rowheavy = torch.zeros(geo.nbq, geo.b, dtype=torch.bool)
    rowheavy[geo.valid] = geo.heavy[geo.qidx[geo.valid]]
    needed = (geo.valid & ~rowheavy).any(1)  # has a row that is not computed densely anyway
    return split_counts(geo, geo.counts, geo.first, geo.last, geo.full_rows, needed, dense, band)


def split_counts(geo, counts: torch.Tensor, first: torch.Tensor, last: torch.Tensor, full_rows: torch.Tensor,
                 needed: torch.Tensor, dense: str, band: bool) -> Split:
    """:func:`split_blocks` from the query blocks' counts, first and last key blocks [nbq]
    alone (``geo``: anything with ``b``, ``m``, ``E`` and ``extras``; the plan's sizes use it too)."""
    b, m, E = geo.b, geo.m, geo.E
    has = counts > 0
    # -- dense query blocks: their key range is barely larger than what they read anyway
    kstart = first * b
    kend = torch.clamp((last + 1) * b, max=m)
    if E:
        kstart = torch.minimum(kstart, geo.extras.min().expand_as(kstart))  # [nbq]
        kend = torch.maximum(kend, (geo.extras.max() + 1).expand_as(kend))  # [nbq]
    own = counts * b + E
    dense_blk = torch.zeros(counts.shape[0], dtype=torch.bool)
    if dense == "auto":
        dense_blk = has & (counts >= tuning.DENSE_MIN_BLOCKS) & ((kend - kstart) <= tuning.DENSE_RATIO * own)
    # -- band blocks: contiguous key blocks, the same run shifted by one block per query block
    contiguous = has & (last - first + 1 == counts) & full_rows & ((last + 1) * b <= m)
    if not band:
        contiguous[:] = False
    rel = first - torch.arange(counts.shape[0])
    dense_blk &= ~in_band_run(contiguous, needed, counts, rel)  # band runs beat dense rows
    return Split(dense=dense_blk, light=~dense_blk & needed, contiguous=contiguous, rel=rel,
                 kstart=kstart, kend=kend)


def in_band_run(contiguous: torch.Tensor, needed: torch.Tensor, counts: torch.Tensor,
                rel: torch.Tensor) -> torch.Tensor:
    """bool [nbq]: the block has a neighbour with the same shifted run of key blocks."""
    same_next = torch.zeros(contiguous.shape[0], dtype=torch.bool)
    if contiguous.shape[0] > 1:
        same_next[:-1] = (contiguous[:-1] & contiguous[1:] & needed[:-1] & needed[1:]
                          & (counts[:-1] == counts[1:]) & (rel[:-1] == rel[1:]))
    in_run = same_next.clone()
    in_run[1:] |= same_next[:-1]
    return in_run


def chunk_cap(geo: Geometry, cnt: int, rows: int, budget: int) -> int:
    """Query blocks per light chunk of ``cnt`` key blocks whose score tile fits ``budget`` bytes."""
    cols = max(cnt, 1) * geo.b + geo.E
    return int(max(1, min(tuning.MAX_CHUNK_BLOCKS, budget // (rows * cols * 4))))


def light_groups(geo: Geometry, split: Split, score_bytes: int, band_bytes: int) -> list[tuple[list[int], bool]]:
    """(query blocks, is band) of every light chunk, in plan order: band runs, cut to the band
    budget; then partial edge blocks alone; then the rest packed by block count."""
    lb = split.light.tolist()
    cnt_l = geo.counts.tolist()
    groups: list[tuple[list[int], bool]] = []
    in_band = [False] * geo.nbq
    for run in band_runs(lb, split.contiguous.tolist(), cnt_l, split.rel.tolist()):
        cap = chunk_cap(geo, cnt_l[run[0]], geo.b, band_bytes)
        groups += [(run[i:i + cap], True) for i in range(0, len(run), cap)]
        for r in run:
            in_band[r] = True
    # gather chunks: the rest, partial edge blocks alone, the others sorted by block count
    full_l = geo.full_rows.tolist()
    rest = [i for i in range(geo.nbq) if lb[i] and not in_band[i]]
    groups += [([i], False) for i in rest if not full_l[i]]
    fullr = [i for i in rest if full_l[i]]
    fullr.sort(key=lambda i: cnt_l[i])  # stable: equal counts keep their order
    groups += [(g, False) for g in pack_gather(geo, fullr, cnt_l, score_bytes)]
    return groups


def band_runs(lb: list[bool], cont: list[bool], cnt_l: list[int], rel_l: list[int]) -> list[list[int]]:
    """Maximal runs (>= 2 blocks) of light contiguous blocks with the same count and shift."""
    runs = []
    r = 0
    nbq = len(lb)
    while r < nbq:
        if not (lb[r] and cont[r]):
            r += 1
            continue
        s = r
        while r + 1 < nbq and lb[r + 1] and cont[r + 1] and cnt_l[r + 1] == cnt_l[s] and rel_l[r + 1] == rel_l[s]:
            r += 1
        if r > s:
            runs.append(list(range(s, r + 1)))
        r += 1
    return runs


def pack_gather(geo: Geometry, fullr: list[int], cnt_l: list[int], score_bytes: int) -> list[list[int]]:
    """Consecutive blocks of ``fullr`` (sorted by count) per chunk, as many as the score tile
    of the chunk's widest row allows."""
    groups = []
    i = 0
    while i < len(fullr):
        j = i
        S = max(cnt_l[fullr[i]], 1)
        while j + 1 < len(fullr) and (j + 2 - i) <= chunk_cap(geo, max(cnt_l[fullr[j + 1]], S), geo.b, score_bytes):
            j += 1
            S = max(S, cnt_l[fullr[j]], 1)
        groups.append(fullr[i:j + 1])
        i = j + 1
    return groups


def dense_rows(geo: Geometry, split: Split) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Dense query rows and each one's key range [ks, ke): heavy token rows (all keys, causal:
    up to the query) and the rows of dense blocks (their block's range)."""
    n = geo.n
    row_ks = torch.zeros(n, dtype=torch.long)
    row_ke = torch.zeros(n, dtype=torch.long)
    is_dense = torch.zeros(n, dtype=torch.bool)
    for rr in split.dense.nonzero().flatten().tolist():  # [dense blocks]
        rows = geo.qidx[rr][geo.valid[rr]]
        is_dense[rows] = True
        row_ks[rows] = int(split.kstart[rr])
        row_ke[rows] = int(split.kend[rr])
    # heavy rows attend (almost) everywhere: their range is all keys (causal: up to the query)
    heavy = geo.heavy
    row_ks[heavy] = 0
    row_ke[heavy] = geo.m
    if geo.causal:
        row_ke[heavy] = torch.clamp(torch.arange(n)[heavy] + geo.off + 1, max=geo.m)
    is_dense |= heavy
    return is_dense.nonzero().flatten().tolist(), row_ks, row_ke  # [dense rows]


def group_dense_rows(drows: list[int], row_ks: torch.Tensor, row_ke: torch.Tensor, b: int) -> list[list[int]]:
    """Consecutive dense rows per chunk while the chunk's joint key range stays within
    DENSE_RATIO of the rows' own ranges (and the row and mask limits)."""
    max_rows, max_elems, ratio = tuning.DENSE_MAX_ROWS, tuning.DENSE_MASK_ELEMS, tuning.DENSE_RATIO
    groups: list[list[int]] = []
    cur: list[int] = []
    cks = cke = 0
    own_sum = 0
    for q in drows:
        ks, ke = int(row_ks[q]), int(row_ke[q])
        if cur:
            nks, nke = min(cks, ks), max(cke, ke)
            span = max(nke - nks, 1)
            if (len(cur) + 1 <= max_rows and (len(cur) + 1) * span <= max_elems
                    and (len(cur) + 1) * span <= ratio * (own_sum + ke - ks) + b * b):
                cur.append(q)
                cks, cke, own_sum = nks, nke, own_sum + ke - ks
                continue
            groups.append(cur)
        cur, cks, cke, own_sum = [q], ks, ke, ke - ks
    if cur:
        groups.append(cur)
    return groups
