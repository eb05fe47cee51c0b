"""Swap what a model's attention modules call: an identity of the same shape, or a recorder.

Every skeleton's attention module (``attnbench.models.attention.Attention``) calls its registry
spec's ``forward(q, k, v, ...)`` between the projections. Replacing that spec on the module (a
copy with another ``forward``; every other field, its reasons included, kept) changes only the
kernel: the projections, the blocks, the loss, the backward and the optimizer run as before.

* :func:`identity`: ``out = v`` repeated to H heads ``+ 0 x q`` ([B, H, N, D], the kernel's
  output shape; across a cross-attention's N != M keys, v's mean), so gradients still reach the Q, K and V projections and their backward runs.
  A step with it, subtracted from the real step, is the time spent inside attention.
* :func:`recording`: the real kernel, each call's shapes and keywords noted (``Call``), so the
  kernel alone can be timed on exactly the model's case.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Iterator

import torch

from attnbench.case import AttnOutput
from attnbench.models.attention import Attention


@dataclass
class Call:
    q_shape: tuple[int, ...]  # [B, H, N, D]
    kv_shape: tuple[int, ...]  # [B, Hkv, M, D]
    causal: bool
    kwargs: dict[str, Any]  # the variant's params (and learned tensors) exactly as passed


def identity_forward(q, k, v, *, causal=False, state=None, need_weights=False, **params) -> AttnOutput:
    """The kernel's output shape from v alone: [B, Hkv, M, D] -> [B, H, N, D]. Self-attention
    (N = M): v itself; cross-attention (N != M): the mean of v over its M keys, at every query."""
    H, Hkv, N = q.shape[1], v.shape[1], q.shape[2]
    out = v if H == Hkv else v.repeat_interleave(H // Hkv, dim=1)  # [B, H, M, D]
    if out.shape[2] != N:
        out = out.mean(dim=2, keepdim=True).expand(-1, -1, N, -1)  # [B, H, N, D]
    return AttnOutput(out=out + q * 0)  # q stays in the graph: its projection's backward runs too


@contextlib.contextmanager
def _swapped(model: torch.nn.Module, make) -> Iterator[None]:
    mods = [m for m in model.modules() if isinstance(m, Attention)]
    if not mods:
        raise ValueError(f"{type(model).__name__} has no attention module (attnbench.models.attention.Attention)")
    before = [m.spec for m in mods]
    try:
        for m in mods:
            m.spec = replace(m.spec, forward=make(m.spec))
        yield
    finally:
        for m, spec in zip(mods, before):
            m.spec = spec


def identity(model: torch.nn.Module):
    """Within the context, every attention call of ``model`` is :func:`identity_forward`."""
    return _swapped(model, lambda spec: identity_forward)


def recording(model: torch.nn.Module, calls: list[Call]):
    """Within the context, every attention call runs its kernel and appends a :class:`Call`."""
    def make(spec):
        def forward(q, k, v, *, causal=False, state=None, need_weights=False, **params):
            calls.append(Call(tuple(q.shape), tuple(v.shape), causal, dict(params)))
            return spec.forward(q, k, v, causal=causal, state=state, need_weights=need_weights, **params)
        return forward

    return _swapped(model, make)
