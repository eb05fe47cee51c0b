"""Attention patterns, each defined once as a FlexAttention-style mask function.

A pattern is ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (True = query may attend to key),
written with elementwise tensor ops only, so the same function

* is evaluated densely (broadcast index tensors) for the ``@dense`` reference kernel and for
  the sampled-row check of every kernel of the pattern,
* becomes a FlexAttention ``BlockMask`` for the ``@flex`` kernel,
* is materialized as an SDPA boolean mask for ``@sdpa_mask``.

Hand-written ``@blocked`` kernels live in the family modules (``variants/window.py``, ...)
and are registered with ``reference=<pattern name>``: the suite checks them against this
definition. Index conventions: queries are bottom-right aligned with keys (query i sits at
key position i + M - N), as for causal masking everywhere in the suite.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from attnbench.registry import Shape

MaskMod = Callable[..., torch.Tensor]
ScoreMod = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Pattern:
    """One sparsity pattern.

    make_mask(n, m, params, device) -> mask_mod(b, h, q_idx, kv_idx). It may capture small
    tensors (BigBird's random blocks, Longformer's global flags) built for this (n, m).
    make_bias(n, m, heads, params, device, dtype) -> (score_mod, dense_bias_fn) or None:
    a score modification (Swin's relative-position bias) and the same thing as a function of
    (rows [R], keys [M]) returning [H, R, M] for the dense reference.
    """

    name: str
    family: str
    make_mask: Callable[[int, int, dict, Any], MaskMod]
    defaults: dict[str, Any] = field(default_factory=dict)
    doc: str = ""
    paper: str = ""
    causal: bool = True
    decode: bool = False  # one query against n cached keys is meaningful
    grid: bool = False  # tokens live on a 2-D grid (Swin)
    make_bias: Callable[..., Any] | None = None


PATTERNS: dict[str, Pattern] = {}


def add_pattern(p: Pattern) -> Pattern:
    PATTERNS[p.name] = p
    return p


def get_pattern(name: str) -> Pattern:
    import attnbench.variants  # noqa: F401 - patterns register with their family modules

    if name not in PATTERNS:
        raise KeyError(f"unknown pattern {name!r}; known: {', '.join(sorted(PATTERNS))}")
    return PATTERNS[name]


def _freeze(params: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))


def dense_mask(pattern: Pattern, n: int, m: int, params: dict, *, causal: bool = False,
               rows: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Bool [N, M] (or [len(rows), M]): the pattern's mask, with bottom-right causal if asked."""
    mask_mod = pattern.make_mask(n, m, params, device)
    q = (torch.arange(n, device=device) if rows is None else rows.to(device))[:, None]
    kv = torch.arange(m, device=device)[None, :]
    zero = torch.zeros((), dtype=torch.long, device=device)
    allowed = mask_mod(zero, zero, q, kv).expand(q.shape[0], m)
    if causal:
        allowed = allowed & (kv <= q + (m - n))
    return allowed


@functools.lru_cache(maxsize=256)
def _pair_count(name: str, n: int, m: int, causal: bool, frozen: tuple) -> int:
    p = get_pattern(name)
    params = dict(frozen)
    total, chunk = 0, max(1, (1 << 24) // max(m, 1))
    for s in range(0, n, chunk):  # chunks of rows: O(n m) bools, never all at once
        rows = torch.arange(s, min(n, s + chunk))
        total += int(dense_mask(p, n, m, params, causal=causal, rows=rows).sum())
    return total


def attended_pairs(name: str, shape: Shape, params: dict) -> int:
    """(query, key) pairs the pattern allows, per batch and head (for the FLOPs it means)."""
    return _pair_count(name, shape.seq_len, shape.kv_len, shape.causal, _freeze(params))


def pattern_flops(name: str, shape: Shape, params: dict) -> float:
    """Forward FLOPs of the pattern's useful work: 4 D per allowed pair per head."""
    return 4.0 * shape.batch * shape.heads * shape.head_dim * attended_pairs(name, shape, params)


def reference_constraints(reference: str, shape: Shape, params: dict, rows: torch.Tensor | None = None,
                          device=None, dtype=torch.float64):
    """(mask, bias, causal) to pass to ``reference.attention`` for a spec's reference.

    ``full``: no mask, causal by flag. A pattern: its dense mask (causal folded in) and, for
    Swin, the relative-position bias, both restricted to ``rows`` when given.
    """
    n, m = shape.seq_len, shape.kv_len
    if reference == "full":
        if rows is None:
            return None, None, shape.causal
        from attnbench.reference import causal_mask

        return (causal_mask(n, m, device, rows) if shape.causal else None), None, False
    p = get_pattern(reference)
    mask = dense_mask(p, n, m, params, causal=shape.causal, rows=rows, device=device)
    bias = None
    if p.make_bias is not None:
        _, dense_bias = p.make_bias(n, m, shape.heads, params, device, dtype)
        r = torch.arange(n, device=device) if rows is None else rows.to(device)
        bias = dense_bias(r, torch.arange(m, device=device))  # [H, R, M]
    return mask, bias, False


def spec_reference_out(spec, shape: Shape, q, k, v, params: dict, rows: torch.Tensor | None = None) -> torch.Tensor:
    """What ``spec``'s kernels must output for q, k, v (computed at their dtype and device):
    the variant's own dense definition (``reference_fn``: FAVOR+, LSH, XL) or softmax attention
    under its reference's mask and bias. ``params``: the spec's defaults with the case's
    overrides. Query ``rows`` only when given: [B, H, R, D]; else [B, H, N, D], differentiable.
    """
    from attnbench import reference

    if spec.reference_fn is not None:
        return spec.reference_fn(q, k, v, causal=shape.causal, rows=rows, **params)
    mask, bias, causal = reference_constraints(spec.reference, shape, params, rows=rows, device=q.device)
    qr = q if rows is None else q[:, :, rows]
    bias = None if bias is None else bias.to(q.dtype)
    return reference.attention(qr, k, v, causal=causal, mask=mask, bias=bias).out


def grid_for(n: int, params: dict) -> tuple[int, int]:
    """Swin's (H, W) grid: ``params['grid']`` or the most nearly square factorization of n."""
    g = params.get("grid")
    if g:
        h, w = int(g[0]), int(g[1])
        if h * w != n:
            raise ValueError(f"grid {h}x{w} has {h * w} tokens, the sequence has {n}")
        return h, w
    h = int(math.isqrt(n))
    while n % h:
        h -= 1
    return h, n // h
