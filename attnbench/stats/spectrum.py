"""The singular-value spectrum of attention matrices (Linformer, Wang et al. 2020; effective
rank, Roy & Vetterli 2007).

Per batch item and head, σ = the singular values of A [N, M] (``torch.linalg.svdvals``, batched),
c_k = (σ_1 + … + σ_k) / Σσ their normalized cumulative sum. Our definitions, per head, each
averaged over the batch:

* ``effective_rank``: exp(−Σ p ln p) with p = σ / Σσ: uniform attention (rank 1) gives 1, the
  identity over n tokens gives n.
* ``rank_90``: the number of singular values at which c first reaches 0.9 (Linformer's figure:
  how many directions hold 90% of the spectrum); the identity over n gives ceil(0.9 n).
* ``cum_at_16``: c_k at k = SPECTRUM_K (or at min(N, M) when smaller).
* series ``cumulative`` [H, L]: c_1 … c_L, L = min(N, M, CURVE_LEN), batch mean.
"""
from __future__ import annotations

import torch

from attnbench.stats.base import Result, Sample, statistic
from attnbench.stats.reduce import first_reaching, row_entropy

SPECTRUM_K = 16  # a fixed small k: what a rank-16 approximation of A could keep
CURVE_LEN = 256  # enough of the curve to see it flatten, and a bounded row at any N
SHARE = 0.9


@statistic("spectrum", needs=("weights",),
           doc="singular values of A: effective rank, count holding 90%, cumulative curve")
def spectrum(s: Sample) -> Result:
    w = s.attn.weights  # [B, H, N, M]
    sigma = torch.linalg.svdvals(w)  # [B, H, K], K = min(N, M), descending
    total = sigma.sum(dim=-1, keepdim=True)  # [B, H, 1]
    p = sigma / total  # [B, H, K]
    cum = p.cumsum(dim=-1)  # [B, H, K]
    K = cum.shape[-1]
    L = min(K, CURVE_LEN)
    return Result(
        values={
            "effective_rank": row_entropy(p).exp().mean(dim=0),  # [H]
            "rank_90": first_reaching(cum, SHARE).mean(dim=0),  # [H]
            "cum_at_16": cum[..., min(SPECTRUM_K, K) - 1].mean(dim=0),  # [H]
        },
        series={"cumulative": cum[..., :L].mean(dim=0)},  # [H, L]
    )
