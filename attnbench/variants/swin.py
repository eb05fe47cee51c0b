"""swin@blocked: Swin's (shifted) windows as a batch of small dense attentions, O(n M^2 d).

The pattern (grid, window, shift, regions, relative-position bias) is defined in
``attnbench/patterns/swin.py``; this kernel gathers every token into its window slot with one
index map (grid reshape, pad to multiples of M, roll by -s, window partition), attends inside
each M x M window with the bias and Swin's region mask, and gathers back. Never n x n.
"""
from __future__ import annotations

import functools
import math

import torch

from attnbench.cache import normal_tensors
from attnbench.case import Shape, Unsupported
from attnbench.patterns import SWIN
from attnbench.patterns.swin import region, swin_geometry, table_for
from attnbench.registry import AttnOutput, VariantSpec, add
from attnbench.variants.masked import pattern_kernel_fields, pattern_reasons


# ---------------------------------------------------------------------------------------------
# swin@blocked: the windows as a batch of small dense attentions, O(n M^2 d), never n x n.
# ---------------------------------------------------------------------------------------------
@normal_tensors  # cached tensors must not be inference tensors (a later autograd call reuses them)
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
    label = region(R, hp, win, shift) * 3 + region(C, wp, win, shift)

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


def swin_blocked(q, k, v, *, causal=False, state=None, need_weights=False, bias_table=None,
                 **params) -> AttnOutput:
    """q [B, H, n, D], k/v [B, Hkv, n, D] on the pattern's H x W grid -> out [B, H, n, D].
    ``bias_table`` [H, (2M-1)^2]: a model's learned table instead of the seeded one (its
    gradient flows back through the gather below).

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
    qw = q.reshape(b, hkv, grp, n, d).index_select(3, src).reshape(b, hkv, grp, nw, T, d)  # [B, Hkv, G, nW, T, D]
    qw = qw.transpose(2, 3).reshape(b, hkv, nw, grp * T, d)  # [B, Hkv, nW, G*T, D]
    kw = k.index_select(2, src).reshape(b, hkv, nw, T, d)  # [B, Hkv, nW, T, D]
    vw = v.index_select(2, src).reshape(b, hkv, nw, T, d)  # [B, Hkv, nW, T, D]
    table = table_for(n, heads, params, q.device, q.dtype, bias_table)  # [H, (2M-1)^2]
    bias = table[:, rel].view(hkv, 1, grp, T, T)  # [Hkv, 1, G, T, T]: query head kv * G + g
    s = torch.matmul(qw, kw.transpose(-1, -2))  # [B, Hkv, nW, G*T, T]
    # bias + scale * scores in one op; the result is no view, so the masked fill can be in place
    # (in place on a view of s would make autograd copy the scores once per op in backward).
    s = torch.add(bias, s.view(b, hkv, nw, grp, T, T), alpha=1.0 / math.sqrt(d))  # [B, Hkv, nW, G, T, T]
    if blocked is not None:
        s.masked_fill_(blocked, float("-inf"))
    p = torch.softmax(s, dim=-1).view(b, hkv, nw, grp * T, T)  # [B, Hkv, nW, G*T, T]
    del s
    ow = torch.matmul(p, vw)  # [B, Hkv, nW, G*T, D]
    # window reverse + roll back + unpad: token t of head (kv, g) is slot dst[t] of group g
    ow = ow.reshape(b, hkv, nw, grp, T, d).transpose(2, 3).reshape(b, hkv, grp, nw * T, d)  # [B, Hkv, G, nW*T, D]
    out = ow.index_select(3, dst).reshape(b, heads, n, d)  # [B, H, n, D]
    return AttnOutput(out=out)


def _padded_positions(shape: Shape, params) -> tuple[int, int]:
    g = swin_geometry(shape.seq_len, params)
    return g["hp"] * g["wp"], g["win"] * g["win"]


def swin_blocked_flops(shape: Shape, params) -> float:
    """FLOPs done: 4 D per computed (query slot, key slot) pair, pad slots included."""
    slots, t = _padded_positions(shape, params)
    return 4.0 * shape.batch * shape.heads * shape.head_dim * slots * t


def swin_blocked_bytes(shape: Shape, params) -> float:
    """Peak extra bytes: two score-sized buffers (scores, probabilities), the gathered q/k/v,
    the windowed and final outputs; the cached mask and bias are small. With autograd the
    probabilities and gathered tensors are saved and the backward makes about as much again."""
    slots, t = _padded_positions(shape, params)
    e, bh = shape.element_size, shape.batch * shape.heads
    scores = 2.0 * bh * slots * t * e
    tensors = (2.0 * bh + 2.0 * shape.batch * shape.kv_heads) * slots * shape.head_dim * e
    fwd = scores + tensors + bh * shape.seq_len * shape.head_dim * e
    return 2.0 * fwd if shape.needs_grad else fwd


add(VariantSpec(
    name="swin@blocked", forward=swin_blocked, time="O(n M^2 d)", memory="O(n M^2)", default=True,
    memory_fn=swin_blocked_bytes, extra_reasons=lambda s, p: pattern_reasons(SWIN, s, p),
    doc="Swin (shifted) M x M windows with relative-position bias; windows gathered into a batch "
        "of M^2 x M^2 dense attentions (pad + roll + partition as one index map), pure PyTorch",
    **{**pattern_kernel_fields(SWIN), "flops_fn": swin_blocked_flops},
))
