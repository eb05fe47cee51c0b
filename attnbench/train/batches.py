"""Which samples make each batch: a pure function of (seed, step), so a resumed job draws exactly
the batches the uninterrupted job would have drawn, with no sampler state to save.

Two orders:
- ``shuffled``: epochs of a permutation seeded by (seed, epoch); a batch may straddle two epochs.
- ``stream`` (language modelling with segment recurrence): the split's consecutive windows are
  cut into ``batch`` parallel streams (Transformer-XL's batchify); step t takes window
  ``t mod L`` of every stream (L windows per stream), so the memory carried from step t to t + 1
  belongs to the text that follows. The state is reset when the streams wrap around.
"""
from __future__ import annotations

import torch

from attnbench.data.base import Split


def _perm(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def shuffled(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """Sample indices [batch] of training step ``step`` (0-based)."""
    pos = step * batch + torch.arange(batch)  # [batch] global positions in the epoch sequence
    epoch, within = pos // n, pos % n
    out = torch.empty(batch, dtype=torch.long)
    for e in epoch.unique().tolist():  # at most two epochs per batch
        sel = epoch == e
        out[sel] = _perm(n, seed, e)[within[sel]]
    return out


def stream_length(n: int, batch: int) -> int:
    """Windows per stream when ``n`` consecutive windows are cut into ``batch`` streams."""
    if n < batch:
        raise ValueError(f"a stream split of {n} windows cannot feed a batch of {batch} parallel streams")
    return n // batch


def stream(n: int, batch: int, step: int) -> tuple[torch.Tensor, bool]:
    """(sample indices [batch], whether the streams start over at this step)."""
    length = stream_length(n, batch)
    t = step % length
    return torch.arange(batch) * length + t, t == 0


def take(split: Split, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return split.x[idx], split.y[idx]
