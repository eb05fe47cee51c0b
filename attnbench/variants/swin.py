"""swin@blocked: Swin's (shifted) windows as a batch of small dense attentions, O(n M^2 d).

The pattern (grid, window, shift, regions, relative-position bias) is defined in
``attnbench/patterns/swin.py``; this kernel gathers every token into its window slot with one
index map (grid reshape, pad to multiples of M, roll by -s, window partition), attends inside
each M x M window with the bias and Swin's region mask, and gathers back. Never n x n. With
autograd all windows run at once; without it, chunks of windows of one head at a time, so that
nothing the size of q, k or v is allocated but the output.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from attnbench.cache import normal_tensors
from attnbench.case import Shape, Unsupported
from attnbench.engines import pages
from attnbench.patterns import SWIN
from attnbench.patterns.swin import region, swin_geometry, table_for
from attnbench.registry import AttnOutput, VariantSpec, add
from attnbench.variants.masked import pattern_kernel_fields, pattern_reasons


# ---------------------------------------------------------------------------------------------
# swin@blocked: the windows as a batch of small dense attentions, O(n M^2 d), never n x n.
# ---------------------------------------------------------------------------------------------
# Without autograd, each head's windows run in chunks of about CHUNK_BYTES of working set
# (gathered q, k, v, scores, outputs) through buffers allocated once, into one head's slots that
# one gather puts in token order: gathering the whole sequence into window slots at once made
# 3 x 32 MiB copies and [nW, H, M^2, M^2] scores at n = 16384, fresh allocations above glibc's
# 32 MiB mmap threshold that page-fault on every call (exponent 1.55 over n = 2048..16384).
CHUNK_BYTES = 4 << 20  # per head: 1..8 MiB equally fast on a 2-core EPYC; few chunks, few ops
CUDA_CHUNK_BYTES = 256 << 20  # on a GPU a chunk only bounds memory: few, large launches


def _windows_per_chunk(nw: int, T: int, d: int, e: int, device) -> int:
    """Windows per chunk: gathered q, k, v, scores and outputs of one head within the chunk bytes."""
    limit = CHUNK_BYTES if torch.device(device).type == "cpu" else CUDA_CHUNK_BYTES
    return max(1, min(nw, limit // (e * T * (4 * d + T))))


class WindowPlan(NamedTuple):
    """Index maps and masks of one geometry, in window layout: slot p = window * T + t (T = M*M,
    windows in raster order over the shifted, padded hp x wp grid, t raster order inside)."""

    src: torch.Tensor  # [nW T] the token each slot holds (pad slots alias token 0: masked as
    #                    keys, their query rows discarded, so the alias never reaches a result)
    dst: torch.Tensor  # [n] the slot each token lands in (the window reverse)
    blocked: torch.Tensor | None  # [nW, 1, T, T] True where query slot i may NOT attend key
    #   slot j (another Swin region, or j a pad slot; a pad query keeps its diagonal so that its
    #   softmax row stays finite); None when nothing is blocked (no shift, no padding)
    rel: torch.Tensor  # [T, T] Swin's relative_position_index into the (2M-1)^2 bias table
    kind: torch.Tensor  # [nW] which of the K distinct blocked patterns each window has
    patterns: torch.Tensor  # [K, T, T] those patterns (K = 1, all False, when nothing is blocked)


@normal_tensors  # cached tensors must not be inference tensors (a later autograd call reuses them)
@functools.lru_cache(maxsize=64)
def _window_plan(n: int, h: int, w: int, win: int, shift: int, hp: int, wp: int, device: str) -> WindowPlan:
    """The :class:`WindowPlan` of one geometry (cached: it depends on shape only)."""
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

    src, real_w, label_w = partition(tok), partition(real), partition(label)  # [nW, T] each
    src, real_s = src.reshape(-1), real_w.reshape(-1)  # [nW T]
    dst = torch.empty(n, dtype=torch.long, device=dev)
    dst[src[real_s]] = torch.arange(src.numel(), device=dev)[real_s]
    allowed = (label_w[:, :, None] == label_w[:, None, :]) & real_w[:, None, :]  # [nW, T, T]
    allowed |= torch.eye(T, dtype=torch.bool, device=dev)
    patterns, kind = torch.unique(~allowed, dim=0, return_inverse=True)  # [K, T, T], [nW]
    # relative_position_index as in Swin: coords [2, T], (q - k) + M - 1, row * (2M - 1) + col
    coords = torch.stack(torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")).flatten(1)
    d = coords[:, :, None] - coords[:, None, :] + (win - 1)
    rel = (d[0] * (2 * win - 1) + d[1]).to(dev)
    blocked = (~allowed).unsqueeze(1)  # [nW, 1, T, T]
    return WindowPlan(src, dst, blocked if bool(blocked.any()) else None, rel, kind, patterns)


def _check(q, k, v, causal) -> None:
    n, heads, hkv = q.shape[2], q.shape[1], k.shape[1]
    if causal:
        raise Unsupported("swin@blocked: Swin attention is not causal")
    if k.shape[2] != n or v.shape[2] != n:
        raise Unsupported(f"swin@blocked: self-attention on a grid only (N = {n}, M = {k.shape[2]})")
    if heads % hkv:
        raise ValueError(f"heads={heads} is not a multiple of kv_heads={hkv}")


def swin_blocked(q, k, v, *, causal=False, state=None, need_weights=False, bias_table=None,
                 **params) -> AttnOutput:
    """q [B, H, n, D], k/v [B, Hkv, n, D] on the pattern's H x W grid -> out [B, H, n, D].
    ``bias_table`` [H, (2M-1)^2]: a model's learned table instead of the seeded one (its
    gradient flows back through the gather below).

    Every token has a window slot (one index map does the grid reshape, the pad to multiples of
    M, the roll by -s and the window partition); each M x M window attends inside itself with
    the relative-position bias and Swin's region mask; the slots map back (window reverse, roll
    by +s, unpad). Without autograd: window chunks per head (:func:`_windows_chunked`); with it,
    all windows at once (:func:`_windows_autograd`). Scores O(n M^2), never n x n.
    """
    _check(q, k, v, causal)
    n = q.shape[2]
    g = swin_geometry(n, params)
    plan = _window_plan(n, g["h"], g["w"], g["win"], g["shift"], g["hp"], g["wp"], str(q.device))
    table = table_for(n, q.shape[1], params, q.device, q.dtype, bias_table)  # [H, (2M-1)^2]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, table))
    run = _windows_autograd if grad else _windows_chunked
    return AttnOutput(out=run(q, k, v, plan, table[:, plan.rel]))  # bias [H, T, T]


def _windows_chunked(q, k, v, plan: WindowPlan, bias) -> torch.Tensor:
    """Inference: for each (batch, head), chunks of windows gathered into buffers allocated once,
    scores with bias and mask in one baddbmm, softmax in place, outputs into the head's slots;
    then one gather puts the head's slots in token order (a gather is ~4x faster than a scatter
    on CPU, and dst skips the pad slots)."""
    b, heads, n, d = q.shape
    grp, T = heads // k.shape[1], plan.rel.shape[0]
    nw, dev, dt = plan.src.numel() // T, q.device, q.dtype
    cw = _windows_per_chunk(nw, T, d, q.element_size(), dev)
    # bias + mask of each head and pattern: -inf where blocked (every row keeps its diagonal)
    masked = bias.unsqueeze(1).masked_fill(plan.patterns, float("-inf"))  # [H, K, T, T]
    out = pages.empty(b, heads, n, d, dtype=dt, device=dev)  # [B, H, n, D]
    qb, kb, vb = (torch.empty(cw * T, d, dtype=dt, device=dev) for _ in range(3))
    sb = torch.empty(cw, T, T, dtype=dt, device=dev)
    slots = torch.empty(nw * T, d, dtype=dt, device=dev)  # one head's outputs in window layout
    for bi in range(b):
        for hi in range(heads):  # heads x window chunks: few, each a batch of windows
            qh, kh, vh = q[bi, hi], k[bi, hi // grp], v[bi, hi // grp]  # [n, D] each
            for w0 in range(0, nw, cw):
                m = min(nw, w0 + cw) - w0
                idx = plan.src[w0 * T:(w0 + m) * T]  # [m T]
                qc = torch.index_select(qh, 0, idx, out=qb[:m * T]).view(m, T, d)  # [m, T, D]
                kc = torch.index_select(kh, 0, idx, out=kb[:m * T]).view(m, T, d)  # [m, T, D]
                vc = torch.index_select(vh, 0, idx, out=vb[:m * T]).view(m, T, d)  # [m, T, D]
                s = torch.index_select(masked[hi], 0, plan.kind[w0:w0 + m], out=sb[:m])  # [m, T, T]
                torch.baddbmm(s, qc, kc.transpose(1, 2), alpha=1.0 / math.sqrt(d), out=s)
                torch.softmax(s, dim=-1, out=s)
                torch.bmm(s, vc, out=slots[w0 * T:(w0 + m) * T].view(m, T, d))  # [m, T, D]
            torch.index_select(slots, 0, plan.dst, out=out[bi, hi])  # [n, D]: window reverse
    return out


def _windows_autograd(q, k, v, plan: WindowPlan, bias) -> torch.Tensor:
    """Differentiable: every window at once. GQA: the G query heads of a K/V head are stacked
    along the window's query rows, so K and V are used as they are. Scores are
    [B, Hkv, nW, G*M^2, M^2]: O(n M^2)."""
    b, heads, n, d = q.shape
    hkv, T = k.shape[1], plan.rel.shape[0]
    grp, nw, src = heads // hkv, plan.src.numel() // T, plan.src
    # q: [B, Hkv, G, n, D] -> slots [B, Hkv, nW, G, T, D] -> [B, Hkv, nW, G*T, D]
    qw = q.reshape(b, hkv, grp, n, d).index_select(3, src).reshape(b, hkv, grp, nw, T, d)  # [B, Hkv, G, nW, T, D]
    qw = qw.transpose(2, 3).reshape(b, hkv, nw, grp * T, d)  # [B, Hkv, nW, G*T, D]
    kw = k.index_select(2, src).reshape(b, hkv, nw, T, d)  # [B, Hkv, nW, T, D]
    vw = v.index_select(2, src).reshape(b, hkv, nw, T, d)  # [B, Hkv, nW, T, D]
    bias = bias.view(hkv, 1, grp, T, T)  # [Hkv, 1, G, T, T]: query head kv * G + g
    s = torch.matmul(qw, kw.transpose(-1, -2))  # [B, Hkv, nW, G*T, T]
    # bias + scale * scores in one op; the result is no view, so the masked fill can be in place
    # (in place on a view of s would make autograd copy the scores once per op in backward).
    s = torch.add(bias, s.view(b, hkv, nw, grp, T, T), alpha=1.0 / math.sqrt(d))  # [B, Hkv, nW, G, T, T]
    if plan.blocked is not None:
        s.masked_fill_(plan.blocked, float("-inf"))
    p = torch.softmax(s, dim=-1).view(b, hkv, nw, grp * T, T)  # [B, Hkv, nW, G*T, T]
    del s
    ow = torch.matmul(p, vw)  # [B, Hkv, nW, G*T, D]
    # window reverse + roll back + unpad: token t of head (kv, g) is slot dst[t] of group g
    ow = ow.reshape(b, hkv, nw, grp, T, d).transpose(2, 3).reshape(b, hkv, grp, nw * T, d)  # [B, Hkv, G, nW*T, D]
    return ow.index_select(3, plan.dst).reshape(b, heads, n, d)  # [B, H, n, D]


def _padded_positions(shape: Shape, params) -> tuple[int, int]:
    g = swin_geometry(shape.seq_len, params)
    return g["hp"] * g["wp"], g["win"] * g["win"]


def swin_blocked_flops(shape: Shape, params) -> float:
    """FLOPs done: 4 D per computed (query slot, key slot) pair, pad slots included."""
    slots, t = _padded_positions(shape, params)
    return 4.0 * shape.batch * shape.heads * shape.head_dim * slots * t


def swin_blocked_bytes(shape: Shape, params) -> float:
    """Peak extra bytes. Without autograd: the output, one head's outputs in window layout and
    one chunk's buffers (gathered q, k, v and scores); the cached maps and masks are small.
    With autograd: two score-sized buffers (scores, probabilities), the gathered q/k/v, the
    windowed and final outputs, all saved, and the backward makes about as much again."""
    slots, t = _padded_positions(shape, params)
    e, bh, d = shape.element_size, shape.batch * shape.heads, shape.head_dim
    if not shape.needs_grad:
        cw = _windows_per_chunk(slots // t, t, d, e, shape.device)
        return float(e * (bh * shape.seq_len * d + slots * d + cw * t * (3 * d + t)))
    scores = 2.0 * bh * slots * t * e
    tensors = (2.0 * bh + 2.0 * shape.batch * shape.kv_heads) * slots * d * e
    return 2.0 * (scores + tensors + bh * shape.seq_len * d * e)


add(VariantSpec(
    name="swin@blocked", forward=swin_blocked, time="O(n M^2 d)", memory="O(n M^2)", default=True,
    memory_fn=swin_blocked_bytes, extra_reasons=lambda s, p: pattern_reasons(SWIN, s, p),
    doc="Swin (shifted) M x M windows with relative-position bias; windows gathered into a batch "
        "of M^2 x M^2 dense attentions (pad + roll + partition as one index map), pure PyTorch",
    **{**pattern_kernel_fields(SWIN), "flops_fn": swin_blocked_flops},
))
