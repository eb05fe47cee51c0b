"""Band engine: local-window attention in O(n w) time and memory, pure PyTorch, backward
through autograd. It serves any mask that is a band of keys around each query (sliding and
dilated windows, block-local); it knows nothing of patterns or of the registry.

One band kernel serves every plan. Queries are cut into blocks of c rows; block b reads the L
keys that start at coordinate b c + qoff - a + kstart: an ``unfold`` view of K and of V, so
nothing is gathered or copied per block away from the sequence ends. Each chunk of blocks is
one batched GEMM for the scores [blocks, c, L] (the 1/sqrt(d) rides on it as alpha), a [c, L]
mask that is the same for every block (added only to the columns that need it), a softmax, and
one batched GEMM with the V windows. The few blocks whose window leaves the sequence get an
exact mask of their own; a query row with no key outputs zeros. Nothing N x M is ever formed.

The forward without autograd writes through ``out=`` into preallocated buffers and straight
into the output rows: a fresh large CPU allocation costs a page fault per 4 KiB on first touch,
as much as the softmax (the output itself is advised onto huge pages: ``engines/pages.py``). Chunks hold CHUNK_BYTES of scores, so the forward's extra memory is the
output plus one chunk. With autograd every block's probabilities are kept for the backward:
O(n w).

API: :class:`Plan` (and its :class:`Seq` s) from :func:`sliding_plan`, :func:`dilated_plan`,
:func:`block_local_plan` (cached per shape); :func:`run` executes a plan; :func:`flops` and
:func:`peak_bytes` cost it. Python loops run over chunks and heads, never over tokens.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from attnbench.cache import normal_tensors
from attnbench.engines import pages

# Query rows per block of the sliding / dilated plans. A block reads c + 2w keys for the 2w + 1
# each row needs (c + w causal): larger blocks waste more of the band, smaller ones make more,
# smaller GEMMs.
SLIDING_BLOCK = 64
# Bytes of scores per chunk: the forward's extra memory is the output plus one chunk (and its
# [.., c, D] output buffer), and the chunk's buffers are reused by every chunk and head.
CHUNK_BYTES = 8 << 20
# block_local groups tiny blocks so that a GEMM has at least this many rows (block-diagonal
# mask inside the group).
MIN_BLOCK_LOCAL_ROWS = 32
# Edge masks up to this size are kept between calls (lru caches); larger ones are rebuilt.
_CACHE_BYTES = 1 << 20
# Edge chunks this small run for all (batch, kv head) at once, on copies: one decode query is
# then a handful of ops in all instead of a few per head.
EDGE_BATCH_BYTES = 1 << 20
# ... as do edge chunks of at most this many rows per head, up to CHUNK_BYTES in all.
EDGE_BATCH_ROWS = 16


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------------------------------ plans

@dataclass(frozen=True)
class Seq:
    """One independent query sequence of a (batch, kv head): the query rows ``q_start::q_step``
    (``nq`` of them, virtually front-padded by ``a`` < c rows) against the keys
    ``k_start::k_step`` (``mk`` of them, at coordinates 0..mk-1); real row t sits at key
    coordinate t + qoff."""

    nq: int
    a: int
    qoff: int
    mk: int
    q_start: int = 0
    q_step: int = 1
    k_start: int = 0
    k_step: int = 1


@dataclass(frozen=True, eq=False)
class Plan:
    """Blocks of ``c`` query rows; block b of a sequence scores the ``L`` keys from coordinate
    b c + qoff - a + kstart. ``allow`` [c, L]: the mask shared by every block away from the
    sequence ends; columns u0..u1-1 are allowed for every row and need no mask."""

    c: int
    L: int
    kstart: int
    seqs: tuple
    allow: torch.Tensor
    u0: int
    u1: int

    def pairs(self) -> int:
        """(query, key) scores computed per (batch, query head), padding and band waste included."""
        return sum(_cdiv(s.a + s.nq, self.c) * self.c * self.L for s in self.seqs if s.nq)


def _make_plan(c: int, L: int, kstart: int, seqs, allow: torch.Tensor) -> Plan:
    col = allow.all(0).tolist() + [False]
    best, start = (0, 0), None  # the widest run of always-allowed columns
    for u, ok in enumerate(col):
        if ok and start is None:
            start = u
        elif not ok and start is not None:
            if u - start > best[1] - best[0]:
                best = (start, u)
            start = None
    return Plan(c, L, kstart, tuple(seqs), allow, best[0], best[1])


def _band_allow(c: int, L: int, span: int) -> torch.Tensor:
    """[c, L]: row r may read window positions r .. r + span (a diagonal band)."""
    du = torch.arange(L)[None, :] - torch.arange(c)[:, None]  # [c, L]
    return (du >= 0) & (du <= span)


def _clamp(window: int, limit: int) -> int:
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    return min(int(window), limit)  # no (query, key) distance exceeds the limit


@functools.lru_cache(maxsize=256)
@normal_tensors
def _sliding_plan(n: int, m: int, causal: bool, window: int, block: int) -> Plan:
    w = _clamp(window, max(n, m))
    lo = 0 if causal else -w  # allowed qp - j in [lo, w]
    c = max(1, min(block, n))
    L = c + w - lo
    return _make_plan(c, L, -w, (Seq(n, 0, m - n, m),), _band_allow(c, L, w - lo))


def sliding_plan(n: int, m: int, causal: bool, window: int) -> Plan:
    """Query row i sits at qp = i + M - N; block b reads keys b c + qp0 - w .. + L - 1."""
    return _sliding_plan(int(n), int(m), bool(causal), int(window), SLIDING_BLOCK)


@functools.lru_cache(maxsize=256)
@normal_tensors
def _dilated_plan(n: int, m: int, causal: bool, window: int, dil: int, block: int) -> Plan:
    if dil < 1:
        raise ValueError(f"dilation must be >= 1, got {dil}")
    w = _clamp(window, _cdiv(max(n, m), dil))
    lo = 0 if causal else -w
    c = max(1, min(block, _cdiv(n, dil)))
    L = c + w - lo
    off = m - n
    seqs = []
    for e in range(min(dil, n)):  # queries i = e, e + dil, ...
        rho = (e + off) % dil  # their positions' residue: they see keys j = rho, rho + dil, ...
        seqs.append(Seq(nq=_cdiv(n - e, dil), a=0, qoff=(e + off - rho) // dil,
                        mk=max(0, _cdiv(m - rho, dil)), q_start=e, q_step=dil, k_start=rho, k_step=dil))
    return _make_plan(c, L, -w, seqs, _band_allow(c, L, w - lo))


def dilated_plan(n: int, m: int, causal: bool, window: int, dilation: int) -> Plan:
    """Regrouped by residue: query i (position p = i + M - N) only sees keys j = p (mod dil), so
    the queries i = e, e + dil, ... and the keys j = rho, rho + dil, ... (rho = p mod dil) are a
    plain sliding window of ``window`` in units of dil, over strided views (no copy)."""
    return _dilated_plan(int(n), int(m), bool(causal), int(window), int(dilation), SLIDING_BLOCK)


@functools.lru_cache(maxsize=256)
@normal_tensors
def block_local_plan(n: int, m: int, causal: bool, block: int, prev: bool) -> Plan:
    """Query blocks line up with key blocks through a virtual front padding of (M - N) mod
    block rows; blocks under 32 rows are grouped k at a time (block-diagonal mask)."""
    bs, prev = int(block), bool(prev)
    if bs < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    off = m - n
    a = off % bs
    c = bs * max(1, min(_cdiv(MIN_BLOCK_LOCAL_ROWS, bs), _cdiv(n + a, bs)))
    pb = bs if prev else 0
    r = torch.arange(c)[:, None]  # [c, 1]
    u = torch.arange(c + pb)[None, :] - pb  # [1, L]: key position relative to the query block start
    gap = torch.div(r, bs, rounding_mode="floor") - torch.div(u, bs, rounding_mode="floor")
    allow = (gap == 0) | ((gap == 1) & prev)
    if causal:
        allow = allow & (u <= r)
    return _make_plan(c, c + pb, -pb, (Seq(n, a, off, m),), allow)


# ------------------------------------------------------------------------------------ costs

def flops(plan: Plan, batch: int, heads: int, head_dim: int) -> float:
    """FLOPs :func:`run` performs: 4 D per computed score, padding and band waste included."""
    return 4.0 * batch * heads * head_dim * plan.pairs()


def peak_bytes(plan: Plan, batch: int, heads: int, kv_heads: int, head_dim: int, elem: int,
               grad: bool) -> float:
    """Peak bytes of :func:`run` above the inputs (``elem`` bytes per element). Forward: the
    output and one chunk of scores (plus its [.., c, D] output buffer). With autograd (``grad``)
    every block's probabilities are kept, the backward makes about as much again, and gradients
    the size of q, k, v."""
    n = sum(s.nq for s in plan.seqs)  # the plan's sequences partition the N query rows
    g = heads // max(1, kv_heads)
    out = batch * heads * n * head_dim * elem
    row = g * plan.c * plan.L * elem
    nb = max([_cdiv(s.a + s.nq, plan.c) for s in plan.seqs if s.nq] or [1])
    chunk = min(nb, max(1, CHUNK_BYTES // row)) * row
    total = float(out + chunk * (1 + head_dim / plan.L))
    if grad:
        total += 1.5 * batch * heads * plan.pairs() * elem + 3.0 * out
    return total


# ------------------------------------------------------------------------------------ masks

@normal_tensors
def _inner_bias_uncached(plan: Plan, g: int, dtype: torch.dtype, device: str):
    """The shared mask as an additive bias [1, g c, L] (0 / -inf) and its two masked flanks."""
    bias = torch.zeros((plan.c, plan.L), dtype=dtype, device=device)
    bias.masked_fill_(~plan.allow.to(device), float("-inf"))
    bias = bias.repeat(g, 1).unsqueeze(0)  # [1, g c, L]
    return bias, bias[..., :plan.u0], bias[..., plan.u1:]


_inner_bias_cached = functools.lru_cache(maxsize=64)(_inner_bias_uncached)


def _inner_bias(plan: Plan, g: int, dtype, device: str):
    small = g * plan.c * plan.L * torch.empty((), dtype=dtype).element_size() <= _CACHE_BYTES
    return (_inner_bias_cached if small else _inner_bias_uncached)(plan, g, dtype, device)


@normal_tensors
def _edge_bias_uncached(plan: Plan, s0: int, mk: int, b0: int, b1: int, g: int, dtype, device):
    """Exact additive mask [b1 - b0, g c, L] of blocks b0..b1-1 (keys outside 0..mk-1 do not
    exist) and, if some rows have no key at all, a [.., g c, 1] 0/1 factor that zeroes them.
    Such a row is given its whole window (finite scores on zero-padded keys), so that softmax and
    its backward stay finite."""
    c, L = plan.c, plan.L
    j = torch.arange(b0, b1, device=device)[:, None] * c + s0 + torch.arange(L, device=device)[None, :]
    ok = plan.allow.to(device)[None] & ((j >= 0) & (j < mk))[:, None, :]  # [nbc, c, L]
    keep = ok.any(-1)
    ok = ok | ~keep[..., None]
    bias = torch.zeros(ok.shape, dtype=dtype, device=device).masked_fill_(~ok, float("-inf"))
    bias = bias.unsqueeze(1).expand(-1, g, -1, -1).reshape(b1 - b0, g * c, L)  # [nbc, g c, L]
    keep_rows = None
    if not bool(keep.all()):
        keep_rows = keep.to(dtype)[:, None, :, None].expand(-1, g, -1, -1)  # [nbc, g, c, 1]
        keep_rows = keep_rows.reshape(b1 - b0, g * c, 1)  # [nbc, g c, 1]
    return bias, keep_rows


_edge_bias_cached = functools.lru_cache(maxsize=512)(_edge_bias_uncached)


def _edge_bias(plan: Plan, s0: int, mk: int, b0: int, b1: int, g: int, dtype, device):
    small = (b1 - b0) * g * plan.c * plan.L * torch.empty((), dtype=dtype).element_size() <= _CACHE_BYTES
    fn = _edge_bias_cached if small else _edge_bias_uncached
    return fn(plan, s0, mk, b0, b1, g, dtype, device)


# ------------------------------------------------------------------------------------ windows

def _fold_rows(x: torch.Tensor, nbc: int, c: int) -> torch.Tensor:
    """[G, nbc c, D] -> [nbc, G c, D]: the G query heads of a K/V group as rows of one GEMM
    (a view when G = 1, even for a row-strided x)."""
    g, _, d = x.shape
    if g == 1:
        return x[0].unflatten(0, (nbc, c))  # [nbc, c, D]
    return x.unflatten(1, (nbc, c)).transpose(0, 1).reshape(nbc, g * c, d)  # [nbc, G c, D]


def _rows(x: torch.Tensor, dim: int, start: int, stop: int) -> torch.Tensor:
    """Rows start..stop-1 of x along ``dim``, zeros where they fall outside x."""
    lo, hi = max(start, 0), min(stop, x.shape[dim])
    if hi <= lo:
        part, front, back = x.narrow(dim, 0, 0), stop - start, 0  # [.., 0 (dim), ..]
    else:
        part, front, back = x.narrow(dim, lo, hi - lo), lo - start, stop - hi  # [.., hi - lo (dim), ..]
    if not front and not back:
        return part
    return F.pad(part, [0, 0] * (x.dim() - 1 - dim) + [front, back])


def _spans(plan: Plan, sq: Seq, per: int):
    """(b0, b1, edge) chunks of blocks: inner blocks (full query rows, every key present) apart
    from the blocks at the sequence ends, which need their own mask."""
    c, L = plan.c, plan.L
    nb = _cdiv(sq.a + sq.nq, c)
    s0 = sq.qoff - sq.a + plan.kstart  # first key coordinate of block 0's window
    if bool(plan.allow.any(-1).all()):
        n_front = min(nb, max(_cdiv(-s0, c), 1 if sq.a else 0, 0))
        b_back = max(n_front, min(nb, (sq.mk - s0 - L) // c + 1, (sq.nq + sq.a) // c))
    else:  # some row has no key inside the band: let the exact mask zero it
        n_front = b_back = nb
    out = [(b0, min(n_front, b0 + per), True) for b0 in range(0, n_front, per)]
    out += [(b0, min(b_back, b0 + per), False) for b0 in range(n_front, b_back, per)]
    out += [(b0, min(nb, b0 + per), True) for b0 in range(b_back, nb, per)]
    return nb, s0, out


# ------------------------------------------------------------------------------------ run

@dataclass(eq=False)
class _Call:
    """What one call of :func:`run` shares between its sequences and chunks. ``out`` (with its
    view ``out5``) and the chunk buffers ``sbuf`` / ``obuf`` exist only without autograd; ``obuf``
    is made on first use (a plan whose blocks all write straight into the output never needs it,
    and an unused 4 MiB block at the heap's top makes glibc trim and re-fault ``sbuf`` every call)."""

    plan: Plan
    B: int
    Hkv: int
    G: int
    X: int  # B Hkv: independent (batch, kv head) pairs
    D: int
    dt: torch.dtype
    dev: str  # the device, as the mask caches key it
    e: int  # bytes per element
    scale: float
    grad: bool
    per: int  # blocks per chunk
    bias_in: torch.Tensor  # [1, G c, L] the shared mask, and its two masked flanks
    bias_lo: torch.Tensor
    bias_hi: torch.Tensor
    q5: torch.Tensor  # [B, Hkv, G, N, D]
    out: torch.Tensor | None
    out5: torch.Tensor | None  # [B, Hkv, G, N, D]
    sbuf: torch.Tensor | None  # [per, G c, L] scores
    obuf: torch.Tensor | None  # [per, G c, D] outputs


class _SeqViews(NamedTuple):
    """One sequence's strided views of q, k, v (and of the output) and its chunks."""

    sq: Seq
    qs: torch.Tensor  # [B, Hkv, G, nq, D]
    ks: torch.Tensor  # [B, Hkv, mk, D]
    vs: torch.Tensor  # [B, Hkv, mk, D]
    os_: torch.Tensor | None  # [B, Hkv, G, nq, D]
    q_heads: tuple  # X x [G, nq, D]
    k_heads: tuple  # X x [mk, D]
    v_heads: tuple  # X x [mk, D]
    nb: int
    s0: int
    spans: list


class _Chunk(NamedTuple):
    """Blocks b0..b1-1 of a sequence: real query rows r0..r1-1 (lo..hi-1 exist), key
    coordinates j0..j1-1; ``bias`` [.., G c, L] and ``keep`` (None or [.., G c, 1]) its mask."""

    edge: bool
    nbc: int
    r0: int
    r1: int
    j0: int
    j1: int
    lo: int
    hi: int
    bias: torch.Tensor
    keep: torch.Tensor | None


def run(plan: Plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B, H, N, D], k/v [B, Hkv, M, D] -> out [B, H, N, D], following ``plan``.

    Inner chunks run per (batch, kv head) on views. Edge chunks are small copies anyway; when
    they are small enough they run for all (batch, kv head) at once (one decode query: a
    handful of ops in all).
    """
    B, H, N, D = q.shape
    Hkv = k.shape[1]
    if H % Hkv:
        raise ValueError(f"heads={H} is not a multiple of kv_heads={Hkv}")
    if N == 0 or B * H == 0:
        return torch.zeros_like(q)
    call = _setup(plan, q, k, v)
    seq_outs: list[list] = [[] for _ in range(call.X)]  # autograd: per (batch, kv head), per sequence
    for sq in plan.seqs:
        if sq.nq:
            _run_seq(call, sq, k, v, seq_outs)
    if not call.grad:
        return call.out
    return _interleave(call, seq_outs, N)


def _setup(plan: Plan, q, k, v) -> _Call:
    """Chunk size, the shared mask, and (without autograd) the output and the chunk buffers."""
    B, H, N, D = q.shape
    Hkv = k.shape[1]
    G, X = H // Hkv, B * Hkv
    c, L = plan.c, plan.L
    dev, dt, e = q.device, q.dtype, q.element_size()
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    bias_in, bias_lo, bias_hi = _inner_bias(plan, G, dt, str(dev))
    nb_max = max(_cdiv(s.a + s.nq, c) for s in plan.seqs if s.nq)
    per = min(nb_max, max(1, CHUNK_BYTES // (G * c * L * e)))
    q5 = q.unflatten(1, (Hkv, G))  # [B, Hkv, G, N, D]
    out = out5 = sbuf = obuf = None
    if not grad:
        out = pages.empty(B, H, N, D, dtype=dt, device=dev)
        out5 = out.unflatten(1, (Hkv, G))  # [B, Hkv, G, N, D]
        sbuf = torch.empty(per, G * c, L, dtype=dt, device=dev)
    return _Call(plan, B, Hkv, G, X, D, dt, str(dev), e, 1.0 / math.sqrt(D), grad, per,
                 bias_in, bias_lo, bias_hi, q5, out, out5, sbuf, obuf)


def _run_seq(call: _Call, sq: Seq, k, v, seq_outs: list) -> None:
    """One sequence, chunk by chunk; with autograd its output per (batch, kv head) is appended
    to ``seq_outs``, without it is written into ``call.out``."""
    sv = _seq_views(call, sq, k, v)
    parts: list[list] = [[] for _ in range(call.X)]
    for b0, b1, edge in sv.spans:
        ch = _chunk(call, sv, b0, b1, edge)
        if edge and _all_heads_at_once(call, ch):
            _edge_all_heads(call, sv, ch, parts)
            continue
        for x in range(call.X):
            qi, kt, vw = _head_windows(call.plan, sv, ch, x)
            if call.grad:
                parts[x].append(_head_autograd(call, ch, qi, kt, vw))
            else:
                _head_inference(call, sv, ch, x, qi, kt, vw)
    if call.grad:
        _join_seq(call, sq, sv.nb, parts, seq_outs)


def _seq_views(call: _Call, sq: Seq, k, v) -> _SeqViews:
    """Strided views of the sequence's query rows and keys (no copy), split per (batch, kv head)
    through unbind, whose backward stacks the gradients once (indexing each head would make a
    zero-filled full-size gradient per head)."""
    X, G, D = call.X, call.G, call.D
    qs = call.q5[:, :, :, sq.q_start::sq.q_step]  # [B, Hkv, G, nq, D]
    ks = k[:, :, sq.k_start::sq.k_step]  # [B, Hkv, mk, D]
    vs = v[:, :, sq.k_start::sq.k_step]  # [B, Hkv, mk, D]
    os_ = None if call.grad else call.out5[:, :, :, sq.q_start::sq.q_step]  # [B, Hkv, G, nq, D]
    q_heads = qs.reshape(X, G, sq.nq, D).unbind(0)  # X x [G, nq, D]
    k_heads = ks.reshape(X, sq.mk, D).unbind(0)  # X x [mk, D]
    v_heads = vs.reshape(X, sq.mk, D).unbind(0)  # X x [mk, D]
    nb, s0, spans = _spans(call.plan, sq, call.per)
    return _SeqViews(sq, qs, ks, vs, os_, q_heads, k_heads, v_heads, nb, s0, spans)


def _chunk(call: _Call, sv: _SeqViews, b0: int, b1: int, edge: bool) -> _Chunk:
    """Rows, key coordinates and mask of blocks b0..b1-1."""
    c, L, sq = call.plan.c, call.plan.L, sv.sq
    r0, r1 = b0 * c - sq.a, b1 * c - sq.a  # real query rows of the chunk
    j0, j1 = b0 * c + sv.s0, (b1 - 1) * c + sv.s0 + L  # key coordinates it reads
    lo, hi = max(r0, 0), min(r1, sq.nq)  # rows that exist
    if edge:
        bias, keep = _edge_bias(call.plan, sv.s0, sq.mk, b0, b1, call.G, call.dt, call.dev)
    else:
        bias, keep = call.bias_in, None
    return _Chunk(edge, b1 - b0, r0, r1, j0, j1, lo, hi, bias, keep)


def _all_heads_at_once(call: _Call, ch: _Chunk) -> bool:
    """Whether an edge chunk is small enough to run for all (batch, kv head) at once."""
    G, c = call.G, call.plan.c
    batch_bytes = call.X * ch.nbc * max(G * c, call.D) * call.plan.L * call.e
    few_rows = ch.nbc * G * c <= EDGE_BATCH_ROWS and batch_bytes <= CHUNK_BYTES
    return batch_bytes <= EDGE_BATCH_BYTES or few_rows


def _edge_all_heads(call: _Call, sv: _SeqViews, ch: _Chunk, parts: list) -> None:
    """A few rows (decode): one edge chunk for all (batch, kv head) at once, on small copies."""
    X, G, D, nbc = call.X, call.G, call.D, ch.nbc
    c, L = call.plan.c, call.plan.L
    qi = _rows(sv.qs, 3, ch.r0, ch.r1)  # [B, Hkv, G, nbc c, D]
    qi = qi.reshape(X, G, nbc, c, D).transpose(1, 2).reshape(X * nbc, G * c, D)  # [X nbc, G c, D]
    kt = _rows(sv.ks, 2, ch.j0, ch.j1)  # [B, Hkv, (nbc - 1) c + L, D]
    kt = kt.reshape(X, -1, D).unfold(1, L, c).reshape(X * nbc, D, L)  # [X nbc, D, L]
    vw = _rows(sv.vs, 2, ch.j0, ch.j1)  # [B, Hkv, (nbc - 1) c + L, D]
    vw = vw.reshape(X, -1, D).unfold(1, L, c).transpose(2, 3).reshape(X * nbc, L, D)  # [X nbc, L, D]
    sc = (torch.bmm(qi, kt) * call.scale).view(X, nbc, G * c, L) + ch.bias  # [X, nbc, G c, L]
    p = torch.softmax(sc, dim=-1).view(X * nbc, G * c, L)  # [X nbc, G c, L]
    o = torch.bmm(p, vw).view(X, nbc, G * c, D)  # [X, nbc, G c, D]
    if ch.keep is not None:
        o = o * ch.keep
    if call.grad:
        for x, ox in enumerate(o.unbind(0)):
            parts[x].append(ox)
    elif ch.hi > ch.lo:
        o = o.view(call.B, call.Hkv, nbc, G, c, D).permute(0, 1, 3, 2, 4, 5)  # [B, Hkv, G, nbc, c, D]
        o = o.reshape(call.B, call.Hkv, G, nbc * c, D)  # [B, Hkv, G, nbc c, D]
        sv.os_[:, :, :, ch.lo:ch.hi].copy_(o[:, :, :, ch.lo - ch.r0:ch.hi - ch.r0])


def _head_windows(plan: Plan, sv: _SeqViews, ch: _Chunk, x: int):
    """The chunk's queries [nbc, G c, D], keys [nbc, D, L] and values [nbc, L, D] for (batch, kv
    head) x: views of the sequence for inner chunks, zero-padded copies at the sequence ends."""
    c, L, nbc = plan.c, plan.L, ch.nbc
    qx, kx, vx = sv.q_heads[x], sv.k_heads[x], sv.v_heads[x]
    if ch.edge:
        qi = _fold_rows(_rows(qx, 1, ch.r0, ch.r1), nbc, c)  # [nbc, G c, D]
        kt = _rows(kx, 0, ch.j0, ch.j1).unfold(0, L, c)  # [nbc, D, L]
        vw = _rows(vx, 0, ch.j0, ch.j1).unfold(0, L, c).transpose(1, 2)  # [nbc, L, D]
    else:
        qi = _fold_rows(qx[:, ch.r0:ch.r1], nbc, c)  # [nbc, G c, D]
        kt = kx[ch.j0:ch.j1].unfold(0, L, c)  # [nbc, D, L]
        vw = vx[ch.j0:ch.j1].unfold(0, L, c).transpose(1, 2)  # [nbc, L, D]
    return qi, kt, vw


def _head_autograd(call: _Call, ch: _Chunk, qi, kt, vw) -> torch.Tensor:
    """Out-of-place, differentiable: [nbc, G c, D]; the probabilities stay saved for backward."""
    p = torch.softmax(torch.baddbmm(ch.bias, qi, kt, alpha=call.scale), dim=-1)  # [nbc, G c, L]
    o = torch.bmm(p, vw)  # [nbc, G c, D]
    return o if ch.keep is None else o * ch.keep


def _head_inference(call: _Call, sv: _SeqViews, ch: _Chunk, x: int, qi, kt, vw) -> None:
    """Buffered (``out=``): scores in the chunk buffer, masked on the flanks that need it,
    softmax in place, times V straight into the output rows (G = 1, contiguous rows) or through
    the output buffer."""
    plan, G, D, nbc = call.plan, call.G, call.D, ch.nbc
    c, L = plan.c, plan.L
    s = call.sbuf[:nbc]
    s.baddbmm_(qi, kt, beta=0, alpha=call.scale)
    if ch.edge:
        s.add_(ch.bias)
    else:
        if plan.u0:
            s[..., :plan.u0].add_(call.bias_lo)
        if plan.u1 < L:
            s[..., plan.u1:].add_(call.bias_hi)
    torch.ops.aten._softmax.out(s, -1, False, out=s)  # in place, row-wise
    bi, hk = divmod(x, call.Hkv)
    ox = sv.os_[bi, hk]  # [G, nq, D]
    if G == 1 and not ch.edge and sv.sq.q_step == 1:  # straight into the output rows
        torch.bmm(s, vw, out=ox[0, ch.r0:ch.r1].unflatten(0, (nbc, c)))  # out: [nbc, c, D]
        return
    if call.obuf is None:
        call.obuf = torch.empty(call.per, G * c, D, dtype=call.dt, device=call.dev)
    o = torch.bmm(s, vw, out=call.obuf[:nbc])
    if ch.keep is not None:
        o.mul_(ch.keep)
    o4 = o.view(nbc, G, c, D).transpose(0, 1)  # [G, nbc, c, D]
    if not ch.edge:
        ox[:, ch.r0:ch.r1].unflatten(1, (nbc, c)).copy_(o4)  # into [G, nbc, c, D]
    elif ch.hi > ch.lo:
        ox[:, ch.lo:ch.hi].copy_(o4.reshape(G, nbc * c, D)[:, ch.lo - ch.r0:ch.hi - ch.r0])  # [G, nbc c, D]


def _join_seq(call: _Call, sq: Seq, nb: int, parts: list, seq_outs: list) -> None:
    """Autograd: a sequence's chunks, per (batch, kv head), back into its nq query rows."""
    G, c, D = call.G, call.plan.c, call.D
    for x in range(call.X):
        o = torch.cat(parts[x], 0) if len(parts[x]) > 1 else parts[x][0]  # [nb, G c, D]
        o = o.view(nb, G, c, D).transpose(0, 1).reshape(G, nb * c, D)  # [G, nb c, D]
        seq_outs[x].append(o[:, sq.a:sq.a + sq.nq])  # [G, nq, D]


def _interleave(call: _Call, seq_outs: list, N: int) -> torch.Tensor:
    """Autograd: the sequences of each (batch, kv head) back into query order (one sequence:
    as is; dilated: interleave the residue classes, query i = t dil + e)."""
    B, G, D = call.B, call.G, call.D
    outs = []
    for so in seq_outs:
        if len(so) == 1:
            outs.append(so[0])
        else:  # interleave the residue classes back: query i = t dil + e
            rows = so[0].shape[1]
            st = torch.stack([F.pad(x, (0, 0, 0, rows - x.shape[1])) for x in so], 2)  # [G, rows, dil, D]
            outs.append(st.reshape(G, rows * len(so), D)[:, :N])  # [G, N, D]
    return torch.stack(outs, 0).reshape(B, call.Hkv * G, N, D)  # [B, H, N, D]
