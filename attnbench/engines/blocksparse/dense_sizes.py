"""The dense chunks of a block-sparse plan without building it (:func:`dense_sizes`, for
:func:`.sizes.plan_sizes`): the rows of dense query blocks and the heavy rows, as runs of rows
that share a key range, grouped as :func:`.layout.group_dense_rows` groups them row by row
(how many rows of a run join a chunk is solved at once, equal chunks are counted), each chunk's
range trimmed as :func:`.chunks.make_dense_chunk` trims it with the pattern's mask."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from attnbench.engines.blocksparse import tuning  # the engine's tuning constants, read at call time
from attnbench.engines.blocksparse.layout import Blocks, Split

# Runs of dense rows (rows sharing one key range) walked at most; beyond (dense='all' with causal
# at n > 2^17, or that many global tokens), plan_sizes raises: the exact count would need a
# per-row walk, and the parent turns the error into the case's row.
DENSE_SEGMENTS = 1 << 17

KeyRange = Callable[[int, int], tuple[int, int]]


class Run(NamedTuple):
    """Dense query rows [r0, r1) sharing the key range [ks, ke) (before trimming)."""

    r0: int
    r1: int
    ks: int
    ke: int
    heavy: bool  # the caller's heavy rows: they attend every key (causal: up to themselves)
    blk: int  # the query block of row r0 (an index into the plan's query blocks)


@dataclass
class Group:
    """The dense chunk being grown (``layout.group_dense_rows``): its rows, joint key range, own
    ranges' sum, and the keys its rows may attend (lo, hi), which the chunk is trimmed to."""

    rows: int = 0
    ks: int = 0
    ke: int = 0
    own: int = 0
    lo: int = 1 << 62
    hi: int = -1


def dense_sizes(bl: Blocks, split: Split, key_range: KeyRange | None) -> list:
    """Dense chunks: the rows of dense blocks and the heavy rows, grouped in order while the
    joint key range stays within the limits (``layout.group_dense_rows``), each chunk's range
    trimmed to the keys its rows attend (``chunks.make_dense_chunk``)."""
    runs = dense_runs(bl, split, key_range is None)
    if not runs:
        return []
    walk = Walk(bl, key_range)
    for run in runs:
        walk.add(run)
    return walk.finish()


def heavy_runs(bl: Blocks) -> list[tuple[int, int, bool]]:
    """The rows computed densely whatever their block, as runs (start, end, the caller's heavy
    rows): runs of consecutive heavy rows; with dense='all' every row, cut where that changes."""
    h = bl.heavy
    one = torch.ones(1, dtype=torch.bool)
    brk = torch.diff(h) != 1  # [H - 1]: a run of heavy rows ends between these two
    given = list(zip(h[torch.cat([one, brk])].tolist(), (h[torch.cat([brk, one])] + 1).tolist())) if h.numel() else []
    if not bl.all_dense:
        return [(s, e, True) for s, e in given]
    bounds = sorted({0, bl.n, *(x for run in given for x in run)})
    starts = {s for s, _ in given}
    return [(a, z, a in starts) for a, z in zip(bounds, bounds[1:]) if z > a]


def dense_runs(bl: Blocks, split: Split, block_exact: bool) -> list[Run]:
    """The dense rows as runs, in row order: dense blocks' rows (less their heavy rows) with the
    block's range; the other dense rows with all keys (causal: up to the row), one run per row
    when causal and per query block when the layout decides what they attend."""
    dense_blocks = split.dense.nonzero().flatten().tolist()  # [dense blocks]
    whole = heavy_runs(bl)
    spanned = sum((e - 1 + bl.off) // bl.b - (s + bl.off) // bl.b + 1 for s, e, _ in whole)
    walked = len(dense_blocks) + (sum(e - s for s, e, _ in whole) if bl.causal else
                                  spanned if block_exact else len(whole))
    if walked > DENSE_SEGMENTS:
        raise ValueError(f"block-sparse cost model: {walked} runs of dense rows (dense='all' with causal, or "
                         f"that many global rows) exceed DENSE_SEGMENTS = {DENSE_SEGMENTS}: no cheap exact count")
    q0 = int(bl.blk[0]) if len(bl.blk) else 0
    runs = []
    for i in dense_blocks:
        r0, r1 = int(bl.qlo[i]) - bl.off, int(bl.qhi[i]) - bl.off + 1
        ks, ke = int(split.kstart[i]), int(split.kend[i])
        h = bl.heavy
        cut = h[torch.searchsorted(h, r0):torch.searchsorted(h, r1)].tolist()  # heavy rows inside
        for a, z in zip([r0] + [x + 1 for x in cut], cut + [r1]):
            if z > a:
                runs.append(Run(a, z, ks, ke, False, i))
    for s, e, given in whole:
        for a, z in heavy_pieces(bl, s, e, block_exact):
            ke = a + bl.off + 1 if bl.causal else bl.m
            runs.append(Run(a, z, 0, ke, given, (a + bl.off) // bl.b - q0))
    return sorted(runs)


def heavy_pieces(bl: Blocks, s: int, e: int, block_exact: bool) -> list[tuple[int, int]]:
    """Heavy rows [s, e) as runs of one key range: each row alone when causal; cut at query
    block boundaries when the layout decides what they attend; else whole."""
    if bl.causal:
        bounds = list(range(s, e + 1))
    elif block_exact:
        inner = range((s + bl.off) // bl.b + 1, (e - 1 + bl.off) // bl.b + 1)  # blocks starting inside
        bounds = [s, *(k * bl.b - bl.off for k in inner), e]
    else:
        bounds = [s, e]
    return list(zip(bounds, bounds[1:]))


class Walk:
    """``layout.group_dense_rows`` over runs: a run's rows join the open chunk while the three
    limits hold (solved for how many at once), and a run that fills chunk after equal chunk
    counts them at once; closed chunks are trimmed as ``chunks.make_dense_chunk`` trims them."""

    def __init__(self, bl: Blocks, key_range: KeyRange | None):
        self.bl, self.key_range = bl, key_range
        self.group = Group()
        self.out: list = []
        self.steps = 0

    def add(self, run: Run) -> None:
        row, g = run.r0, self.group
        while row < run.r1:
            self.steps += 1
            if self.steps > 4 * DENSE_SEGMENTS:
                raise ValueError(f"block-sparse cost model: more than {4 * DENSE_SEGMENTS} dense chunks of "
                                 f"unequal key ranges (dense='all' at this size): no cheap exact count")
            if not g.rows:
                full, size = self.repeats(run, row)
                if full:
                    self.out.append((size, self.span(self.grown(Group(), run, row, row + size)), full))
                    row += full * size
                    continue
                g = self.group = self.grown(g, run, row, row + 1)
                row += 1
                continue
            t = self.fits(g, run, run.r1 - row)
            if t:
                self.grown(g, run, row, row + t)
                row += t
            if row < run.r1:
                self.close()
                g = self.group

    def finish(self) -> list:
        if self.group.rows:
            self.close()
        return self.out

    def close(self) -> None:
        self.out.append((self.group.rows, self.span(self.group), 1))
        self.group = Group()

    def span(self, g: Group) -> int:
        """The chunk's key range [ks, ke) trimmed to the keys its rows attend (1 if none)."""
        lo, hi = max(g.lo, g.ks), min(g.hi, max(g.ke, g.ks + 1))
        return hi - lo if hi > lo else 1

    def grown(self, g: Group, run: Run, a: int, z: int) -> Group:
        """``g`` with the rows [a, z) of ``run`` added."""
        lo, hi = self.attends(run, a, z)
        if g.rows:
            g.ks, g.ke = min(g.ks, run.ks), max(g.ke, run.ke)
        else:
            g.ks, g.ke = run.ks, run.ke
        g.rows += z - a
        g.own += (z - a) * (run.ke - run.ks)
        g.lo, g.hi = min(g.lo, lo), max(g.hi, hi)
        return g

    def attends(self, run: Run, a: int, z: int) -> tuple[int, int]:
        """(lowest, one past the highest) key the rows [a, z) of ``run`` may attend."""
        bl, last_pos = self.bl, z - 1 + self.bl.off
        if self.key_range is None:  # exact at block level: the row's blocks (causal: up to the row)
            counts, first, last = self.block(run.blk)
            if not counts:
                return Group.lo, -1
            kend = min((last + 1) * bl.b, bl.m)
            return first * bl.b, min(kend, last_pos + 1) if bl.causal else kend
        if run.heavy:
            return 0, last_pos + 1 if bl.causal else bl.m
        return self.key_range(a + bl.off, last_pos)

    def block(self, i: int) -> tuple[int, int, int]:
        """(count, first, last) of query block ``i``."""
        return int(self.bl.counts[i]), int(self.bl.first[i]), int(self.bl.last[i])

    def fits(self, g: Group, run: Run, limit: int) -> int:
        """How many of the next ``limit`` rows of ``run`` join ``g`` (each row's check in
        ``group_dense_rows``: rows, rows x joint range, and joint range vs own ranges)."""
        U = max(max(g.ke, run.ke) - min(g.ks, run.ks), 1)
        w = run.ke - run.ks
        t = min(limit, tuning.DENSE_MAX_ROWS - g.rows, tuning.DENSE_MASK_ELEMS // U - g.rows)
        ratio, slack = tuning.DENSE_RATIO, self.bl.b * self.bl.b

        def ok(k: int) -> bool:
            return (g.rows + k) * U <= ratio * (g.own + k * w) + slack

        if t <= 0 or not ok(1):
            return 0
        slope = U - ratio * w  # the third check fails from some k on only if it grows with k
        if slope > 0:
            k = max(1, int((ratio * g.own + slack - g.rows * U) // slope))
            while k > 1 and not ok(k):
                k -= 1
            while k < t and ok(k + 1):
                k += 1
            t = min(t, k)
        return t

    def repeats(self, run: Run, row: int) -> tuple[int, int]:
        """(how many, rows each) of the equal full chunks that the rows from ``row`` on make
        alone, when each attends the same keys; (0, 0) if none or unsure."""
        bl = self.bl
        if self.key_range is None:
            counts, _, last = self.block(run.blk)
            fixed = not bl.causal or not counts or min((last + 1) * bl.b, bl.m) <= row + bl.off + 1
        else:
            fixed = run.heavy and not bl.causal
        if not fixed or tuning.DENSE_RATIO < 1:
            return 0, 0
        size = 1 + self.fits(Group(rows=1, ks=run.ks, ke=run.ke, own=run.ke - run.ks), run, 1 << 62)
        return (run.r1 - row) // size, size
