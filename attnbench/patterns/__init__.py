"""Patterns: WHAT a local or sparse variant attends to, one family per file, no kernels.

Every pattern is a mask function with its parameters (``base.Pattern``); the generic kernels
(@dense, @flex, @sdpa_mask) and the hand-written @blocked engines are paired with them in
``attnbench.variants``. Positions: query i sits at key position i + M - N (bottom-right); a
query at a negative position (N > M) attends to what each pattern's docstring says — by
distance for the windows, the window and the global keys for Longformer and BigBird, the
presets' block formulas for block_sparse, nothing in a block of its own (block_local, an
explicit block layout). Causal masking then keeps keys j <= i + M - N only, so a causal query
at a negative position attends to nothing (a zero output row).

A new pattern is one small file here and one line below.
"""
from __future__ import annotations

from attnbench.patterns import base
from attnbench.patterns.base import Pattern
from attnbench.patterns.sparse import BIGBIRD, BLOCK_SPARSE, LONGFORMER
from attnbench.patterns.swin import SWIN
from attnbench.patterns.window import BLOCK_LOCAL, DILATED, SLIDING

PATTERNS: dict[str, Pattern] = {p.name: p for p in (
    SLIDING, DILATED, BLOCK_LOCAL,  # windows
    LONGFORMER, BIGBIRD, BLOCK_SPARSE,  # global tokens and block layouts
    SWIN,  # 2-D grid
)}


def add_pattern(p: Pattern) -> Pattern:
    """Make a pattern (a plugin's) known by name; a name that exists raises."""
    if p.name in PATTERNS and PATTERNS[p.name] is not p:
        raise ValueError(f"pattern {p.name!r} exists already")
    PATTERNS[p.name] = p
    return p


def get_pattern(name: str) -> Pattern:
    if name not in PATTERNS:
        raise KeyError(f"unknown pattern {name!r}; known: {', '.join(sorted(PATTERNS))}")
    return PATTERNS[name]


def _p(pattern: Pattern | str) -> Pattern:
    return pattern if isinstance(pattern, Pattern) else get_pattern(pattern)


# The functions of ``base`` taking a pattern or its name.
def dense_mask(pattern: Pattern | str, n: int, m: int, params: dict, **kw):
    return base.dense_mask(_p(pattern), n, m, params, **kw)


def count_pairs(pattern: Pattern | str, n: int, m: int, causal: bool, params: dict) -> int:
    return base.count_pairs(_p(pattern), n, m, causal, params)


def pattern_flops(pattern: Pattern | str, shape, params: dict) -> float:
    return base.pattern_flops(_p(pattern), shape, params)


def constraints(pattern: Pattern | str, shape, params: dict, **kw):
    return base.constraints(_p(pattern), shape, params, **kw)


__all__ = ["PATTERNS", "Pattern", "add_pattern", "constraints", "count_pairs", "dense_mask",
           "get_pattern", "pattern_flops"]
