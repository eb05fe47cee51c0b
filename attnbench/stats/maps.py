"""Attention maps for figures: the whole matrix pooled to a heatmap, and the CLS query's
attention laid out on the image's patch grid.

Our definitions, per head:

* ``map`` series ``map`` [H, S, T]: the batch-mean attention, block-averaged
  (``adaptive_avg_pool2d``) to S = min(N, 32) by T = min(M, 32) cells.
* ``cls_map`` series ``cls``: query 0's (the CLS token's) attention over the non-prefix keys,
  batch mean, not renormalized (the mass on prefix keys is left out), shaped [H, gh, gw] when
  the layer has a patch ``grid`` that the non-prefix keys fill, else [H, M − key_prefix];
  series ``cls_first``: the same for batch item 0 alone, to overlay on that image.
"""
from __future__ import annotations

from attnbench.stats.base import Result, Sample, statistic
from attnbench.stats.reduce import block_map, on_grid


@statistic("map", needs=("weights",), doc="batch-mean attention pooled to at most 32 x 32")
def attention_map(s: Sample) -> Result:
    mean = s.attn.weights.mean(dim=0)  # [H, N, M]
    return Result(series={"map": block_map(mean)})  # [H, S, T]


@statistic("cls_map", needs=("weights", "prefix"),
           doc="the CLS query's attention over the patches, on the patch grid")
def cls_map(s: Sample) -> Result:
    a = s.attn
    cls = a.weights[:, :, 0, a.key_prefix:]  # [B, H, M']
    return Result(series={
        "cls": on_grid(cls.mean(dim=0), a.grid),  # [H, gh, gw] or [H, M']
        "cls_first": on_grid(cls[0], a.grid),  # [H, gh, gw] or [H, M']
    })
