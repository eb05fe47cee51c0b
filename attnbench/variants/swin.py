"""Swin Transformer (shifted) window attention on an H x W token grid.

Definition. Tokens are in raster order on an H x W grid (``grid``, default: the most nearly
square factorization of n). The grid is padded at the bottom/right to multiples of the window
M (padded tokens are never attended: we mask them, where the reference implementation lets
queries attend to zero-padded tokens), then, with ``shift``, cyclically shifted by
s = floor(M/2). Two tokens may attend to each other iff they fall in the same M x M window of
the shifted, padded grid and in the same region of Swin's attention mask (regions [0, Hp-M),
[Hp-M, Hp-s), [Hp-s, Hp) per axis, labelled before the roll), so tokens that the roll brought
together from opposite edges never attend to each other. As in Swin, a grid no larger than the
window uses one window and no shift. A learned relative-position bias table
[(2M-1)^2, heads] is added to the scores (here drawn from ``seed`` with std ``bias_std``, so
kernels and reference share it).
"""
from __future__ import annotations

import functools

import torch

from attnbench.patterns import Pattern, grid_for
from attnbench.variants.masked import register_pattern


def swin_geometry(n: int, params) -> dict:
    """Grid, window, shift and padded sizes for n tokens."""
    h, w = grid_for(n, params)
    win = int(params["window"])
    if min(h, w) <= win:  # Swin: a window covering the grid, no shift
        win = min(h, w) if max(h, w) <= win else win
    shift = win // 2 if params.get("shift", True) and max(h, w) > win else 0
    hp, wp = -(-h // win) * win, -(-w // win) * win
    return {"h": h, "w": w, "win": win, "shift": shift, "hp": hp, "wp": wp}


def shifted_coords(t: torch.Tensor, g: dict):
    """Token index -> (row, col) in the padded grid after the cyclic shift by -shift."""
    r, c = t // g["w"], t % g["w"]
    return (r - g["shift"]) % g["hp"], (c - g["shift"]) % g["wp"]


def _region(x: torch.Tensor, size: int, win: int, shift: int) -> torch.Tensor:
    if shift == 0:
        return torch.zeros_like(x)
    return (x >= size - win).long() + (x >= size - shift).long()


def _swin_mask(n, m, params, device):
    g = swin_geometry(n, params)
    win, sh = g["win"], g["shift"]

    def mask_mod(b, h, q_idx, kv_idx):
        qr, qc = shifted_coords(q_idx, g)
        kr, kc = shifted_coords(kv_idx, g)
        same_window = (qr // win == kr // win) & (qc // win == kc // win)
        same_region = (_region(qr, g["hp"], win, sh) == _region(kr, g["hp"], win, sh)) & \
                      (_region(qc, g["wp"], win, sh) == _region(kc, g["wp"], win, sh))
        return same_window & same_region

    return mask_mod


@functools.lru_cache(maxsize=32)
def bias_table(heads: int, win: int, seed: int, std: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    """[heads, (2M-1)^2] relative-position bias (a learned parameter in a model)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(heads, (2 * win - 1) ** 2, generator=gen, dtype=torch.float64) * std
    return t.to(device=device, dtype=dtype)


def relative_index(q_idx: torch.Tensor, kv_idx: torch.Tensor, g: dict) -> torch.Tensor:
    """Index into the bias table of (dr, dc) within a window (clamped outside it: masked anyway)."""
    win = g["win"]
    qr, qc = shifted_coords(q_idx, g)
    kr, kc = shifted_coords(kv_idx, g)
    dr = (qr % win - kr % win).clamp(-(win - 1), win - 1) + win - 1
    dc = (qc % win - kc % win).clamp(-(win - 1), win - 1) + win - 1
    return dr * (2 * win - 1) + dc


def _swin_bias(n, m, heads, params, device, dtype):
    g = swin_geometry(n, params)
    table = bias_table(heads, g["win"], int(params["seed"]), float(params["bias_std"]), str(device), dtype)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + table[h, relative_index(q_idx, kv_idx, g)]

    def dense_bias(rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        idx = relative_index(rows[:, None], keys[None, :], g)  # [R, M]
        return table[:, idx]  # [H, R, M]

    return score_mod, dense_bias


SWIN = register_pattern(Pattern(
    name="swin", family="window", make_mask=_swin_mask, make_bias=_swin_bias, causal=False, grid=True,
    defaults={"window": 8, "shift": True, "grid": None, "seed": 0, "bias_std": 0.02},
    doc="Swin (shifted) M x M windows on an H x W grid with relative-position bias",
    paper="Liu et al. 2021, Swin Transformer",
))
