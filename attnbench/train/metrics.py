"""Losses and metrics per data kind, and evaluation over a whole split.

- ``classify`` / ``pair``: cross-entropy over classes; accuracy over samples.
- ``tokens``: cross-entropy over the positions whose target is not IGNORE (MQAR: the answer
  positions only; lm: every byte); accuracy over those positions, or bits per byte =
  mean cross-entropy in nats / ln 2 (lower is better).

The standard error of a test accuracy is the binomial one, sqrt(p (1 - p) / n), n the number
of scored predictions; of bits per byte, the standard error of the mean per-position loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnbench.data.base import IGNORE, Split
from attnbench.train import batches


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy: logits [B, C] with y [B], or [B, N, V] with y [B, N] (IGNORE skipped)."""
    if logits.dim() == 3:
        logits = logits.flatten(0, 1)  # [B N, V]
        y = y.flatten()  # [B N]
    return F.cross_entropy(logits.float(), y, ignore_index=IGNORE)


@dataclass
class Score:
    metric: str
    value: float
    se: float
    count: int
    loss: float  # mean cross-entropy (nats)


class _Tally:
    def __init__(self):
        self.correct = 0
        self.count = 0
        self.nll = []  # per-position / per-sample cross-entropy, for the mean and its spread

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        if logits.dim() == 3:
            logits, y = logits.flatten(0, 1), y.flatten()  # [B N, V], [B N]
        keep = y != IGNORE
        logits, y = logits[keep].float(), y[keep]
        self.correct += int((logits.argmax(-1) == y).sum())
        self.count += int(y.numel())
        self.nll.append(F.cross_entropy(logits, y, reduction="none"))

    def score(self, metric: str) -> Score:
        nll = torch.cat(self.nll) if self.nll else torch.zeros(0)
        n = max(self.count, 1)
        loss = float(nll.mean()) if self.count else float("nan")
        if metric == "accuracy":
            p = self.correct / n
            return Score(metric, p, math.sqrt(p * (1 - p) / n), self.count, loss)
        se = float(nll.std() / math.sqrt(n)) / math.log(2) if self.count > 1 else float("nan")
        return Score(metric, loss / math.log(2), se, self.count, loss)


@torch.no_grad()
def evaluate(model, split: Split, metric: str, batch: int, stream: bool, max_samples: int | None = None) -> Score:
    """The metric over ``split`` (its first ``max_samples``), in eval mode; a stream split is
    read as ``batch`` parallel streams with the model's state carried window to window."""
    was_training = model.training
    model.eval()
    tally = _Tally()
    n = len(split) if max_samples is None else min(len(split), max_samples)
    if stream:
        b = min(batch, n)
        state = None
        for step in range(batches.stream_length(n, b)):
            idx, _ = batches.stream(n, b, step)
            x, y = batches.take(split, idx)
            logits, state = model(x, state=state)
            tally.add(logits, y)
    else:
        for lo in range(0, n, batch):
            idx = torch.arange(lo, min(lo + batch, n))
            x, y = batches.take(split, idx)
            logits, _ = model(x)
            tally.add(logits, y)
    model.train(was_training)
    return tally.score(metric)
