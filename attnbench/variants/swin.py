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
relative-position bias table [(2M-1)^2, heads] is added to the scores (here drawn from
``seed`` with std ``bias_std``, so kernels and reference share it).

The mask and bias read two per-token tables (window-and-region group, position in the window)
instead of recomputing coordinates per pair: same definition, 4x faster under FlexAttention on
CPU, where integer div/mod per score dominated.

Kernels: @dense / @flex / @sdpa_mask from the mask and bias functions (``variants/masked.py``),
and ``swin@blocked`` below: the windows as a batch of M^2 x M^2 dense attentions, O(n M^2 d).
"""
from __future__ import annotations

import functools
import math

import torch

from attnbench.patterns import Pattern, _freeze, grid_for
from attnbench.registry import AttnOutput, Shape, Unsupported, VariantSpec, add
from attnbench.variants.masked import register_pattern
from attnbench.variants.window import _normal_tensors


def swin_geometry(n: int, params) -> dict:
    """Grid, window, shift and padded sizes for n tokens."""
    h, w = grid_for(n, params)
    win = int(params["window"])
    if win < 1:
        raise ValueError(f"swin window must be >= 1, got {win}")
    if min(h, w) <= win:  # official Swin: the window shrinks to the shorter side, no shift
        win, shift = min(h, w), 0
    else:
        shift = win // 2 if params.get("shift", True) else 0
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


@_normal_tensors  # cached tensors must not be inference tensors (a later autograd call reuses them)
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
    group = window * 9 + _region(r, g["hp"], win, sh) * 3 + _region(c, g["wp"], win, sh)
    pos = (r % win) * (2 * win - 1) + c % win
    return group, pos, (win - 1) * (2 * win - 1) + (win - 1)


def _tables(n, params, device):
    return token_tables(n, _freeze(params), str(torch.device(device) if device is not None else "cpu"))


def _swin_mask(n, m, params, device):
    group, _, _ = _tables(n, params, device)

    def mask_mod(b, h, q_idx, kv_idx):
        return group[q_idx] == group[kv_idx]

    return mask_mod


@_normal_tensors  # cached tensors must not be inference tensors (a later autograd call reuses them)
@functools.lru_cache(maxsize=32)
def bias_table(heads: int, win: int, seed: int, std: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    """[heads, (2M-1)^2] relative-position bias (a learned parameter in a model)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(heads, (2 * win - 1) ** 2, generator=gen, dtype=torch.float64) * std
    return t.to(device=device, dtype=dtype)


def _swin_bias(n, m, heads, params, device, dtype):
    g = swin_geometry(n, params)
    table = bias_table(heads, g["win"], int(params["seed"]), float(params["bias_std"]), str(device), dtype)
    _, pos, offset = _tables(n, params, device)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + table[h, pos[q_idx] - pos[kv_idx] + offset]

    def dense_bias(rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return table[:, pos[rows][:, None] - pos[keys][None, :] + offset]  # [H, R, M]

    return score_mod, dense_bias


SWIN = register_pattern(Pattern(
    name="swin", family="window", make_mask=_swin_mask, make_bias=_swin_bias, causal=False, grid=True,
    defaults={"window": 8, "shift": True, "grid": None, "seed": 0, "bias_std": 0.02},
    doc="Swin (shifted) M x M windows on an H x W grid with relative-position bias",
    paper="Liu et al. 2021, Swin Transformer",
))


# ---------------------------------------------------------------------------------------------
# swin@blocked: the windows as a batch of small dense attentions, O(n M^2 d), never n x n.
# ---------------------------------------------------------------------------------------------
@_normal_tensors  # cached tensors must not be inference tensors (a later autograd call reuses them)
@functools.lru_cache(maxsize=64)
def _window_plan(n: int, h: int, w: int, win: int, shift: int, hp: int, wp: int, device: str):
    """Index maps and the region mask for one geometry (cached: they depend on shape only).

    Window layout: slot p = window * T + t (T = M*M, windows in raster order over the shifted,
    padded hp x wp grid, t raster order inside the window). Returns

    * ``src`` [nW*T] long: the token each slot holds (pad slots alias token 0; they are masked
      as keys and their query rows are discarded, so the alias never reaches a result),
    * ``dst`` [n] long: the slot each token lands in (the inverse map, for the window reverse),
    * ``blocked`` [nW, 1, T, T] bool: True where query slot i may NOT attend key slot j
      (different Swin region, or j a pad slot; a pad query keeps its own diagonal so that its
      softmax row stays finite), or None when nothing is blocked (no shift, no padding),
    * ``rel`` [T, T] long: Swin's relative_position_index into the (2M-1)^2 bias table.
    """
    dev = torch.device(device)
    T = win * win
    # Shifted padded grid (R, C) holds the padded-grid position ((R + s) % hp, (C + s) % wp):
    # torch.roll(x, shifts=-s) moves position r to r - s.
    R = torch.arange(hp, device=dev)[:, None].expand(hp, wp)
    C = torch.arange(wp, device=dev)[None, :].expand(hp, wp)
    r, c = (R + shift) % hp, (C + shift) % wp
    real = (r < h) & (c < w)
    tok = torch.where(real, r * w + c, torch.zeros_like(r))
    label = _region(R, hp, win, shift) * 3 + _region(C, wp, win, shift)

    def partition(x):  # [hp, wp] -> [nW, T]
        return x.reshape(hp // win, win, wp // win, win).permute(0, 2, 1, 3).reshape(-1, T)

    src, real_w, label_w = partition(tok), partition(real), partition(label)
    nslots = src.numel()
    src = src.reshape(-1)
    dst = torch.empty(n, dtype=torch.long, device=dev)
    slots = torch.arange(nslots, device=dev)
    dst[src[real_w.reshape(-1)]] = slots[real_w.reshape(-1)]
    allowed = (label_w[:, :, None] == label_w[:, None, :]) & real_w[:, None, :]
    allowed |= torch.eye(T, dtype=torch.bool, device=dev)
    # relative_position_index as in Swin: coords [2, T], (q - k) + M - 1, row * (2M - 1) + col
    coords = torch.stack(torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")).flatten(1)
    d = coords[:, :, None] - coords[:, None, :] + (win - 1)
    rel = (d[0] * (2 * win - 1) + d[1]).to(dev)
    blocked = (~allowed).unsqueeze(1)
    return src, dst, (blocked if bool(blocked.any()) else None), rel


def swin_blocked(q, k, v, *, causal=False, state=None, need_weights=False, **params) -> AttnOutput:
    """q [B, H, n, D], k/v [B, Hkv, n, D] on the pattern's H x W grid -> out [B, H, n, D].

    Gather every token into its window slot (one index_select does the grid reshape, the pad to
    multiples of M, the roll by -s and the window partition), attend inside each M x M window
    with the relative-position bias and Swin's region mask, and gather back (window reverse,
    roll by +s, unpad). GQA: the G query heads of a K/V head are stacked along the window's
    query rows, so K and V are used as they are. Scores are [B, Hkv, nW, G*M^2, M^2]: O(n M^2).
    """
    b, heads, n, d = q.shape
    hkv = k.shape[1]
    if causal:
        raise Unsupported("swin@blocked: Swin attention is not causal")
    if k.shape[2] != n or v.shape[2] != n:
        raise Unsupported(f"swin@blocked: self-attention on a grid only (N = {n}, M = {k.shape[2]})")
    if heads % hkv:
        raise ValueError(f"heads={heads} is not a multiple of kv_heads={hkv}")
    g = swin_geometry(n, params)
    win, grp = g["win"], heads // hkv
    T = win * win
    src, dst, blocked, rel = _window_plan(n, g["h"], g["w"], win, g["shift"], g["hp"], g["wp"], str(q.device))
    nw = src.numel() // T
    # q: [B, Hkv, G, n, D] -> slots [B, Hkv, nW, G, T, D] -> [B, Hkv, nW, G*T, D]
    qw = q.reshape(b, hkv, grp, n, d).index_select(3, src).reshape(b, hkv, grp, nw, T, d)
    qw = qw.transpose(2, 3).reshape(b, hkv, nw, grp * T, d)
    kw = k.index_select(2, src).reshape(b, hkv, nw, T, d)
    vw = v.index_select(2, src).reshape(b, hkv, nw, T, d)
    table = bias_table(heads, win, int(params["seed"]), float(params["bias_std"]), str(q.device), q.dtype)
    bias = table[:, rel].view(hkv, 1, grp, T, T)  # query head kv * G + g
    s = torch.matmul(qw, kw.transpose(-1, -2))  # [B, Hkv, nW, G*T, T]
    # bias + scale * scores in one op; the result is no view, so the masked fill can be in place
    # (in place on a view of s would make autograd copy the scores once per op in backward).
    s = torch.add(bias, s.view(b, hkv, nw, grp, T, T), alpha=1.0 / math.sqrt(d))
    if blocked is not None:
        s.masked_fill_(blocked, float("-inf"))
    p = torch.softmax(s, dim=-1).view(b, hkv, nw, grp * T, T)
    del s
    ow = torch.matmul(p, vw)  # [B, Hkv, nW, G*T, D]
    # window reverse + roll back + unpad: token t of head (kv, g) is slot dst[t] of group g
    ow = ow.reshape(b, hkv, nw, grp, T, d).transpose(2, 3).reshape(b, hkv, grp, nw * T, d)
    out = ow.index_select(3, dst).reshape(b, heads, n, d)
    return AttnOutput(out=out)


def _padded_positions(shape: Shape) -> tuple[int, int]:
    g = swin_geometry(shape.seq_len, dict(SWIN.defaults))
    return g["hp"] * g["wp"], g["win"] * g["win"]


def swin_blocked_flops(shape: Shape) -> float:
    """FLOPs done: 4 D per computed (query slot, key slot) pair, pad slots included."""
    slots, t = _padded_positions(shape)
    return 4.0 * shape.batch * shape.heads * shape.head_dim * slots * t


def swin_blocked_bytes(shape: Shape) -> float:
    """Peak extra bytes: two score-sized buffers (scores, probabilities), the gathered q/k/v,
    the windowed and final outputs; the cached mask and bias are small."""
    slots, t = _padded_positions(shape)
    e, bh = shape.element_size, shape.batch * shape.heads
    scores = 2.0 * bh * slots * t * e
    tensors = (2.0 * bh + 2.0 * shape.batch * shape.kv_heads) * slots * shape.head_dim * e
    return scores + tensors + bh * shape.seq_len * shape.head_dim * e


add(VariantSpec(
    name="swin@blocked", forward=swin_blocked, family="window", exact=True, reference="swin",
    defaults=dict(SWIN.defaults), causal=False, cross=False, time="O(n M^2 d)", memory="O(n M^2)",
    flops_fn=swin_blocked_flops, memory_fn=swin_blocked_bytes, default=True,
    doc="Swin (shifted) M x M windows with relative-position bias; windows gathered into a batch "
        "of M^2 x M^2 dense attentions (pad + roll + partition as one index map), pure PyTorch",
    paper="Liu et al. 2021, Swin Transformer",
))
