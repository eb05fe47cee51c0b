"""Positions, chosen by config: none, learned, sinusoidal (added to the token embeddings), or
rotary (RoPE, applied to q and k inside the attention module, before the kernel).

Every scheme numbers the tokens of one call 0..N-1 (the CLS token, when there is one, is 0).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def sinusoidal_table(n: int, dim: int) -> torch.Tensor:
    """Vaswani et al.'s encodings [n, dim]: sin on even channels, cos on odd, 10000^(-2i/dim)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]  # [n, 1]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)[:, : dim // 2]
    return table  # [n, dim]


class AbsolutePositions(nn.Module):
    """What is added to the embeddings [B, N, C]: a learned table, a fixed sinusoidal one, or nothing
    (``none`` and ``rotary`` add nothing here)."""

    def __init__(self, kind: str, n_max: int, dim: int):
        super().__init__()
        self.kind, self.n_max = kind, n_max
        if kind == "learned":
            self.table = nn.Parameter(torch.zeros(n_max, dim))
            nn.init.normal_(self.table, std=0.02)
        elif kind == "sinusoidal":
            self.register_buffer("table", sinusoidal_table(n_max, dim), persistent=False)
        else:
            self.table = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.table is None:
            return x
        n = x.shape[1]
        if n > self.n_max:
            raise ValueError(f"sequence of {n} tokens longer than the {self.n_max} positions "
                             f"(max_len, CLS included); allowed: at most {self.n_max}")
        return x + self.table[:n]  # [B, N, C] + [N, C]


class Rotary(nn.Module):
    """RoPE (Su et al. 2021), half-split layout: channel i pairs with i + D/2, rotated by angle
    t theta_i, theta_i = 10000^(-2i/D). Scores of rotated q_t and k_s depend on t - s only."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # [D/2]
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x [B, H, N, D] at positions offset..offset+N-1 -> rotated x [B, H, N, D]."""
        n = x.shape[2]
        t = torch.arange(offset, offset + n, device=x.device, dtype=torch.float32)
        ang = t[:, None] * self.inv_freq[None, :]  # [N, D/2]
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)  # [B, H, N, D/2] each
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # [B, H, N, D]
