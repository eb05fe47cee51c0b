"""Fairness, the Long Range Arena's rule: every variant trains in the identical skeleton with the
identical hyperparameters, and its parameter count stays within FAIRNESS_LIMIT of full
attention's in that skeleton (per arch: a Swin with a variant against the same Swin with full
attention). Counted before training and recorded; the variant's own weights
(XL's u, v_bias, W_r) count and MQA/GQA count their smaller K/V projections.

The rule compares the weights apart from absolute position tables: a variant that brings its
own relative positions (Swin's bias, XL's relative terms) replaces the skeleton's table by its
own, whose weights do count (XL's W_r), and a learned table's size is set by the task's length,
not by the attention (a 1024 x 64 table alone is 40% of a small model). Both totals are
recorded, the table included.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch.nn as nn

from attnbench.models.attention import Attention
from attnbench.models.config import ModelConfig
from attnbench.models.positions import AbsolutePositions

FAIRNESS_LIMIT = 0.10  # LRA: parameter counts within 10% of the full-attention model's


def count_params(model: nn.Module) -> int:
    """Trainable parameters, each tensor once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def own_params(model: nn.Module) -> int:
    """Parameters the variant itself brings (a spec's ``learned`` tensors, and the tensors a
    vision block learns for it: Swin's bias tables)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, Attention)
               for p in (*m.own.values(), *m.extra.values()))


def position_params(model: nn.Module) -> int:
    """Parameters of absolute position tables (learned positions; sinusoidal ones have none)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, AbsolutePositions)
               for p in m.parameters() if p.requires_grad)


def param_report(kind: str, cfg: ModelConfig, build: Callable[..., nn.Module], *, device: str = "cpu",
                 check: bool = True) -> dict[str, Any]:
    """{"params", "full_params", "deviation" (params / full - 1, position tables aside), "own_params",
    "position_params", "full_position_params", "within_limit",
    "limit", "positions", "kv_heads"}: the config's model against the same skeleton with variant
    'full' (no pattern params; the config's K/V heads and positions). With ``check``, a variant
    that cannot run the model's case on ``device`` raises Unsupported (the registry's reasons)."""
    model = build(kind, cfg, device=device, check=check)
    full = build(kind, replace(cfg, variant="full", params={}), check=False)
    n, n_full = count_params(model), count_params(full)
    pos, pos_full = position_params(model), position_params(full)
    deviation = (n - pos) / (n_full - pos_full) - 1.0
    return {"params": n, "full_params": n_full, "deviation": deviation, "own_params": own_params(model),
            "position_params": pos, "full_position_params": pos_full,
            "within_limit": abs(deviation) <= FAIRNESS_LIMIT, "limit": FAIRNESS_LIMIT,
            "positions": model.record["positions"], "kv_heads": model.record["kv_heads"]}
