"""Row entropy of attention (Clark et al. 2019; Zhai et al. 2023).

Our definitions, per head:

* ``entropy``: H_i = −Σ_j A_ij ln A_ij in nats (0 ln 0 = 0), averaged over the batch and over
  the rows that attend at least one key (a row with no key is left out, not counted as 0).
  Uniform attention over n keys gives ln n; BERT-base heads sit near 4.5 nats on 128 tokens.
* ``entropy_norm``: H_i / ln(n_i), n_i the keys row i may attend (``LayerAttention.allowed``:
  the causal prefix, the pattern's keys, the bucket-mates), averaged over rows with n_i ≥ 2
  that attend something: 1 is uniform over what the row may see, 0 is one key. Rows with a
  single allowed key (row 0 under causality) are left out: their entropy is 0 by force.
"""
from __future__ import annotations

from attnbench.stats.base import Result, Sample, statistic
from attnbench.stats.reduce import allowed_count, row_entropy, row_mean


@statistic("entropy", needs=("weights",),
           doc="row entropy in nats, and over ln(keys the row may attend)")
def entropy(s: Sample) -> Result:
    a = s.attn
    w = a.weights  # [B, H, N, M]
    h = row_entropy(w)  # [B, H, N]
    attends = w.sum(dim=-1) > 0  # [B, H, N]
    n = allowed_count(a.allowed, w.shape)  # [B, H, N]: keys each row may attend
    several = (n >= 2) & attends  # [B, H, N]
    norm = h / n.clamp(min=2).log()  # [B, H, N]; rows with n < 2 are masked out below
    return Result(values={"entropy": row_mean(h, attends), "entropy_norm": row_mean(norm, several)})
