"""The few reductions every statistic shares, defined once: averaging per-row figures into one
figure per head, row entropy, the first index where a cumulative curve reaches a share, and the
pooled maps and patch-grid shapes that series take.

Conventions: a per-row figure is [B, H, N]; "mean over rows" is the mean over the batch and over
the rows ``keep`` selects, one number per head ([H]); a head where no row qualifies is NaN (the
figure is undefined there, not 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MAP_SIDE = 32  # maps are block-averaged to at most 32 x 32 cells: enough to read a heatmap
# A cumulative share "reaches" 0.9 within this slack: 9 of 10 equal parts sum to 0.8999...9
# in float64, and must count as reaching 0.9.
REACH_SLACK = 1e-9


def row_mean(x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of per-row figures ``x`` [B, H, N] over the batch and the rows ``keep`` [B, H, N]
    selects (all rows when None) -> [H]; NaN where a head keeps no row."""
    if keep is None:
        return x.mean(dim=(0, 2))
    keep = keep.expand_as(x)
    total = torch.where(keep, x, torch.zeros_like(x)).sum(dim=(0, 2))  # [H]
    count = keep.sum(dim=(0, 2)).to(x.dtype)  # [H]
    return total / count  # 0 / 0 -> NaN where no row is kept


def row_entropy(w: torch.Tensor) -> torch.Tensor:
    """−Σ_j w_j ln w_j over the last axis, nats, with 0 ln 0 = 0: [..., M] -> [...]."""
    return -torch.special.xlogy(w, w).sum(dim=-1)


def first_reaching(cum: torch.Tensor, share: float) -> torch.Tensor:
    """How many leading entries of the non-decreasing ``cum`` [..., K] it takes to reach
    ``share`` (the 1-based index of the first entry ≥ share) -> [...] float."""
    below = (cum < share - REACH_SLACK).sum(dim=-1)  # [...]: entries still short of the share
    return (below + 1).clamp(max=cum.shape[-1]).to(cum.dtype)


def block_map(x: torch.Tensor, side: int = MAP_SIDE) -> torch.Tensor:
    """Block-average the last two axes of ``x`` [C, N, M] down to at most side x side:
    -> [C, min(N, side), min(M, side)] (adaptive average pooling: cells of near-equal size)."""
    S, T = min(x.shape[-2], side), min(x.shape[-1], side)
    return F.adaptive_avg_pool2d(x, (S, T))  # [C, S, T]


def on_grid(x: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
    """Lay the last axis of ``x`` [C, K] out on the patch ``grid`` (gh, gw) when K == gh·gw:
    -> [C, gh, gw]; otherwise ``x`` unchanged [C, K]."""
    if grid is not None and grid[0] * grid[1] == x.shape[-1]:
        return x.reshape(*x.shape[:-1], grid[0], grid[1])  # [C, gh, gw]
    return x


def allowed_count(allowed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Keys each row may attend: ``allowed`` bool broadcastable to ``shape`` [B, H, N, M]
    -> [B, H, N] float64 (an expanded view is summed: no [B, H, N, M] copy)."""
    return allowed.expand(shape).sum(dim=-1).to(torch.float64)  # [B, H, N]
