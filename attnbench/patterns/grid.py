"""Token grids shared by the 2-D variants: Swin's windows and PVT's spatial reduction.

Tokens sit in raster order on an H x W grid (token t at row t // W, column t % W): ``grid``
gives H x W, else the most nearly square factorization of n (a prime n gets 1 x n).

Average pooling by R x R windows (PVT's spatial reduction) is ceil-mode: the windows start at
the top-left and tile the grid; where R does not divide a side, the last window along it is
cut short and averages only the real tokens it covers — what
``avg_pool2d(kernel=R, stride=R, ceil_mode=True, count_include_pad=False)`` computes. That
gives ceil(H / R) x ceil(W / R) pooled tokens, in raster order of the windows.
"""
from __future__ import annotations

import math

import torch


def grid_for(n: int, params) -> tuple[int, int]:
    """(H, W): ``params['grid']`` or the most nearly square factorization of n."""
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


def grid_reasons(name: str, n: int, params) -> list[str]:
    """Why ``params['grid']`` cannot hold n tokens (empty when it can, or when it is none)."""
    g = params.get("grid")
    if g and g[0] * g[1] != n:
        return [f"{name} grid {g[0]}x{g[1]} holds {g[0] * g[1]} tokens, the sequence has {n}: "
                f"give grid=none (the most nearly square factorization) or a grid of n tokens"]
    return []


def pooled_side(size: int, ratio: int) -> int:
    """Windows of ``ratio`` along a side of ``size`` tokens (ceil mode)."""
    return -(-size // ratio)


def token_windows(h: int, w: int, ratio: int, device=None) -> torch.Tensor:
    """[n] long: the pooling window (raster order over the ceil(H/R) x ceil(W/R) windows) of each token."""
    t = torch.arange(h * w, device=device)
    return (t // w // ratio) * pooled_side(w, ratio) + (t % w) // ratio


def window_counts(h: int, w: int, ratio: int, device=None) -> torch.Tensor:
    """[H', W'] long: the real tokens in each window (R^2, fewer in a cut-short edge window)."""
    rows = (h - torch.arange(pooled_side(h, ratio), device=device) * ratio).clamp(max=ratio)
    cols = (w - torch.arange(pooled_side(w, ratio), device=device) * ratio).clamp(max=ratio)
    return rows[:, None] * cols[None, :]


def pooling_matrix(h: int, w: int, ratio: int, *, device=None, dtype=torch.float64) -> torch.Tensor:
    """P [M', n], M' = ceil(H/R) ceil(W/R): row p averages the real tokens of window p, so
    P @ x [n, D] is the pooled grid [M', D]. Dense (O(M' n)): a definition, not a kernel."""
    m = pooled_side(h, ratio) * pooled_side(w, ratio)
    member = token_windows(h, w, ratio, device)[None, :] == torch.arange(m, device=device)[:, None]
    member = member.to(dtype)  # [M', n]: 1 where token t lies in window p
    return member / member.sum(1, keepdim=True)


def avg_pool_grid(x: torch.Tensor, h: int, w: int, ratio: int) -> torch.Tensor:
    """x [..., n, D] on the H x W grid -> [..., M', D]: each window's mean over its real tokens.

    O(n D) time; zero-pads the grid to multiples of R (one copy of x) only where R does not
    divide it, sums each window and divides by its count of real tokens.
    """
    *lead, n, d = x.shape
    hr, wr = pooled_side(h, ratio), pooled_side(w, ratio)
    g = x.reshape(-1, h, w, d)  # [L, H, W, D], L = the leading dims
    if (hr * ratio, wr * ratio) != (h, w):
        g = torch.nn.functional.pad(g, (0, 0, 0, wr * ratio - w, 0, hr * ratio - h))  # [L, H'R, W'R, D]
    s = g.reshape(-1, hr, ratio, wr, ratio, d).sum((2, 4))  # [L, H', W', D]
    count = window_counts(h, w, ratio, x.device).to(x.dtype)[..., None]  # [H', W', 1]
    return (s / count).reshape(*lead, hr * wr, d)  # [..., M', D]
