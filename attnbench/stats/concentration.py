"""How concentrated a row's attention is: on how few keys its mass sits.

Our definitions, per head (averaged over the batch and the rows that attend at least one key):

* ``top_k_mass``: the mass of the row's TOP_K largest weights (all of them when M < TOP_K):
  uniform attention over n ≥ TOP_K keys gives TOP_K / n, one key gives 1.
* ``keys_90``: the fewest keys holding at least 90% of the row's mass (uniform over n keys:
  ceil(0.9 n); one key: 1).
* ``keys_90_frac``: ``keys_90`` over the keys the row may attend (``LayerAttention.allowed``):
  0.9 for uniform attention, 1/n for one key of n.
"""
from __future__ import annotations

import torch

from attnbench.stats.base import Result, Sample, statistic
from attnbench.stats.reduce import allowed_count, first_reaching, row_mean

TOP_K = 8  # a handful of keys, fixed so lengths compare: uniform attention over n keys gives 8/n
SHARE = 0.9


@statistic("concentration", needs=("weights",),
           doc=f"mass of the top {TOP_K} keys; keys holding {SHARE:.0%} of a row's mass")
def concentration(s: Sample) -> Result:
    w = s.attn.weights  # [B, H, N, M]
    mass = w.sum(dim=-1)  # [B, H, N]
    attends = mass > 0  # [B, H, N]
    top = torch.topk(w, min(TOP_K, w.shape[-1]), dim=-1).values.sum(dim=-1)  # [B, H, N]
    ranked = torch.sort(w, dim=-1, descending=True).values  # [B, H, N, M]
    share = ranked.cumsum(dim=-1) / mass.clamp(min=1e-300).unsqueeze(-1)  # [B, H, N, M]
    keys = first_reaching(share, SHARE)  # [B, H, N]
    n = allowed_count(s.attn.allowed, w.shape).clamp(min=1)  # [B, H, N]
    return Result(values={
        "top_k_mass": row_mean(top, attends),
        "keys_90": row_mean(keys, attends),
        "keys_90_frac": row_mean(keys / n, attends),
    })
