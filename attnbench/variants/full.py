"""Full softmax attention, materialized: ``full@naive`` is the reference itself.

Time O(N M D); memory O(N M) for the score matrix, which is what every efficient kernel is
meant to avoid. It is the only built-in kernel that returns attention weights.
"""
from __future__ import annotations

from attnbench import reference
from attnbench.costs import materialized_bytes
from attnbench.registry import AttnOutput, register


@register(
    "full@naive",
    family="dense",
    exact=True,
    time="O(n^2 d)",
    memory="O(n^2)",
    doc="materialized softmax(QK^T/sqrt(d))V; the dense reference, returns weights",
    returns_weights=True,
    memory_fn=materialized_bytes,
    paper="Vaswani et al. 2017, Attention Is All You Need",
)
def full_naive(q, k, v, *, causal=False, state=None, need_weights=False) -> AttnOutput:
    """q [B, H, N, D], k/v [B, Hkv, M, D] -> out [B, H, N, D] (+ weights [B, H, N, M])."""
    r = reference.attention(q, k, v, causal=causal)
    return AttnOutput(out=r.out, weights=r.weights if need_weights else None, lse=r.lse)
