"""Transformer-XL: segment-level recurrence with relative positional attention (Dai et al. 2019).

``xl@segment`` cuts the key axis into segments of ``segment_len`` (L) positions and streams
them in order. The queries of a segment attend, causally, to

    [memory: the last ``mem_len`` (P) keys/values before the segment ; the segment's own keys]

with the paper's relative score (its terms (a) + (b) + (c) + (d), regrouped as in the paper's
code)

    s(i, j) = [(q_i + u) . k_j  +  (q_i + v_bias) . (W_r R_{i-j})] / sqrt(D)

where R_d is the sinusoidal encoding of the distance d = i - j (dimension ``d_pos``, default the
model width H D, laid out [sin | cos] as in the official code), W_r [H, d_pos, D] a per-head
projection, u and v_bias [H, D] per-head biases. By default these three are stand-ins for
learned parameters, drawn deterministically from ``seed`` (u, v_bias = 0.1 randn; W_r = randn /
sqrt(d_pos)) and fixed per (H, D, d_pos, seed), their W_r R table cached (the benchmark path). A
model passes its own learned tensors instead (``u=``, ``v_bias=``, ``w_r=``, the spec's
``learned``): gradients then flow into them, and the W_r R table is computed per call.

Memory carries no gradient (the paper's stop-gradient SG(.)): the scores and outputs of a
segment depend on earlier segments' keys and values only through detached copies. The
returned ``state`` (:class:`XLMemory`) holds the last P keys/values, detached; passing it to
the next call continues the stream, so calls on consecutive segment-aligned chunks equal one
call on the whole sequence.

Position conventions (as the rest of the suite): query i sits at key position t = i + M - N
(bottom-right aligned), so N == M is the usual sequence and one decode query against M keys is
the newest token; it is processed within its own segment only (O((L + P) D) work, whatever M).
Segments are counted from the first key of the call; memory from ``state`` sits before it.

Causal by construction: a non-causal case is unsupported (reason given), never silently
computed as causal.

Kernel (pure PyTorch, autograd for the backward). Segments are processed in chunks of equal
shape (the stream's first segments, whose memory is not full yet, apart); per segment and head:
(q + u) against the [memory ; own] key window gives the [Lq, P + L] content scores;
(q + v_bias) against the W_r R table of the window's distances gives [Lq, P + L + 1] position
scores, with the whole mask folded into that GEMM as a 0 / -inf C input; the pad-and-reshape
relative shift (a view: the extra distance column is the pad) aligns them with the keys; add,
softmax, one GEMM with the value window. Without autograd (the timed forward) this runs per
(batch, K/V head) on ``unfold`` views of K and V and into buffers allocated once, the scores
of a chunk cache-sized; with autograd, all heads at once with the memory part of each window
detached. Nothing N x N is formed: time O(N (L + P) D); memory O(N (L + P)) with autograd,
O(N D) plus CHUNK_BYTES without.
"""
from __future__ import annotations

import functools
import math
import operator
from typing import NamedTuple

import torch
import torch.nn.functional as F

from attnbench import params as P
from attnbench.case import Shape, Unsupported
from attnbench.registry import AttnOutput, VariantSpec, add

DEFAULTS = {"segment_len": 512, "mem_len": 512, "seed": 0, "d_pos": None}
CHUNK_BYTES = 4 << 20  # bytes of scores per K/V head per chunk of segments (cache-sized)
CAUSAL_ONLY = ("Transformer-XL is causal by construction (segment-level recurrence over past "
               "segments); run it with causal=True / --causal")


class XLMemory(NamedTuple):
    """The recurrent state: keys and values of the last ``mem_len`` positions, detached.

    k, v: [B, Hkv, P', D] with P' <= mem_len (fewer while the stream is shorter).
    """

    k: torch.Tensor
    v: torch.Tensor


# ---------------------------------------------------------------------------------------------
# Parameters and validation
# ---------------------------------------------------------------------------------------------
def _int_param(name: str, value, minimum: int) -> int:
    """``value`` as an int >= minimum, or ValueError naming the value and what is allowed."""
    what = "a positive integer (>= 1)" if minimum == 1 else f"an integer >= {minimum}"
    try:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        iv = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {what}, got {value!r}") from None
    if iv < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return iv


def _validate(segment_len, mem_len, d_pos, heads: int, head_dim: int) -> tuple[int, int, int]:
    L = _int_param("segment_len", segment_len, 1)
    P = _int_param("mem_len", mem_len, 0)
    dp = heads * head_dim if d_pos is None else _int_param("d_pos", d_pos, 1)
    return L, P, dp


def _normal_tensors(fn):
    """Cached constants are built outside inference mode: an inference tensor cannot be saved
    for a later autograd call that reuses it."""
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        with torch.inference_mode(False), torch.no_grad():
            return fn(*args, **kw)

    return wrapper


@functools.lru_cache(maxsize=16)
@_normal_tensors
def _params64(heads: int, head_dim: int, d_pos: int, seed: int):
    """(u [H, D], v_bias [H, D], W_r [H, d_pos, D]) in float64 on the CPU, fixed per arguments.

    u and v_bias are drawn first, so they do not depend on d_pos."""
    g = torch.Generator().manual_seed(int(seed))
    u = 0.1 * torch.randn(heads, head_dim, generator=g, dtype=torch.float64)
    vb = 0.1 * torch.randn(heads, head_dim, generator=g, dtype=torch.float64)
    # 1/sqrt(d_pos): W_r R_d then has entries of variance ~1/2, like a unit-scale key, so the
    # position term (b)+(d) and the content term (a)+(c) weigh alike after the 1/sqrt(D).
    wr = torch.randn(heads, d_pos, head_dim, generator=g, dtype=torch.float64) / math.sqrt(d_pos)
    return u, vb, wr


def xl_parameters(heads: int, head_dim: int, *, seed: int = 0, d_pos: int | None = None,
                  dtype=torch.float64, device="cpu"):
    """The stand-in learned parameters: (u [H, D], v_bias [H, D], W_r [H, d_pos, D])."""
    dp = heads * head_dim if d_pos is None else int(d_pos)
    return tuple(t.to(dtype=dtype, device=device) for t in _params64(heads, head_dim, dp, int(seed)))


def xl_learned(heads: int, head_dim: int, params) -> dict[str, torch.Tensor]:
    """The spec's ``learned``: initial values of a model's own u, v_bias [H, D] and W_r
    [H, d_pos, D], the seed's stand-ins (fresh float64 copies; the cache is never handed out)."""
    u, vb, wr = xl_parameters(heads, head_dim, seed=int(params["seed"]), d_pos=params["d_pos"])
    return {"u": u.clone(), "v_bias": vb.clone(), "w_r": wr.clone()}


def _given(u, v_bias, w_r, heads: int, head_dim: int, d_pos: int) -> None:
    """Given learned tensors must have the shapes the case implies (ValueError otherwise)."""
    want = {"u": (heads, head_dim), "v_bias": (heads, head_dim), "w_r": (heads, d_pos, head_dim)}
    for name, t in (("u", u), ("v_bias", v_bias), ("w_r", w_r)):
        if t is not None and tuple(t.shape) != want[name]:
            raise ValueError(f"{name} must be {list(want[name])} (H, {'d_pos, ' if name == 'w_r' else ''}D), "
                             f"got {list(t.shape)}")


def _rk_desc(w_r: torch.Tensor, d_pos: int, nd: int, dtype) -> torch.Tensor:
    """:func:`_rk_desc64` from a given (learned) W_r, per call and differentiable: [H, nd, D]."""
    r = sinusoid(torch.arange(nd - 1, -1, -1), d_pos).to(device=w_r.device, dtype=w_r.dtype)  # [nd, d_pos]
    return torch.einsum("tp,hpd->htd", r, w_r).to(dtype)  # [H, nd, D]


def sinusoid(dist: torch.Tensor, d_pos: int) -> torch.Tensor:
    """Sinusoidal encodings R_d of distances ``dist`` [T] -> [T, d_pos] (float64).

    The official layout: [sin(d f_0), .., sin(d f_{k-1}), cos(d f_0), ..] with
    f_m = 10000^(-2m / d_pos) (an odd d_pos drops the last cosine)."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d_pos, 2, dtype=torch.float64) / d_pos))
    x = dist.to(torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([x.sin(), x.cos()], dim=-1)[:, :d_pos]


@functools.lru_cache(maxsize=16)
@_normal_tensors
def _rk_desc64(heads: int, head_dim: int, d_pos: int, seed: int, nd: int) -> torch.Tensor:
    """W_r R_d for the distances d = nd-1, ..., 1, 0 (descending, the order the relative shift
    wants): [H, nd, D] float64. The distances of a window of width W are its last W rows."""
    _, _, wr = _params64(heads, head_dim, d_pos, seed)
    r = sinusoid(torch.arange(nd - 1, -1, -1), d_pos)  # [nd, d_pos]
    return torch.einsum("tp,hpd->htd", r, wr).contiguous()


@functools.lru_cache(maxsize=32)
@_normal_tensors
def _consts(heads, head_dim, d_pos, seed, nd, dtype, device):
    """(u, v_bias, W_r R descending) at the kernel's dtype and device."""
    u, vb, _ = _params64(heads, head_dim, d_pos, seed)
    rk = _rk_desc64(heads, head_dim, d_pos, seed, nd)
    return tuple(t.to(dtype=dtype, device=device) for t in (u, vb, rk))


# ---------------------------------------------------------------------------------------------
# The relative shift
# ---------------------------------------------------------------------------------------------
def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Align position scores with key columns: the official ``_rel_shift``, on the last two dims.

    x [..., Lq, W]: x[..., r, t] is query row r's score against the relative encoding of
    distance W - 1 - t (distances descending, as the window's keys ascend). Returns
    y [..., Lq, W] with y[..., r, c] = x[..., r, c + Lq - 1 - r] for every c <= W - Lq + r: the
    score of row r against key column c, whose distance to the row is (W - Lq + r) - c when
    the rows are the window's last Lq positions. Entries above that diagonal are other scores
    (or the zero pad) and must be masked.

    The pad-and-reshape trick: one copy of [Lq, W + 1] (a zero column in front), read back as
    [W + 1, Lq], drop the first row, read as [Lq, W] — a view; nothing larger than the band.
    Dropping leading rows of x does not change the result of the others (the shift is anchored
    on the last row), which lets a chunk start mid-segment.
    """
    return rel_shift_padded(F.pad(x, (1, 0)))


def rel_shift_padded(xp: torch.Tensor) -> torch.Tensor:
    """:func:`rel_shift` of x, given xp = [anything ; x] [..., Lq, W + 1] (contiguous): a view.

    Column 0 of xp is only ever read above the diagonal (masked), so the kernel gets it for
    free by scoring one more distance (W) instead of padding with zeros: no copy at all."""
    *lead, lq, w1 = xp.shape
    return xp.view(*lead, w1, lq)[..., 1:, :].view(*lead, lq, w1 - 1)


# ---------------------------------------------------------------------------------------------
# Plan: segments in chunks of equal shape
# ---------------------------------------------------------------------------------------------
class _Chunk(NamedTuple):
    """Segments s0..s1-1, each contributing its query rows r0..r1-1 (within the segment) and
    reading the window of keys [s L - pm, s L + r1): ``pm`` memory columns then its own keys."""

    s0: int
    s1: int
    r0: int
    r1: int
    pm: int

    @property
    def width(self) -> int:
        return self.pm + self.r1

    def pairs(self) -> int:
        """Scores computed per (batch, head), masked ones included."""
        return (self.s1 - self.s0) * (self.r1 - self.r0) * self.width


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _parts(n: int, m: int, segment_len: int, mem_len: int, mem_avail: int = 0,
           score_row_bytes: int = 0) -> list[tuple[int, int, int, int, int]]:
    """The plan's parts (s0, s1, r0, r1, segments per chunk); :func:`plan` cuts them into chunks.

    Keys 0..M-1 are cut into segments of L; query i sits at t = i + M - N. Segments before the
    first query are skipped (their keys are read as memory only). The first processed segment
    starts at the row of the first query, the last ends at key M - 1; the segments between are
    full and share one shape. ``mem_avail``: memory rows that exist before key 0 (from state).
    ``score_row_bytes``: bytes of one score row entry per K/V head (G x element size) — a
    chunk holds at most CHUNK_BYTES of scores per K/V head (0: one chunk per group).
    """
    L, P = segment_len, mem_len
    if n == 0 or m == 0:
        return []
    off = m - n
    nseg = _cdiv(m, L)
    s_first, a = divmod(off, L)
    l_last = m - (nseg - 1) * L

    def rows(s):
        return (a if s == s_first else 0, l_last if s == nseg - 1 else L)

    # groups of consecutive segments with equal rows: at most first / middle / last
    groups: list[list[int]] = []
    for s0, s1 in ((s_first, s_first + 1), (s_first + 1, nseg - 1), (nseg - 1, nseg)):
        s0 = max(s0, groups[-1][1] if groups else s_first)
        if s1 <= s0:
            continue
        if groups and rows(groups[-1][0]) == rows(s0) == (0, L):
            groups[-1][1] = s1
        else:
            groups.append([s0, s1])
    # the segments whose memory is not yet full (stream start) never share a chunk with the
    # others, whose window would be wider than they need
    s_full = max(0, _cdiv(P - mem_avail, L))
    parts = []
    for s0, s1 in groups:
        if s0 < s_full < s1:
            parts += [(s0, s_full), (s_full, s1)]
        else:
            parts.append((s0, s1))
    out = []
    for s0, s1 in parts:
        r0, r1 = rows(s0)
        per = s1 - s0
        if score_row_bytes:
            per = max(1, min(per, CHUNK_BYTES // max(1, score_row_bytes * (r1 - r0) * (P + r1))))
        out.append((s0, s1, r0, r1, per))
    return out


def _chunk(c0: int, c1: int, r0: int, r1: int, L: int, P: int, mem_avail: int) -> _Chunk:
    # memory columns: as many as the chunk's last segment can have (earlier, fewer exist: masked)
    return _Chunk(c0, c1, r0, r1, min(P, mem_avail + (c1 - 1) * L))


def plan(n: int, m: int, segment_len: int, mem_len: int, mem_avail: int = 0,
         score_row_bytes: int = 0) -> list[_Chunk]:
    """Chunks covering the N query rows in order (:func:`_parts`: the parameters)."""
    return [_chunk(c0, min(s1, c0 + per), r0, r1, segment_len, mem_len, mem_avail)
            for s0, s1, r0, r1, per in _parts(n, m, segment_len, mem_len, mem_avail, score_row_bytes)
            for c0 in range(s0, s1, per)]


def chunk_counts(n: int, m: int, segment_len: int, mem_len: int, mem_avail: int = 0,
                 score_row_bytes: int = 0) -> list[tuple[_Chunk, int]]:
    """:func:`plan` as (chunk, how many chunks of its shape follow it), for the cost model: a
    part's full chunks whose memory is whole (pm = mem_len) differ only in where they start, so
    they are counted, not listed (O(parts + stream-start chunks), not O(n / segment_len))."""
    L, P, out = segment_len, mem_len, []
    for s0, s1, r0, r1, per in _parts(n, m, L, P, mem_avail, score_row_bytes):
        c0 = s0
        while c0 < s1:
            ch = _chunk(c0, min(s1, c0 + per), r0, r1, L, P, mem_avail)
            same = (s1 - c0) // per if ch.pm == P and ch.s1 - ch.s0 == per else 1
            out.append((ch, same))
            c0 += same * per
    return out


# ---------------------------------------------------------------------------------------------
# The kernel
# ---------------------------------------------------------------------------------------------
def _ext_rows(mem: torch.Tensor | None, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start..stop-1 of [zeros ; mem ; x] along dim 2, x at coordinates 0.., mem just
    before it (coordinates -len(mem)..-1), zeros before that. A view when one part suffices."""
    b, h, _, d = x.shape
    ms = 0 if mem is None else mem.shape[2]
    parts = []
    if start < -ms:
        parts.append(x.new_zeros(b, h, min(stop, -ms) - start, d))
    if ms and start < 0 and stop > -ms:
        parts.append(mem[:, :, max(start, -ms) + ms:min(stop, 0) + ms])
    if stop > 0:
        parts.append(x[:, :, max(start, 0):stop])
    return parts[0] if len(parts) == 1 else torch.cat(parts, 2)


def _window(ext: torch.Tensor, ch: _Chunk, L: int) -> torch.Tensor:
    """[B, Hkv, ns, W, D] key (value) windows of the chunk's segments from its rows ``ext``
    (coordinates s0 L - pm ..): memory part detached (no gradient through memory), own part live."""
    ns = ch.s1 - ch.s0
    own = ext[:, :, ch.pm:].unflatten(2, (ns, ch.r1))  # r1 == L whenever ns > 1
    if not ch.pm:
        return own
    mem = ext.detach()[:, :, :(ns - 1) * L + ch.pm].unfold(2, ch.pm, L).transpose(-1, -2)
    return torch.cat([mem, own], 3)


@_normal_tensors
def _pos_bias_uncached(lq: int, w: int, lo: tuple, dtype, device: str) -> torch.Tensor:
    t = torch.arange(w + 1, device=device)[None, None, :]
    first = (lq - torch.arange(lq, device=device))[None, :, None] + torch.tensor(lo, device=device)[:, None, None]
    bias = torch.zeros(len(lo), lq, w + 1, dtype=dtype, device=device)
    return bias.masked_fill_(t < first, float("-inf"))


_pos_bias_cached = functools.lru_cache(maxsize=32)(_pos_bias_uncached)


def _pos_bias(ch: _Chunk, L: int, ms: int, dtype, device) -> torch.Tensor:
    """The chunk's whole mask, as an additive 0 / -inf bias [1 or ns, Lq, W + 1] on the
    position scores *before* the relative shift (it rides on their GEMM as its C input).

    Before the shift, entry (r, t) of a segment's [Lq, W + 1] block (distance W - t) is read
    by the shifted [Lq, W] only at (r, c = t - Lq + r) when t >= Lq - r, and otherwise (t <
    Lq - r) only from the row above, above its diagonal. So -inf at t < Lq - r masks exactly
    the causal upper triangle; and -inf at t < Lq - r + lo masks the window columns c < lo
    whose memory keys do not exist (the stream start: one block per segment)."""
    lq, w = ch.r1 - ch.r0, ch.width
    lo = tuple(max(0, ch.pm - ms - L * s) for s in range(ch.s0, ch.s1))
    if max(lo) == 0:  # the common case: one [1, Lq, W + 1] bias per geometry, kept
        return _pos_bias_cached(lq, w, (0,), dtype, str(device))
    return _pos_bias_uncached(lq, w, lo, dtype, str(device))


def _per_batch(bias: torch.Tensor, x: int, ns: int) -> torch.Tensor:
    """The baddbmm C input for batches (x, segment) flattened: the bias itself when it is one
    block for all segments (broadcast), else its per-segment blocks repeated x times."""
    if bias.shape[0] == 1:
        return bias[0]
    return bias.unsqueeze(0).expand(x, ns, *bias.shape[1:]).reshape(x * ns, *bias.shape[1:])


def _rk_batches(rkw: torch.Tensor, ns: int) -> torch.Tensor:
    """[X, D, W + 1] per-head tables -> [X ns, D, W + 1], each repeated for the ns segments
    (a stride-0 view when X = 1)."""
    x = rkw.shape[0]
    if x == 1:
        return rkw.expand(ns, *rkw.shape[1:])
    return rkw.unsqueeze(1).expand(x, ns, *rkw.shape[1:]).reshape(x * ns, *rkw.shape[1:])


def _rows_of(ch: _Chunk, L: int, off: int) -> tuple[int, int, int, int]:
    """(i0, i1, j0, j1): the chunk's query rows and the key coordinates it reads."""
    return (ch.s0 * L + ch.r0 - off, (ch.s1 - 1) * L + ch.r1 - off,
            ch.s0 * L - ch.pm, (ch.s1 - 1) * L + ch.r1)


def _chunk_out_autograd(q5, k, v, mk, mv, ch: _Chunk, L: int, off: int, u5, vb5, rk, scale):
    """Output rows of one chunk, all heads at once, through autograd: [B, H, ns Lq, D]."""
    B, Hkv, G, _, D = q5.shape
    ns, lq, W = ch.s1 - ch.s0, ch.r1 - ch.r0, ch.width
    i0, i1, j0, j1 = _rows_of(ch, L, off)
    kw = _window(_ext_rows(mk, k, j0, j1), ch, L)  # [B, Hkv, ns, W, D]
    vw = _window(_ext_rows(mv, v, j0, j1), ch, L)
    qs = q5[:, :, :, i0:i1].unflatten(3, (ns, lq))  # [B, Hkv, G, ns, Lq, D]
    # (a)+(c): content scores, the G query heads of a K/V head as rows of one GEMM (K/V are
    # never copied per query head). 1/sqrt(D) rides on the queries.
    qu = torch.add(u5, qs, alpha=scale).permute(0, 1, 3, 2, 4, 5).reshape(B, Hkv, ns, G * lq, D)
    s = torch.matmul(qu, kw.transpose(-1, -2)).view(B, Hkv, ns, G, lq, W)
    # (b)+(d): position scores against the window's distances W .. 0 (one more than needed: the
    # shift's pad column for free), one GEMM per (head, batch) over the chunk's rows, with the
    # mask as the GEMM's C input; then shifted so that column c holds key c's distance.
    H = Hkv * G
    qv = torch.add(vb5, qs, alpha=scale).permute(1, 2, 0, 3, 4, 5).reshape(H * B * ns, lq, D)
    rkw = rk[:, rk.shape[1] - W - 1:].transpose(-1, -2)  # [H, D, W + 1]
    rkw = _rk_batches(rkw, B * ns)  # [H B ns, D, W + 1]
    bias = _pos_bias(ch, L, 0 if mk is None else mk.shape[2], q5.dtype, q5.device)
    bd = torch.baddbmm(_per_batch(bias, H * B, ns), qv, rkw)  # [H B ns, Lq, W + 1]
    bd = rel_shift_padded(bd.view(Hkv, G, B, ns, lq, W + 1))  # [Hkv, G, B, ns, Lq, W]
    # in place: neither the GEMM's nor the add's backward needs its output
    s.add_(bd.permute(2, 0, 3, 1, 4, 5))
    p = torch.softmax(s, dim=-1).view(B, Hkv, ns, G * lq, W)
    o = torch.matmul(p, vw).view(B, Hkv, ns, G, lq, D)
    return o.permute(0, 1, 3, 2, 4, 5).reshape(B, Hkv * G, ns * lq, D)


def _forward_buffered(q5, k, v, mk, mv, chunks, L: int, off: int, u, vb, rk, scale, out):
    """The forward without autograd: per (batch, K/V head) and chunk, written into ``out``.

    Key and value windows are ``unfold`` views of the K/V rows (no copy away from the stream
    start); scores, position scores and the output rows go through ``out=`` into buffers
    allocated once (a fresh large CPU allocation costs a page fault per 4 KiB on first touch);
    one K/V head's chunk (CHUNK_BYTES of scores) stays cache-sized for the softmax passes.
    """
    B, Hkv, G, N, D = q5.shape
    ms = 0 if mk is None else mk.shape[2]
    dims = [(ch.s1 - ch.s0, ch.r1 - ch.r0, ch.width) for ch in chunks]
    sbuf = q5.new_empty(max(ns * G * lq * w for ns, lq, w in dims))
    bdbuf = q5.new_empty(max(ns * G * lq * (w + 1) for ns, lq, w in dims))
    obuf = q5.new_empty(max(ns * G * lq * D for ns, lq, w in dims))
    qbuf = q5.new_empty(2, max(ns * G * lq * D for ns, lq, w in dims))  # (q + u), (q + v_bias)
    out5 = out.view(B, Hkv, G, N, D)
    u3, vb3 = u.view(Hkv, G, 1, D) * scale, vb.view(Hkv, G, 1, D) * scale
    for ch, (ns, lq, W) in zip(chunks, dims):
        i0, i1, j0, j1 = _rows_of(ch, L, off)
        bias = _per_batch(_pos_bias(ch, L, ms, q5.dtype, q5.device), G, ns)  # the mask
        kext, vext = _ext_rows(mk, k, j0, j1), _ext_rows(mv, v, j0, j1)  # [B, Hkv, (ns-1)L + W, D]
        rkw = rk[:, rk.shape[1] - W - 1:].transpose(-1, -2)  # [H, D, W + 1]: distances W .. 0
        s = sbuf[:ns * G * lq * W].view(ns, G * lq, W)
        bd = bdbuf[:G * ns * lq * (W + 1)].view(G * ns, lq, W + 1)
        o = obuf[:ns * G * lq * D].view(ns, G * lq, D)
        for b in range(B):
            for h in range(Hkv):
                kt = kext[b, h].unfold(0, W, L)  # [ns, D, W] view
                vw = vext[b, h].unfold(0, W, L).transpose(1, 2)  # [ns, W, D] view
                qx = q5[b, h, :, i0:i1]  # [G, ns Lq, D]
                # (q + u) / sqrt(D) and (q + v_bias) / sqrt(D), one pass each, contiguous
                qu = torch.add(u3[h], qx, alpha=scale, out=qbuf[0, :G * ns * lq * D].view(G, ns * lq, D))
                qu = qu.view(G, ns, lq, D).transpose(0, 1).reshape(ns, G * lq, D)  # view if G = 1
                torch.bmm(qu, kt, out=s)
                qv = torch.add(vb3[h], qx, alpha=scale, out=qbuf[1, :G * ns * lq * D].view(G, ns * lq, D))
                qv = qv.view(G * ns, lq, D)
                torch.baddbmm(bias, qv, _rk_batches(rkw[h * G:(h + 1) * G], ns), out=bd)
                s.view(ns, G, lq, W).add_(rel_shift_padded(bd.view(G, ns, lq, W + 1)).transpose(0, 1))
                torch.ops.aten._softmax.out(s, -1, False, out=s)  # in place, row-wise
                torch.bmm(s, vw, out=o)
                out5[b, h, :, i0:i1].view(G, ns, lq, D).copy_(o.view(ns, G, lq, D).transpose(0, 1))
    return out


def _state_in(state, mem_len: int, k: torch.Tensor):
    """(mem_k, mem_v) [B, Hkv, P', D] detached, the last mem_len rows of ``state``, or Nones."""
    if state is None or mem_len == 0:
        return None, None
    mk, mv = (state.k, state.v) if isinstance(state, XLMemory) else tuple(state)
    b, h, _, d = k.shape
    for t in (mk, mv):
        if t.dim() != 4 or t.shape[0] != b or t.shape[1] != h or t.shape[3] != d:
            raise ValueError(f"state tensors must be [B={b}, Hkv={h}, P, D={d}], got {tuple(t.shape)}")
    if mk.shape[2] != mv.shape[2]:
        raise ValueError(f"state k and v lengths differ: {mk.shape[2]} vs {mv.shape[2]}")
    ms = min(mk.shape[2], mem_len)
    if ms == 0:
        return None, None
    cast = dict(dtype=k.dtype, device=k.device)
    return mk[:, :, mk.shape[2] - ms:].detach().to(**cast), mv[:, :, mv.shape[2] - ms:].detach().to(**cast)


def _state_out(mk, mv, k, v, mem_len: int) -> XLMemory:
    """The last mem_len rows of [memory ; this call's keys/values], detached copies (a view
    would keep the whole of k and v alive)."""
    m = k.shape[2]
    ms = 0 if mk is None else mk.shape[2]
    start = max(m - mem_len, -ms)
    if mem_len == 0 or start >= m:
        empty = k.new_zeros(k.shape[0], k.shape[1], 0, k.shape[3])
        return XLMemory(empty, empty.clone())
    return XLMemory(_ext_rows(mk, k.detach(), start, m).clone(), _ext_rows(mv, v.detach(), start, m).clone())


def xl_segment(q, k, v, *, causal=True, state=None, need_weights=False,
               segment_len=DEFAULTS["segment_len"], mem_len=DEFAULTS["mem_len"], seed=DEFAULTS["seed"],
               d_pos=DEFAULTS["d_pos"], u=None, v_bias=None, w_r=None) -> AttnOutput:
    """Transformer-XL attention over the sequence in segments with memory.

    q [B, H, N, D], k/v [B, Hkv, M, D] (N <= M; query i at key position i + M - N), H a
    multiple of Hkv. ``state``: an :class:`XLMemory` (or (k, v) pair) from the previous call,
    the memory before key 0. Returns AttnOutput(out [B, H, N, D], state=XLMemory of the last
    ``mem_len`` keys/values, detached). ``u``, ``v_bias`` [H, D], ``w_r`` [H, d_pos, D]: a
    model's learned tensors, replacing the seed's stand-ins (gradients reach them).

    Time O(N (L + P) D), memory O(N (L + P)) with autograd; without, O(N D) plus one chunk of
    scores per K/V head (CHUNK_BYTES). No N x N tensor is formed.
    """
    if not causal:
        raise Unsupported(CAUSAL_ONLY)
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    L, P, dp = _validate(segment_len, mem_len, d_pos, H, D)
    if H % Hkv:
        raise ValueError(f"heads={H} is not a multiple of kv_heads={Hkv}")
    if N > M:
        raise Unsupported(f"xl@segment needs N <= M (queries are the last N of the M positions), got N={N}, M={M}")
    mk, mv = _state_in(state, P, k)
    ms = 0 if mk is None else mk.shape[2]
    new_state = _state_out(mk, mv, k, v, P)
    G = H // Hkv
    chunks = plan(N, M, L, P, ms, score_row_bytes=G * q.element_size())
    if not chunks or B * H == 0:
        return AttnOutput(out=q.new_zeros(q.shape), state=new_state)
    nd = max(ch.width for ch in chunks) + 1  # one distance more: the shift's free pad column
    _given(u, v_bias, w_r, H, D, dp)
    u0, vb0, rk = _consts(H, D, dp, int(seed), nd, q.dtype, str(q.device))
    u = u0 if u is None else u.to(q.dtype)
    vb = vb0 if v_bias is None else v_bias.to(q.dtype)
    rk = rk if w_r is None else _rk_desc(w_r, dp, nd, q.dtype)
    q5 = q.view(B, Hkv, G, N, D)
    scale = 1.0 / math.sqrt(D)
    off = M - N
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, u, vb, rk))
    if not grad:
        out = _forward_buffered(q5, k, v, mk, mv, chunks, L, off, u, vb, rk, scale, q.new_empty(B, H, N, D))
        return AttnOutput(out=out, state=new_state)
    # autograd: outputs gathered once (slice writes would copy the gradient per chunk)
    u5, vb5 = (t.view(1, Hkv, G, 1, 1, D) * scale for t in (u, vb))  # query head h = hkv G + g
    outs = [_chunk_out_autograd(q5, k, v, mk, mv, ch, L, off, u5, vb5, rk, scale) for ch in chunks]
    return AttnOutput(out=outs[0] if len(outs) == 1 else torch.cat(outs, 2), state=new_state)


# ---------------------------------------------------------------------------------------------
# Dense reference and implied weights: straight from the formula, [N, M] scores
# ---------------------------------------------------------------------------------------------
class _Dense(NamedTuple):
    """The dense definition's attention of query rows R over the M keys."""

    p: torch.Tensor  # [B, H, R, M] softmax of the relative scores (0 where not allowed)
    is_mem: torch.Tensor  # [R, M] bool: key j is memory for the row (before its segment)
    window: torch.Tensor  # [R, M] bool: j >= (the row's segment start) - mem_len


def _dense(q, k, *, rows, segment_len, mem_len, seed, d_pos, u, v_bias, w_r) -> _Dense:
    """Query i at t = i + M - N, in segment s = t // L, may read key j iff j <= t and
    j >= s L - P; its score is ((q_i + u) . k_j + (q_i + v_bias) . W_r R_{t-j}) / sqrt(D),
    with the position term looked up by distance (a gather, no shift trick). Memory keys
    (j < s L) are scored with a detached k_j (no gradient through memory)."""
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    L, P, dp = _validate(segment_len, mem_len, d_pos, H, D)
    dev, dt = q.device, q.dtype
    i = torch.arange(N, device=dev) if rows is None else rows.to(dev)
    t = i + (M - N)
    j = torch.arange(M, device=dev)
    seg_start = torch.div(t, L, rounding_mode="floor") * L
    dist = t[:, None] - j[None, :]  # [R, M]
    window = j[None, :] >= seg_start[:, None] - P  # [R, M]
    is_mem = j[None, :] < seg_start[:, None]
    _given(u, v_bias, w_r, H, D, dp)
    u0, vb0, wr0 = xl_parameters(H, D, seed=int(seed), d_pos=dp, dtype=torch.float64, device=dev)
    wr = wr0 if w_r is None else w_r
    nd = max(1, min(M, L + P))  # every allowed distance is below L + P (and below M)
    r = sinusoid(torch.arange(nd), dp).to(device=dev, dtype=wr.dtype)  # [nd, d_pos]
    rk = torch.einsum("tp,hpd->htd", r, wr).to(dt)  # [H, nd, D]
    u = (u0 if u is None else u).to(dt)
    vb = (vb0 if v_bias is None else v_bias).to(dt)
    qs = q[:, :, i]
    kk = k.repeat_interleave(H // Hkv, dim=1)  # [B, H, M, D]
    qu = qs + u[None, :, None, :]
    ac = torch.where(is_mem, qu @ kk.detach().transpose(-1, -2), qu @ kk.transpose(-1, -2))
    bd_by_dist = (qs + vb[None, :, None, :]) @ rk.transpose(-1, -2)  # [B, H, R, nd]
    idx = dist.clamp(0, nd - 1).expand(B, H, -1, -1)
    bd = bd_by_dist.gather(-1, idx)  # [B, H, R, M]
    s = ((ac + bd) / math.sqrt(D)).masked_fill(~((dist >= 0) & window), float("-inf"))
    return _Dense(torch.softmax(s, dim=-1), is_mem, window)


def xl_reference(q, k, v, *, causal=True, rows=None, segment_len=DEFAULTS["segment_len"],
                 mem_len=DEFAULTS["mem_len"], seed=DEFAULTS["seed"], d_pos=DEFAULTS["d_pos"],
                 u=None, v_bias=None, w_r=None, **_) -> torch.Tensor:
    """The definition, dense: out [B, H, R, D] for query ``rows`` (all by default).

    The relative-score softmax of :func:`_dense` averages the values; memory keys' values
    enter detached (values equal, no gradient), so outputs and gradients equal the
    segment-by-segment kernel. Time and memory O(R M D) with [R, M] scores. ``u``,
    ``v_bias``, ``w_r``: given (learned) tensors replacing the seed's, as in :func:`xl_segment`.
    """
    if not causal:
        raise Unsupported(CAUSAL_ONLY)
    d = _dense(q, k, rows=rows, segment_len=segment_len, mem_len=mem_len, seed=seed, d_pos=d_pos,
               u=u, v_bias=v_bias, w_r=w_r)
    vv = v.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # [B, H, M, D]
    return d.p.masked_fill(d.is_mem, 0.0) @ vv + d.p.masked_fill(~d.is_mem, 0.0) @ vv.detach()


def xl_weights(q, k, v, *, causal=True, segment_len=DEFAULTS["segment_len"], mem_len=DEFAULTS["mem_len"],
               seed=DEFAULTS["seed"], d_pos=DEFAULTS["d_pos"], u=None, v_bias=None, w_r=None,
               **_) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention of one call without a memory state (keys = the call's M keys): (softmax of
    content + position scores [B, H, N, M], support [N, M] = the keys from the query's segment
    start less ``mem_len`` on, causality aside). ``u``, ``v_bias``, ``w_r`` as for the kernel."""
    if not causal:
        raise Unsupported(CAUSAL_ONLY)
    d = _dense(q, k, rows=None, segment_len=segment_len, mem_len=mem_len, seed=seed, d_pos=d_pos,
               u=u, v_bias=v_bias, w_r=w_r)
    return d.p, d.window


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------
def _shape_plan(shape: Shape, params) -> list[tuple[_Chunk, int]]:
    """The kernel's chunks as (chunk, how many of its shape): O(1) parts, not O(n / L) chunks."""
    g = shape.heads // max(1, shape.kv_heads)
    return chunk_counts(shape.seq_len, shape.kv_len, params["segment_len"], params["mem_len"], 0,
                        score_row_bytes=g * shape.element_size)


def xl_flops(shape: Shape, params) -> float:
    """Forward FLOPs the kernel performs: per segment and head, [Lq, W] scores for the content
    term, [Lq, W] for the position term and [Lq, W] x D for PV (2 per multiply-add), masked
    entries included; the W_r R table is a cached constant."""
    pairs = sum(k * ch.pairs() for ch, k in _shape_plan(shape, params))
    return 6.0 * shape.batch * shape.heads * shape.head_dim * pairs


def xl_memory(shape: Shape, params) -> float:
    """Peak bytes above the inputs of one call in ``shape.mode`` (autograd included).

    Forward without autograd: the output, the state, the score / position-score / output
    buffers of one K/V head's largest chunk and, at the stream start, the zero-padded K/V rows.
    With autograd, every chunk's working set for all heads is kept: key and value windows, two
    query copies, position scores (W + 1 columns), scores and probabilities; and the
    gradients of q, k, v on top."""
    e = shape.element_size
    B, H, Hkv, D = shape.batch, shape.heads, max(1, shape.kv_heads), shape.head_dim
    G = H // Hkv
    out = B * H * shape.seq_len * D * e
    state = 2 * B * Hkv * min(params["mem_len"], shape.kv_len) * D * e
    chunks = _shape_plan(shape, params)
    if not chunks:
        return float(out + state)
    if not shape.needs_grad:
        # score, position-score, query and output buffers, and the kept bias (mask) per geometry
        buf = max(G * (ch.s1 - ch.s0) * (ch.r1 - ch.r0) * (2 * ch.width + 1 + 3 * D) for ch, _ in chunks) * e
        buf += sum(k * (ch.r1 - ch.r0) * (ch.width + 1) for ch, k in chunks) * e  # every chunk's
        pad = 2 * B * Hkv * (params["mem_len"] + params["segment_len"]) * D * e
        return float(out + state + buf + pad)

    def work(ch: _Chunk) -> float:
        ns, lq = ch.s1 - ch.s0, ch.r1 - ch.r0
        windows = 2 * 2 * B * Hkv * ns * ch.width * D * e  # rows + windows, k and v
        queries = 3 * B * H * ns * lq * D * e
        return windows + queries + 3.0 * B * H * ch.pairs() * e

    return float(sum(k * work(ch) for ch, k in chunks) + 4 * out + state)


def _xl_reasons(shape: Shape, params) -> list[str]:
    if not shape.causal:
        return [CAUSAL_ONLY]
    if shape.seq_len > shape.kv_len:
        return [f"N > M ({shape.seq_len} vs {shape.kv_len}): queries are the last N of the M positions"]
    return []


SPEC = add(VariantSpec(
    name="xl@segment", forward=xl_segment, family="memory", exact=True,
    time="O(n (L+mem) d)", memory="O(n (L+mem))",
    causal=True, cross=True, kv_heads=True,
    params={"segment_len": P.integer(DEFAULTS["segment_len"], minimum=1, doc="segment length L"),
            "mem_len": P.integer(DEFAULTS["mem_len"], minimum=0, doc="memory P: keys kept from earlier segments"),
            "seed": P.integer(DEFAULTS["seed"], minimum=0, doc="seed of u, v_bias, W_r"),
            "d_pos": P.integer(DEFAULTS["d_pos"], minimum=1, optional="H D", doc="relative encoding width")},
    default=True, relative_positions=True, learned=xl_learned,
    reference_fn=xl_reference, weights_fn=xl_weights, extra_reasons=_xl_reasons,
    flops_fn=xl_flops, memory_fn=xl_memory,
    doc=("Transformer-XL: segments of segment_len keys attend causally to [last mem_len keys "
         "(detached memory) ; own keys] with relative positional scores (u, v_bias, W_r R); "
         "state = memory for the next call. Exact w.r.t. its own dense definition; causal only"),
    paper="Dai et al. 2019, Transformer-XL",
))
