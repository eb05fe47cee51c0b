"""``build_plan``: the planning phases in order (geometry, split, light chunks, dense chunks,
output order); see :mod:`.layout` and :mod:`.chunks`."""
from __future__ import annotations

import torch

from attnbench.cache import building

from attnbench.engines.blocksparse import tuning  # the engine's tuning constants, read at call time
from attnbench.engines.blocksparse.chunks import make_dense_chunk, make_light_chunk
from attnbench.engines.blocksparse.layout import (Geometry, Split, dense_rows, geometry, group_dense_rows,
                                                  light_groups, split_blocks)
from attnbench.engines.blocksparse.plan import BlockPlan, DenseChunk, LightChunk, MaskFn


def build_plan(n: int, m: int, block: int, layout: torch.Tensor, mask_fn: MaskFn, **kw) -> BlockPlan:
    """Chunks of query blocks for ``n`` queries (bottom-right aligned) against ``m`` keys.

    layout: bool [nbq, nbk] with nbk = ceil(m / block), nbq = nbk - (m - n) // block (query
    blocks in key space). Keywords: ``causal``, ``extra_keys``, ``heavy_rows`` (see the module
    docstring); ``dense``: 'auto' (heavy blocks by the cost rule), 'never' (only the given heavy
    rows) or 'all' (every row dense); ``band=False`` disables strided views; ``block_exact``:
    the pattern allows every key of a layout block (BigBird, block layouts), so ``mask_fn`` is
    not evaluated for light chunks (only causal and the sequence end mask); ``score_bytes``:
    the per-head score tile a light chunk is sized to (default: SCORE_BYTES for gather chunks,
    BAND_SCORE_BYTES for band chunks). Everything here runs once per shape;
    the result is small (index tensors and the masks of the partially allowed columns only).
    """
    with building():
        return _build_plan(n, m, block, layout, mask_fn, **kw)


def _build_plan(n: int, m: int, block: int, layout: torch.Tensor, mask_fn: MaskFn, *,
                causal: bool = False, extra_keys=None, heavy_rows=None,
                score_bytes: int | None = None, dense: str = "auto", band: bool = True,
                block_exact: bool = False) -> BlockPlan:
    band_bytes = tuning.BAND_SCORE_BYTES if score_bytes is None else int(score_bytes)
    score_bytes = tuning.SCORE_BYTES if score_bytes is None else int(score_bytes)
    geo = geometry(n, m, block, layout, causal=causal, extra_keys=extra_keys, heavy_rows=heavy_rows,
                   all_dense=dense == "all")
    split = split_blocks(geo, dense, band)
    light = [make_light_chunk(geo, blocks, is_band, mask_fn, block_exact)
             for blocks, is_band in light_groups(geo, split, score_bytes, band_bytes)]
    dense_chunks = make_dense_chunks(geo, split, light, mask_fn)
    pairs = sum(c.blocks * c.rows * c.cols for c in light)
    pairs += sum(len(c.qrows) * (c.kend - c.kstart) for c in dense_chunks)
    return BlockPlan(n=n, m=m, block=geo.b, causal=causal, light=light, dense=dense_chunks, extras=geo.extras,
                     order=output_order(n, light, dense_chunks), pairs=int(pairs))


def make_dense_chunks(geo: Geometry, split: Split, light: list[LightChunk], mask_fn: MaskFn) -> list[DenseChunk]:
    """Dense chunks of the heavy token rows and of the rows of dense blocks."""
    drows, row_ks, row_ke = dense_rows(geo, split)
    in_light = torch.zeros(geo.n, dtype=torch.bool)
    for c in light:
        in_light[c.qrows] = True
    return [make_dense_chunk(geo, g, row_ks, row_ke, in_light, mask_fn)
            for g in group_dense_rows(drows, row_ks, row_ke, geo.b)]


def output_order(n: int, light: list[LightChunk], dense: list[DenseChunk]) -> torch.Tensor:
    """[n]: where each query's output lives in cat(light rows, dense rows)."""
    order = torch.full((n,), -1, dtype=torch.long)
    pos = 0
    for c in [*light, *dense]:
        order[c.qrows] = torch.arange(pos, pos + c.qrows.numel())
        pos += c.qrows.numel()
    if n and bool((order < 0).any()):  # cannot happen: every row is light or dense
        raise AssertionError("block plan left query rows uncovered")
    return order
