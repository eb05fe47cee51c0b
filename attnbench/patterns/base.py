"""What a pattern is: a FlexAttention-style mask function, its parameters, and what follows from
a mask alone (the dense mask, the number of attended pairs, the reference's constraints).

``make_mask(n, m, params, device) -> mask_mod(b, h, q_idx, kv_idx) -> bool`` (True = query may
attend to key), written with elementwise tensor ops only, so the same function is evaluated
densely (``@dense``, the sampled-row checks), becomes a FlexAttention ``BlockMask`` (``@flex``) and
a materialized SDPA mask (``@sdpa_mask``). Query i sits at key position qp = i + M - N
(bottom-right aligned); with N > M the first N - M queries sit at negative positions, and each
pattern's docstring says what such a query attends to.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from attnbench.case import Shape, freeze
from attnbench.case import attended_pairs
from attnbench.patterns.counts import one_thread
from attnbench.params import Param

MaskMod = Callable[..., torch.Tensor]


@dataclass(frozen=True, eq=False)  # hashed by identity (lru caches key on it)
class Pattern:
    """One sparsity pattern: the mask factory, its parameters, and small settings for checks.

    make_bias(n, m, heads, params, device, dtype) -> (score_mod, dense_bias) or None: a score
    modification (Swin's relative-position bias) and the same thing as a function of
    (rows [R], keys [M]) returning [H, R, M] for the dense reference.
    ``examples``: small parameter settings under which the pattern is far from full attention
    at the sizes ``check`` and the tests use (the defaults, windows of 256, cover every key there).
    """

    name: str
    family: str
    make_mask: Callable[[int, int, dict, Any], MaskMod]
    params: dict[str, Param] = field(default_factory=dict)
    doc: str = ""
    paper: str = ""
    causal: bool = True
    decode: bool = False  # one query against n cached keys is meaningful
    grid: bool = False  # tokens live on a 2-D grid (Swin): N == M always
    make_bias: Callable[..., Any] | None = None
    examples: tuple[dict, ...] = ()
    # shape_reasons(n, m, params) -> reasons the parameters cannot describe this shape (a Swin
    # grid that does not hold n tokens, a block layout of the wrong size); [] = fine.
    shape_reasons: Callable[[int, int, dict], list[str]] | None = None
    # pairs(n, m, causal, params) -> the allowed pairs per batch and head by formula (O(n / b) at
    # most), or None where it has none; without it count_pairs evaluates the mask (O(N M)).
    pairs: Callable[[int, int, bool, dict], int | None] | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}


def dense_mask(pattern: Pattern, n: int, m: int, params: dict, *, causal: bool = False,
               rows: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Bool [N, M] (or [len(rows), M]): the pattern's mask, with bottom-right causal if asked."""
    mask_mod = pattern.make_mask(n, m, params, device)
    q = (torch.arange(n, device=device) if rows is None else rows.to(device))[:, None]  # [R, 1]
    kv = torch.arange(m, device=device)[None, :]  # [1, M]
    zero = torch.zeros((), dtype=torch.long, device=device)
    allowed = mask_mod(zero, zero, q, kv).expand(q.shape[0], m)  # [R, M]
    if causal:
        allowed = allowed & (kv <= q + (m - n))
    return allowed


PAIR_CHUNK = 1 << 24  # mask elements evaluated at once when counting pairs
# Mask elements count_pairs evaluates for a pattern without a ``pairs`` formula (16384^2: 2 to 5 s
# on a 2-core CPU); beyond, it returns the dense count (N M, causal: the bottom-right triangle),
# an upper bound, rather than keep the parent busy for minutes.
PAIR_EVAL_LIMIT = 1 << 28


def count_pairs(pattern: Pattern, n: int, m: int, causal: bool, params: dict) -> int:
    """(query, key) pairs the pattern allows, per batch and head: the pattern's ``pairs`` formula;
    without one, the mask evaluated in chunks of rows (O(n m) time, O(PAIR_CHUNK) memory) up to
    PAIR_EVAL_LIMIT elements, and the dense count (an upper bound) beyond."""
    return _count_pairs(pattern, n, m, causal, freeze(params))


@functools.lru_cache(maxsize=256)
@one_thread()
def _count_pairs(pattern: Pattern, n: int, m: int, causal: bool, frozen: tuple) -> int:
    params = dict(frozen)
    if n <= 0 or m <= 0:
        return 0
    if pattern.pairs is not None:
        pairs = pattern.pairs(n, m, causal, params)
        if pairs is not None:
            return int(pairs)
    if n * m > PAIR_EVAL_LIMIT:
        return attended_pairs(n, m, causal)
    total, chunk = 0, max(1, PAIR_CHUNK // max(m, 1))
    for s in range(0, n, chunk):
        rows = torch.arange(s, min(n, s + chunk))
        total += int(dense_mask(pattern, n, m, params, causal=causal, rows=rows).sum())
    return total


def pattern_flops(pattern: Pattern, shape: Shape, params: dict) -> float:
    """Forward FLOPs of the pattern's useful work: 4 D per allowed pair per head."""
    pairs = count_pairs(pattern, shape.seq_len, shape.kv_len, shape.causal, params)
    return 4.0 * shape.batch * shape.heads * shape.head_dim * pairs


def constraints(pattern: Pattern, shape: Shape, params: dict, rows: torch.Tensor | None = None,
                device=None, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mask [R, M] with causal folded in, bias [H, R, M] or None) of the pattern for the
    query ``rows`` (all when None): what the dense reference applies."""
    n, m = shape.seq_len, shape.kv_len
    mask = dense_mask(pattern, n, m, params, causal=shape.causal, rows=rows, device=device)
    bias = None
    if pattern.make_bias is not None:
        _, dense_bias = pattern.make_bias(n, m, shape.heads, params, device, dtype)
        r = torch.arange(n, device=device) if rows is None else rows.to(device)
        bias = dense_bias(r, torch.arange(m, device=device))  # [H, R, M]
    return mask, bias
