"""The ground floor: a problem's shape, what a kernel returns, and a case (variant, shape, params).

Layout words used everywhere: q ``[B, H, N, D]``, k/v ``[B, Hkv, M, D]``; causal masking is
bottom-right aligned (query i sits at key position i + M - N and sees keys j <= i + M - N), as in
FlashAttention >= 2.1, so one decode query sees its whole cache. With N > M the first N - M
queries sit at negative key positions, before every key: a causal query there sees no key (its
output row is zero); what a pattern lets it see is stated with the pattern (``attnbench.patterns``).

A :class:`Case` is resolved once by the planner and is the one object that reaches the worker,
the cost formulas, the check and the row: the row's ``params`` are ``case.params``, exactly what
the kernel received.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

import torch

from attnbench.vocab import GRAD_MODES

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class AttnOutput(NamedTuple):
    """What a kernel returns; one meaning per field.

    out:     [B, H, N, D] attention output.
    weights: [B, H, N, M] attention probabilities, only when asked and the kernel can.
    lse:     [B, H, N] log-sum-exp of the scaled scores, where the kernel produces it.
    state:   whatever a stateful variant carries to its next call (memory, running sums).
    """

    out: torch.Tensor
    weights: torch.Tensor | None = None
    lse: torch.Tensor | None = None
    state: Any = None


class Unsupported(Exception):
    """Raised by a kernel that finds at run time that it cannot run this case.

    The harness turns it into an ``unsupported`` row carrying the message (for example
    xformers' own dispatch explanation), never into an ``error``.
    """


@dataclass(frozen=True)
class Shape:
    """One case's problem: q [B, H, N, D], k/v [B, Hkv, M, D]."""

    batch: int
    heads: int
    kv_heads: int
    seq_len: int  # N, queries
    kv_len: int  # M, keys / values (the KV cache length in decode mode)
    head_dim: int
    dtype: str = "float32"
    device: str = "cpu"
    causal: bool = False
    mode: str = "fwd"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    @property
    def needs_grad(self) -> bool:
        return self.mode in GRAD_MODES

    def attended_pairs(self) -> int:
        """(query, key) pairs a dense kernel must score, per batch and head (causal: bottom-right)."""
        return attended_pairs(self.seq_len, self.kv_len, self.causal)


def attended_pairs(n: int, m: int, causal: bool) -> int:
    """(query, key) pairs a dense kernel scores, per batch and head, in O(1): N M, or with
    bottom-right causal the rows' clamp(i + M - N + 1, 0, M) keys, i.e. 1 + 2 + .. + M less the
    rows that sit before every key."""
    if not causal:
        return n * m
    lo = max(m - n, 0)  # row i sees i + M - N + 1 keys: from lo + 1 up to M
    return (m * (m + 1) - lo * (lo + 1)) // 2


def freeze(value: Any) -> Any:
    """A hashable copy of a parameter value (lists and tensors become nested tuples)."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


def jsonable(value: Any) -> Any:
    """A parameter value as JSON stores it (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


@dataclass(frozen=True)
class Case:
    """One measurement: a variant, a shape (the variant's own K/V-head rule applied) and its
    resolved parameters (every declared key, defaults filled in, validated)."""

    spec: Any  # registry.VariantSpec (this floor imports nothing above it)
    shape: Shape
    params: tuple  # ((key, frozen value), ...) in the variant's declaration order

    @classmethod
    def make(cls, spec: Any, shape: Shape, overrides: dict | None = None) -> "Case":
        params = spec.resolve_params(overrides or {})
        return cls(spec, spec.resolve_shape(shape), tuple((k, freeze(v)) for k, v in params.items()))

    @property
    def variant(self) -> str:
        return self.spec.name

    @property
    def kwargs(self) -> dict[str, Any]:
        """The parameters as the kernel receives them."""
        return dict(self.params)

    def with_mode(self, mode: str) -> "Case":
        return replace(self, shape=replace(self.shape, mode=mode))

    def reasons(self) -> list[str]:
        return self.spec.not_supported_reasons(self.shape, self.kwargs)

    def flops(self) -> float:
        return self.spec.flops(self.shape, self.kwargs)

    def bytes(self) -> float:
        return self.spec.bytes(self.shape, self.kwargs)

    def predicted_peak_bytes(self) -> float | None:
        return self.spec.predicted_peak_bytes(self.shape, self.kwargs)

    def to_json(self) -> dict[str, Any]:
        """What crosses the pipe to a worker (the spec by name)."""
        return {"variant": self.spec.name, "shape": asdict(self.shape),
                "params": {k: jsonable(v) for k, v in self.params}}
