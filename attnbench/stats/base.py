"""What a statistic sees and how one is declared: the home of attention statistics, shaped like
the variant registry (a name, what it needs, the reasons it cannot run, one file per family).

A statistic reads one layer's attention of one variant on one batch of inputs
(:class:`LayerAttention`: probabilities [B, H, N, M] over the keys plus where the queries and
keys sit), and, when it compares, the exact softmax attention on the same q, k, v
(:class:`Sample`). It returns, per head, scalars (``values``) and optional series (a spectrum, a
map), each a tensor whose first axis is the head: [H] or [H, L]. Statistics over a whole model
(attention rollout) declare ``scope="model"`` and read every layer of the sample.

Declaring one (in its own module under ``attnbench.stats``, imported by ``attnbench.stats``)::

    @statistic("entropy", needs=("weights",), doc="row entropy in nats, and over ln(keys allowed)")
    def entropy(s: Sample) -> Result:
        ...

``needs`` names what the statistic reads (:data:`NEEDS`); :func:`reasons` turns what a sample
lacks into plain-language reasons, every one of them at once, and the runner writes them as the
statistic's row instead of a value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

# What a statistic may need, and how a sample lacking it is explained.
NEEDS = {
    "weights": "the variant's attention weights (or its implied attention)",
    "positions": "the positions of queries and keys",
    "exact": "exact softmax attention on the same q, k, v",
    "output": "the variant's kernel output and exact softmax's output",
    "support": "the keys the variant may attend (its pattern, bucket-mates)",
    "self": "self-attention (the same tokens as queries and keys: N == M)",
    "layers": "every layer of the model over the same tokens (not a hierarchy of stages)",
    "prefix": "a CLS token (the model pools with pool='cls')",
    "grid": "an image's patch grid",
}
SCOPES = ("head", "model")


@dataclass
class LayerAttention:
    """One layer's attention of one variant on one batch (float64, CPU).

    ``weights`` [B, H, N, M]: rows sum to 1 over the keys a row attends (a row with no key is 0).
    ``allowed`` bool, broadcastable to [B, H, N, M]: the keys each row may attend under the
    variant's own rule (its pattern or bucket-mates, causality folded in); what entropy is
    normalized by. ``support``: the same where the variant restricts keys beyond causality
    (sparse patterns, windows, LSH), None where every causal key is attended (full, Performer).
    Positions: ``query_pos`` [N, P] and ``key_pos`` [M, P] in token units (P = 1 on a sequence,
    P = 2 (row, col) on an image's patch grid, centres of pooled cells for reduced keys);
    ``pixels`` the pixel side of one unit (the patch side x the stage's stride), None for text.
    The first ``query_prefix`` queries and ``key_prefix`` keys have no position (CLS, DeiT's
    distillation token): their rows of ``query_pos`` / ``key_pos`` are NaN.
    """

    weights: torch.Tensor
    allowed: torch.Tensor
    support: torch.Tensor | None = None
    query_pos: torch.Tensor | None = None
    key_pos: torch.Tensor | None = None
    pixels: float | None = None
    query_prefix: int = 0
    key_prefix: int = 0
    grid: tuple[int, int] | None = None  # the query grid (H, W) of an image layer

    @property
    def heads(self) -> int:
        return self.weights.shape[1]


@dataclass
class Sample:
    """What one statistic reads: a layer of one variant, exact attention on the same inputs.

    ``attn``: the variant's layer (its implied attention when its kernel forms no probabilities).
    ``exact``: exact softmax on the same q, k, v (the variant's own target where it approximates
    another definition: LSH's shared-QK attention). ``out`` / ``exact_out`` [B, H, N, D]: the
    variant's kernel output and the exact output. ``layers``: every layer of the variant's model
    in order, for statistics of ``scope="model"`` (``attn`` is then the last one).
    """

    attn: LayerAttention
    exact: LayerAttention | None = None
    out: torch.Tensor | None = None
    exact_out: torch.Tensor | None = None
    layers: list[LayerAttention] | None = None
    self_attention: bool = True  # queries and keys are the same tokens
    hierarchical: bool = False  # layers over different token sets (Swin, PVT stages)


@dataclass
class Result:
    """Per head: ``values`` {column: [H]} scalars and ``series`` {column: [H, L]} curves or maps
    (a model-scope statistic gives one 'head' row: shape [1] / [1, L])."""

    values: dict[str, torch.Tensor] = field(default_factory=dict)
    series: dict[str, torch.Tensor] = field(default_factory=dict)


StatFn = Callable[[Sample], Result]


@dataclass(frozen=True)
class Statistic:
    name: str
    fn: StatFn
    needs: tuple[str, ...]
    doc: str
    scope: str = "head"
    compares: bool = False  # against exact attention: only for non-exact or sparse variants

    def reasons(self, s: Sample) -> list[str]:
        """Why this statistic cannot be computed on ``s`` (empty: it can)."""
        a, r = s.attn, []
        have = {
            "weights": a is not None and a.weights is not None,
            "positions": a is not None and a.query_pos is not None and a.key_pos is not None,
            "exact": s.exact is not None,
            "output": s.out is not None and s.exact_out is not None,
            "support": a is not None and a.support is not None,
            "self": s.self_attention and _square(a),
            "layers": bool(s.layers) and not s.hierarchical and _same_tokens(s.layers),
            "prefix": a is not None and a.query_prefix > 0,
            "grid": a is not None and a.grid is not None,
        }
        for need in self.needs:
            if not have[need]:
                r.append(f"{self.name} needs {NEEDS[need]}")
        return r


def _square(a: LayerAttention | None) -> bool:
    """As many queries as keys (or nothing yet to tell otherwise)."""
    return a is None or a.weights is None or a.weights.shape[-2] == a.weights.shape[-1]


def _same_tokens(layers: list[LayerAttention]) -> bool:
    """Every layer attends over the same tokens: one [N, M] for all (no stage changes N)."""
    return len({tuple(layer.weights.shape[-2:]) for layer in layers}) == 1


STATISTICS: dict[str, Statistic] = {}


def statistic(name: str, *, needs: tuple[str, ...], doc: str, scope: str = "head",
              compares: bool = False) -> Callable[[StatFn], StatFn]:
    """Decorator: declare ``fn`` as the statistic ``name`` (module docstring)."""
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise ValueError(f"statistic {name!r}: needs {bad} not in {sorted(NEEDS)}")
    if scope not in SCOPES:
        raise ValueError(f"statistic {name!r}: scope {scope!r} not in {SCOPES}")

    def deco(fn: StatFn) -> StatFn:
        if name in STATISTICS:
            raise ValueError(f"statistic {name!r} is declared already")
        STATISTICS[name] = Statistic(name, fn, tuple(needs), doc, scope, compares)
        return fn

    return deco


def lookup(name: str) -> Statistic:
    if name not in STATISTICS:
        raise KeyError(f"unknown statistic {name!r}; known: {', '.join(sorted(STATISTICS))}")
    return STATISTICS[name]
