"""Attention rollout (Abnar & Zuidema 2020): how much each input token flows into each token
after the whole stack of layers, residual connections counted.

Per layer, heads averaged and the residual added: Â = 0.5 · mean_h(A) + 0.5 · I, each ROW
renormalized to sum 1 (a row is where a query's mass goes; a popular implementation divides
along the wrong axis, which only shows where rows do not already sum to 1, e.g. a row with no
key). Rollout R = Â_L ⋯ Â_1 (later layers on the left), per batch item; its rows sum to 1.

Our figures (one model-scope "head" row, hence the leading 1):

* series ``rollout_map`` [1, S, S]: R's batch mean block-averaged to S = min(N, 32).
* With a prefix token in the last layer (CLS): series ``rollout_cls`` = R's row 0 over the
  non-prefix tokens, batch mean, not renormalized, shaped [1, gh, gw] on a patch grid the
  tokens fill, else [1, N − prefix]; ``rollout_cls_first`` the same for batch item 0; value
  ``rollout_cls_entropy`` = entropy in nats of that row renormalized to sum 1, batch mean.
"""
from __future__ import annotations

import torch

from attnbench.stats.base import Result, Sample, statistic
from attnbench.stats.reduce import block_map, on_grid, row_entropy


def rollout(layers: list[torch.Tensor]) -> torch.Tensor:
    """Rollout of self-attention layers, first layer first: [B, H, N, N] each -> R [B, N, N]."""
    R = None
    for A in layers:
        mixed = 0.5 * A.mean(dim=1) + 0.5 * torch.eye(A.shape[-1], dtype=A.dtype)  # [B, N, N]
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)  # rows sum to 1
        R = mixed if R is None else mixed @ R  # [B, N, N]: the later layer on the left
    return R


@statistic("rollout", needs=("weights", "layers", "self"), scope="model",
           doc="attention rollout through every layer (Abnar & Zuidema 2020), CLS row on the grid")
def rollout_stat(s: Sample) -> Result:
    R = rollout([layer.weights for layer in s.layers])  # [B, N, N]
    last = s.layers[-1]
    out = Result(series={"rollout_map": block_map(R.mean(dim=0, keepdim=True))})  # [1, S, S]
    p = last.query_prefix
    if p > 0:
        cls = R[:, 0, p:]  # [B, N']
        out.series["rollout_cls"] = on_grid(cls.mean(dim=0, keepdim=True), last.grid)  # [1, ...]
        out.series["rollout_cls_first"] = on_grid(cls[:1], last.grid)  # [1, gh, gw] or [1, N']
        spread = row_entropy(cls / cls.sum(dim=-1, keepdim=True))  # [B]
        out.values["rollout_cls_entropy"] = spread.mean().reshape(1)  # [1]
    return out
