"""Swin Transformer (shifted) window attention on an H x W token grid.

Definition. Tokens are in raster order on an H x W grid (``grid``, default: the most nearly
square factorization of n). The grid is padded at the bottom/right to multiples of the window
M (padded tokens are never attended: we mask them, where the reference implementation lets
queries attend to zero-padded tokens), then, with ``shift``, cyclically shifted by
s = floor(M/2). Two tokens may attend to each other iff they fall in the same M x M window of
the shifted, padded grid and in the same region of Swin's attention mask (regions [0, Hp-M),
[Hp-M, Hp-s), [Hp-s, Hp) per axis, labelled before the roll), so tokens that the roll brought
together from opposite edges never attend to each other. As in Swin (``SwinTransformerBlock``:
``if min(input_resolution) <= window_size``), when the grid's shorter side is at most M the
window shrinks to that side and there is no shift: one window for a square grid, min(H, W)
windows for an elongated one (a 1 x n grid, e.g. a prime n, gets M = 1). A learned
relative-position bias table [heads, (2M-1)^2] is added to the scores: drawn from ``seed``
with std ``bias_std`` (so kernels and reference share it), or, when a model learns it, given
to every kernel as ``bias_table=`` (``table_for``: the shape is checked, gradients reach it).

Queries and keys are the same N tokens of one grid: N == M always (no decode, no N > M).

The mask and bias read two per-token tables (window-and-region group, position in the window)
instead of recomputing coordinates per pair: same definition, 4x faster under FlexAttention on
CPU, where integer div/mod per score dominated.
"""
from __future__ import annotations

import functools

import torch

from attnbench import params as P
from attnbench.cache import normal_tensors
from attnbench.case import freeze
from attnbench.patterns.base import Pattern
from attnbench.patterns.grid import grid_for, grid_reasons


def swin_geometry(n: int, params) -> dict:
    """Grid, window, shift and padded sizes for n tokens."""
    h, w = grid_for(n, params)
    win = int(params["window"])
    if min(h, w) <= win:  # official Swin: the window shrinks to the shorter side, no shift
        win, shift = min(h, w), 0
    else:
        shift = win // 2 if params["shift"] else 0
    hp, wp = -(-h // win) * win, -(-w // win) * win
    return {"h": h, "w": w, "win": win, "shift": shift, "hp": hp, "wp": wp}


def shifted_coords(t: torch.Tensor, g: dict):
    """Token index -> (row, col) in the padded grid after the cyclic shift by -shift."""
    r, c = t // g["w"], t % g["w"]
    return (r - g["shift"]) % g["hp"], (c - g["shift"]) % g["wp"]


def region(x: torch.Tensor, size: int, win: int, shift: int) -> torch.Tensor:
    """Swin's region label along one axis: 0, 1, 2 for [0, size-M), [size-M, size-s), [size-s, size)."""
    if shift == 0:
        return torch.zeros_like(x)
    return (x >= size - win).long() + (x >= size - shift).long()


@normal_tensors
@functools.lru_cache(maxsize=64)
def token_tables(n: int, frozen_params: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-token lookups that the mask and the bias read (cheap for FlexAttention's mods).

    ``group`` [n]: window of the shifted padded grid * 9 + Swin region label (row label * 3 +
    column label): two tokens may attend iff their groups are equal.
    ``pos`` [n]: (row % M) * (2M - 1) + col % M inside its window, so that
    ``pos[q] - pos[k] + offset`` is Swin's relative_position_index (dr + M-1) * (2M-1) + dc + M-1
    for a pair in one window (and, for any pair, an index inside the (2M-1)^2 table).
    """
    g = swin_geometry(n, dict(frozen_params))
    win, sh = g["win"], g["shift"]
    r, c = shifted_coords(torch.arange(n, device=device), g)
    window = (r // win) * (g["wp"] // win) + c // win
    group = window * 9 + region(r, g["hp"], win, sh) * 3 + region(c, g["wp"], win, sh)
    pos = (r % win) * (2 * win - 1) + c % win
    return group, pos, (win - 1) * (2 * win - 1) + (win - 1)


def _tables(n, params, device):
    return token_tables(n, freeze(params), str(torch.device(device) if device is not None else "cpu"))


def _swin_mask(n, m, params, device):
    group, _, _ = _tables(n, params, device)

    def mask_mod(b, h, q_idx, kv_idx):
        return group[q_idx] == group[kv_idx]

    return mask_mod


@normal_tensors
@functools.lru_cache(maxsize=32)
def bias_table(heads: int, win: int, seed: int, std: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    """[heads, (2M-1)^2] relative-position bias drawn from ``seed`` (the benchmark's stand-in for
    a learned table; cached, so it never sees a tensor argument)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(heads, (2 * win - 1) ** 2, generator=gen, dtype=torch.float64) * std
    return t.to(device=device, dtype=dtype)


def bias_table_init(n: int, heads: int, params) -> torch.Tensor:
    """A new [heads, (2M-1)^2] float64 CPU tensor holding the seeded table for n tokens (M: the
    window after the shrink rule): where a model that learns its table starts."""
    g = swin_geometry(n, params)
    return bias_table(heads, g["win"], int(params["seed"]), float(params["bias_std"]), "cpu", torch.float64).clone()


def table_for(n: int, heads: int, params, device, dtype, given: torch.Tensor | None = None) -> torch.Tensor:
    """The [heads, (2M-1)^2] table a kernel adds: ``given`` (a model's learned ``bias_table``,
    moved to ``device`` and ``dtype``, gradients flowing back to it), else the seeded draw.
    A given table of another shape raises ValueError naming the expected one."""
    g = swin_geometry(n, params)
    if given is None:
        return bias_table(heads, g["win"], int(params["seed"]), float(params["bias_std"]), str(device), dtype)
    want = (heads, (2 * g["win"] - 1) ** 2)
    if tuple(given.shape) != want:
        raise ValueError(f"bias_table has shape {list(given.shape)}; expected [heads, (2M-1)^2] = {list(want)} "
                         f"(M = {g['win']}: the window on the {g['h']}x{g['w']} grid after Swin's shrink rule)")
    return given.to(device=device, dtype=dtype)


def _swin_bias(n, m, heads, params, device, dtype, table=None):
    """(score_mod, dense_bias) adding the relative-position bias: ``table`` (a given, learned
    [heads, (2M-1)^2] tensor) or the seeded draw."""
    table = table_for(n, heads, params, device, dtype, table)
    _, pos, offset = _tables(n, params, device)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + table[h, pos[q_idx] - pos[kv_idx] + offset]

    def dense_bias(rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return table[:, pos[rows][:, None] - pos[keys][None, :] + offset]  # [H, R, M]

    return score_mod, dense_bias


def _axis_squares(size: int, padded: int, win: int, shift: int) -> int:
    """Sum over one axis's (window, region) cells of (tokens in the cell)^2. Token r sits at
    (r - s) mod padded: at [0, size - s) and [padded - s, padded); the last window splits into
    regions [padded - M, padded - s) and [padded - s, padded)."""
    if shift == 0:
        full, rest = divmod(size, win)
        return full * win * win + rest * rest
    real, windows = size - shift, padded // win
    full = min(windows - 1, real // win)
    part = min(win, real - full * win) if full < windows - 1 else 0
    region1 = max(0, min(padded - shift, real) - (padded - win))
    return full * win * win + part * part + region1 * region1 + shift * shift


def _swin_pairs(n, m, causal, params):
    """Allowed pairs in O(1): a group is a (row cell, column cell) pair, so the sum of squared
    group sizes factors into one sum per axis. None for shapes the pattern does not describe."""
    if causal or n != m:
        return None
    g = swin_geometry(n, params)
    return (_axis_squares(g["h"], g["hp"], g["win"], g["shift"])
            * _axis_squares(g["w"], g["wp"], g["win"], g["shift"]))


def _grid_reasons(n: int, m: int, params: dict) -> list[str]:
    return grid_reasons("swin", n, params)


SWIN = Pattern(
    name="swin", family="window", make_mask=_swin_mask, make_bias=_swin_bias, causal=False, grid=True,
    pairs=_swin_pairs,
    params={"window": P.integer(8, minimum=1, doc="window side M (M x M tokens)"),
            "shift": P.boolean(True, doc="shift the windows by M // 2 (Swin's odd blocks)"),
            "grid": P.grid(doc="H x W token grid"),
            "seed": P.integer(0, minimum=0, doc="seed of the relative-position bias table"),
            "bias_std": P.number(0.02, minimum=0.0, doc="std of the bias table")},
    doc="Swin (shifted) M x M windows on an H x W grid with relative-position bias",
    paper="Liu et al. 2021, Swin Transformer",
    examples=({"window": 3, "shift": True}, {"window": 2, "shift": False}),
    shape_reasons=_grid_reasons,
)
