"""The sizes of a block-sparse plan without building it, for the cost model in the parent.

:func:`plan_sizes` follows :func:`.build.build_plan` phase by phase, but on the query blocks'
counts alone (how many key blocks each reads, the first and the last): O(n / b) time and memory,
no [nbq, nbk] layout, no [nbq, b] index tensor, no per-token work. Band runs and chunk pieces
are found with tensor ops; gather chunks are packed per distinct block count; dense rows are
walked as runs of rows that share a key range (:mod:`.dense_sizes`). The result equals
``build_plan(...).sizes()`` (tests/test_planning.py checks it over shapes, patterns and knobs).

What the dense chunks' key ranges are trimmed to (``build_plan`` evaluates ``mask_fn`` there)
comes from the block counts when the layout is exact at block level, else from ``key_range``.
"""
from __future__ import annotations

import torch

from attnbench.engines.blocksparse import tuning  # the engine's tuning constants, read at call time
from attnbench.engines.blocksparse.dense_sizes import KeyRange, dense_sizes
from attnbench.engines.blocksparse.layout import Blocks, Split, block_extents, extra_positions, split_counts
from attnbench.engines.blocksparse.plan import PlanSizes


def plan_sizes(n: int, m: int, block: int, counts, first, last, *, causal: bool = False, extra_keys=None,
               heavy_rows=None, key_range: KeyRange | None = None, score_bytes: int | None = None,
               dense: str = "auto", band: bool = True) -> PlanSizes:
    """``build_plan(n, m, block, layout, ...).sizes()`` from the layout's per-query-block
    ``counts``, ``first`` and ``last`` key blocks [nbq] (causal applied: blocks <= the query
    block; first and last 0 where a row is empty). ``key_range=None``: the layout is exact at
    block level (``block_exact``) and there are no extra keys. Else ``key_range(p0, p1)`` is
    (lowest, one past the highest) key that non-heavy queries at positions p0..p1 of one query
    block may attend (causal applied); heavy rows attend every key (causal: up to themselves)."""
    if key_range is None and extra_keys is not None and len(extra_positions(extra_keys, m)):
        raise ValueError("plan_sizes: extra keys need key_range (a layout exact at block level has none)")
    band_bytes = tuning.BAND_SCORE_BYTES if score_bytes is None else int(score_bytes)
    score_bytes = tuning.SCORE_BYTES if score_bytes is None else int(score_bytes)
    bl = block_extents(n, m, block, counts, first, last, causal, extra_keys, heavy_rows, dense == "all")
    nvalid = bl.qhi - bl.qlo + 1
    needed = nvalid > heavy_per_block(bl)  # a row that is not computed densely anyway
    split = split_counts(bl, bl.counts, bl.first, bl.last, bl.full_rows, needed, dense, band)
    band_chunks, in_band = band_sizes(bl, split, band_bytes)
    light = band_chunks + gather_sizes(bl, split.light & ~in_band, score_bytes)
    return PlanSizes.of(n, bl.E, light, dense_sizes(bl, split, key_range))


def heavy_per_block(bl: Blocks) -> torch.Tensor:
    """[nbq] heavy rows in each query block."""
    if bl.all_dense:
        return bl.qhi - bl.qlo + 1
    return torch.bincount((bl.heavy + bl.off) // bl.b - bl.blk[0], minlength=len(bl.blk))


def caps(bl: Blocks, counts: torch.Tensor, rows: int, budget: int) -> torch.Tensor:
    """:func:`.layout.chunk_cap` for every entry of ``counts``."""
    cols = torch.clamp(counts, min=1) * bl.b + bl.E
    return torch.clamp(budget // (rows * cols * 4), min=1, max=tuning.MAX_CHUNK_BLOCKS)


def band_sizes(bl: Blocks, split: Split, band_bytes: int) -> tuple[list, torch.Tensor]:
    """Band chunks, and the blocks in them (bool [nbq]): maximal runs (>= 2 blocks) of light
    contiguous blocks with the same count and shift, cut into pieces of the band budget's cap
    (``layout.band_runs``)."""
    lbc = split.light & split.contiguous
    link = lbc[:-1] & lbc[1:] & (bl.counts[:-1] == bl.counts[1:]) & (split.rel[:-1] == split.rel[1:])
    in_band = torch.zeros_like(lbc)
    in_band[:-1] |= link
    in_band[1:] |= link
    starts, lengths = true_runs(link)  # a run of k links is a band run of k + 1 blocks
    counts = bl.counts[starts]
    cap, cols = caps(bl, counts, bl.b, band_bytes), torch.clamp(counts, min=1) * bl.b + bl.E
    full, rest = (lengths + 1) // cap, (lengths + 1) % cap
    b = torch.full_like(cap, bl.b)
    chunks = ([(c, b_, L, True, k) for c, b_, L, k in zip(*(t.tolist() for t in (cap, b, cols, full)))]
              + [(c, b_, L, True, 1) for c, b_, L in zip(*(t[rest > 0].tolist() for t in (rest, b, cols)))])
    return chunks, in_band


def true_runs(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts, lengths) of the maximal runs of True in a 1-D bool tensor."""
    f = flags.to(torch.int8)
    d = torch.diff(f, prepend=f.new_zeros(1), append=f.new_zeros(1))
    starts, ends = (d == 1).nonzero().flatten(), (d == -1).nonzero().flatten()
    return starts, ends - starts


def gather_sizes(bl: Blocks, rest: torch.Tensor, score_bytes: int) -> list:
    """Gather chunks of the light blocks ``rest`` (bool [nbq]) not in a band: partial edge
    blocks alone, then the full blocks sorted by count and packed while the chunk's widest row
    allows (``layout.pack_gather``), one distinct count at a time."""
    edge = rest & ~bl.full_rows
    cols = torch.clamp(bl.counts, min=1) * bl.b + bl.E
    out = [(1, rb, L, False, 1) for rb, L in zip((bl.qhi - bl.qlo + 1)[edge].tolist(), cols[edge].tolist())]
    hist = torch.bincount(bl.counts[rest & bl.full_rows])  # [max count + 1]: blocks per count
    values = hist.nonzero().flatten()  # ascending
    mult = hist[values]
    open_rows, open_count = 0, 0
    for v, k, cap in zip(values.tolist(), mult.tolist(), caps(bl, values, bl.b, score_bytes).tolist()):
        if open_rows:  # the open chunk takes rows while its size stays within this count's cap
            t = min(k, max(0, cap - open_rows))
            open_rows, k = open_rows + t, k - t
            open_count = v if t else open_count
            if not k:
                continue
            out.append((open_rows, bl.b, max(open_count, 1) * bl.b + bl.E, False, 1))
        full, open_rows = divmod(k, cap)
        open_count = v
        out.append((cap, bl.b, max(v, 1) * bl.b + bl.E, False, full))
    if open_rows:
        out.append((open_rows, bl.b, max(open_count, 1) * bl.b + bl.E, False, 1))
    return out
