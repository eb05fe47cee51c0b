"""How far a variant's attention is from exact softmax attention on the same q, k, v.

No public tool reports these for efficient attention; the definitions are ours. A_v is the
variant's attention (its implied attention when its kernel forms none), A_e exact softmax
(the variant's own target where it approximates another definition), both [B, H, N, M]. Per
head, each averaged over the batch and the rows named:

* ``error`` / ``rel_err``: ‖out − exact_out‖_F / ‖exact_out‖_F, the norms taken over the
  batch, the rows and the head dimension together (one ratio per head, not a mean of ratios).
* ``divergence`` / ``kl``: KL(A_v ‖ A_e) = Σ_j A_v,ij ln(A_v,ij / A_e,ij) in nats (0 ln 0 = 0),
  over the rows where the variant attends at least one key. This direction is finite: exact
  softmax is positive on every causal key, so wherever A_v > 0, A_e > 0 too (the other
  direction is infinite for every sparse pattern). Rows the variant leaves empty are excluded.
* ``divergence`` / ``tv``: total variation ½ Σ_j |A_v,ij − A_e,ij| (0 identical, 1 disjoint),
  over the rows where either attends a key (an empty variant row counts as 0.5..1 here).
* ``coverage`` / ``coverage``: Σ_{j in support_i} A_e,ij over the rows where exact attends a
  key: the share of exact attention's mass that the keys a sparse variant may attend (its
  pattern, bucket-mates) hold. A variant that restricts no key beyond causality (full attention,
  Performer, linear attention: ``support`` None) attends every allowed key and keeps 1.
"""
from __future__ import annotations

import torch

from attnbench.stats.base import Result, Sample, statistic
from attnbench.stats.reduce import row_mean


@statistic("error", needs=("output",), compares=True,
           doc="relative Frobenius error of the output against exact softmax's, per head")
def error(s: Sample) -> Result:
    diff = torch.linalg.vector_norm(s.out - s.exact_out, dim=(0, 2, 3))  # [H]
    return Result(values={"rel_err": diff / torch.linalg.vector_norm(s.exact_out, dim=(0, 2, 3))})


@statistic("divergence", needs=("weights", "exact"), compares=True,
           doc="KL(variant || exact) and total variation per row, against exact softmax")
def divergence(s: Sample) -> Result:
    v, e = s.attn.weights, s.exact.weights  # [B, H, N, M] each
    kl = (torch.special.xlogy(v, v) - torch.special.xlogy(v, e)).sum(dim=-1).clamp_min(0.0)  # [B, H, N]; ≥ 0 (rounding)
    tv = 0.5 * (v - e).abs().sum(dim=-1)  # [B, H, N]
    v_rows, e_rows = v.sum(dim=-1) > 0, e.sum(dim=-1) > 0  # [B, H, N] each
    return Result(values={"kl": row_mean(kl, v_rows), "tv": row_mean(tv, v_rows | e_rows)})


@statistic("coverage", needs=("exact",), compares=True,
           doc="share of exact softmax's mass on the keys the variant may attend")
def coverage(s: Sample) -> Result:
    e = s.exact.weights  # [B, H, N, M]
    keys = s.attn.support if s.attn.support is not None else s.attn.allowed  # bool, broadcastable
    kept = torch.where(keys, e, torch.zeros_like(e)).sum(dim=-1)  # [B, H, N]
    return Result(values={"coverage": row_mean(kept, e.sum(dim=-1) > 0)})
