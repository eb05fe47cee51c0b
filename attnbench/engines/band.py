"""TEMPORARY: band engine (to be replaced by the split version)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# @blocked kernels: O(n w) time and memory in pure PyTorch, backward through autograd.
#
# One band kernel serves the three patterns. Queries are cut into blocks of c rows; block b
# reads the L keys that start at coordinate b c + qoff - a + kstart: an ``unfold`` view of K
# and of V, so nothing is gathered or copied per block away from the sequence ends. Each chunk
# of blocks is one batched GEMM for the scores [blocks, c, L] (the 1/sqrt(d) rides on it as
# alpha), a [c, L] mask that is the same for every block (added only to the columns that need
# it), a softmax, and one batched GEMM with the V windows. The few blocks whose window leaves
# the sequence get an exact mask of their own; a query row with no key outputs zeros. Nothing
# N x M is ever formed.
#
# The forward without autograd writes through ``out=`` into preallocated buffers and straight
# into the output rows: a fresh large CPU allocation costs a page fault per 4 KiB on first
# touch, as much as the softmax. Chunks hold CHUNK_BYTES of scores, so the forward's extra
# memory is the output plus one chunk. With autograd every block's probabilities are kept
# for the backward: O(n w).
# ---------------------------------------------------------------------------------------------
SLIDING_BLOCK = 64  # query rows per block of the band kernels (sliding, dilated)
CHUNK_BYTES = 8 << 20  # bytes of scores per chunk
MIN_BLOCK_LOCAL_ROWS = 32  # block_local groups tiny blocks so that a GEMM has at least this many rows
_CACHE_BYTES = 1 << 20  # edge masks up to this size are kept between calls
EDGE_BATCH_BYTES = 1 << 20  # edge chunks this small run for all heads at once, on copies


def _normal_tensors(fn):
    """Cached constants are built outside inference mode: an inference tensor cannot be saved
    for a later autograd call that reuses it."""
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        with torch.inference_mode(False):
            return fn(*args, **kw)

    return wrapper


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class _Seq:
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
class _Plan:
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


def _make_plan(c: int, L: int, kstart: int, seqs, allow: torch.Tensor) -> _Plan:
    col = allow.all(0).tolist() + [False]
    best, start = (0, 0), None  # the widest run of always-allowed columns
    for u, ok in enumerate(col):
        if ok and start is None:
            start = u
        elif not ok and start is not None:
            if u - start > best[1] - best[0]:
                best = (start, u)
            start = None
    return _Plan(c, L, kstart, tuple(seqs), allow, best[0], best[1])


def _band_allow(c: int, L: int, span: int) -> torch.Tensor:
    """[c, L]: row r may read window positions r .. r + span (a diagonal band)."""
    du = torch.arange(L)[None, :] - torch.arange(c)[:, None]
    return (du >= 0) & (du <= span)


def _clamp(window: int, limit: int) -> int:
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    return min(int(window), limit)  # no (query, key) distance exceeds the limit


@functools.lru_cache(maxsize=256)
@_normal_tensors
def _sliding_plan(n: int, m: int, causal: bool, window: int, block: int) -> _Plan:
    w = _clamp(window, max(n, m))
    lo = 0 if causal else -w  # allowed qp - j in [lo, w]
    c = max(1, min(block, n))
    L = c + w - lo
    return _make_plan(c, L, -w, (_Seq(n, 0, m - n, m),), _band_allow(c, L, w - lo))


def sliding_plan(n: int, m: int, causal: bool, window: int) -> _Plan:
    """Query row i sits at qp = i + M - N; block b reads keys b c + qp0 - w .. + L - 1."""
    return _sliding_plan(int(n), int(m), bool(causal), int(window), SLIDING_BLOCK)


@functools.lru_cache(maxsize=256)
@_normal_tensors
def _dilated_plan(n: int, m: int, causal: bool, window: int, dil: int, block: int) -> _Plan:
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
        seqs.append(_Seq(nq=_cdiv(n - e, dil), a=0, qoff=(e + off - rho) // dil,
                         mk=max(0, _cdiv(m - rho, dil)), q_start=e, q_step=dil, k_start=rho, k_step=dil))
    return _make_plan(c, L, -w, seqs, _band_allow(c, L, w - lo))


def dilated_plan(n: int, m: int, causal: bool, window: int, dilation: int) -> _Plan:
    """Regrouped by residue: query i (position p = i + M - N) only sees keys j = p (mod dil), so
    the queries i = e, e + dil, ... and the keys j = rho, rho + dil, ... (rho = p mod dil) are a
    plain sliding window of ``window`` in units of dil, over strided views (no copy)."""
    return _dilated_plan(int(n), int(m), bool(causal), int(window), int(dilation), SLIDING_BLOCK)


@functools.lru_cache(maxsize=256)
@_normal_tensors
def block_local_plan(n: int, m: int, causal: bool, block: int, prev: bool) -> _Plan:
    """Query blocks line up with key blocks through a virtual front padding of (M - N) mod
    block rows; blocks under 32 rows are grouped k at a time (block-diagonal mask)."""
    bs, prev = int(block), bool(prev)
    if bs < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    off = m - n
    a = off % bs
    c = bs * max(1, min(_cdiv(MIN_BLOCK_LOCAL_ROWS, bs), _cdiv(n + a, bs)))
    pb = bs if prev else 0
    r = torch.arange(c)[:, None]
    u = torch.arange(c + pb)[None, :] - pb  # key position relative to the query block start
    gap = torch.div(r, bs, rounding_mode="floor") - torch.div(u, bs, rounding_mode="floor")
    allow = (gap == 0) | ((gap == 1) & prev)
    if causal:
        allow = allow & (u <= r)
    return _make_plan(c, c + pb, -pb, (_Seq(n, a, off, m),), allow)


@_normal_tensors
def _inner_bias_uncached(plan: _Plan, g: int, dtype: torch.dtype, device: str):
    """The shared mask as an additive bias [1, g c, L] (0 / -inf) and its two masked flanks."""
    bias = torch.zeros((plan.c, plan.L), dtype=dtype, device=device)
    bias.masked_fill_(~plan.allow.to(device), float("-inf"))
    bias = bias.repeat(g, 1).unsqueeze(0)
    return bias, bias[..., :plan.u0], bias[..., plan.u1:]


_inner_bias_cached = functools.lru_cache(maxsize=64)(_inner_bias_uncached)


def _inner_bias(plan: _Plan, g: int, dtype, device: str):
    small = g * plan.c * plan.L * torch.empty((), dtype=dtype).element_size() <= _CACHE_BYTES
    return (_inner_bias_cached if small else _inner_bias_uncached)(plan, g, dtype, device)


@_normal_tensors
def _edge_bias_uncached(plan: _Plan, s0: int, mk: int, b0: int, b1: int, g: int, dtype, device):
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
    bias = bias.unsqueeze(1).expand(-1, g, -1, -1).reshape(b1 - b0, g * c, L)
    keep_rows = None
    if not bool(keep.all()):
        keep_rows = keep.to(dtype)[:, None, :, None].expand(-1, g, -1, -1).reshape(b1 - b0, g * c, 1)
    return bias, keep_rows


_edge_bias_cached = functools.lru_cache(maxsize=512)(_edge_bias_uncached)


def _edge_bias(plan: _Plan, s0: int, mk: int, b0: int, b1: int, g: int, dtype, device):
    small = (b1 - b0) * g * plan.c * plan.L * torch.empty((), dtype=dtype).element_size() <= _CACHE_BYTES
    fn = _edge_bias_cached if small else _edge_bias_uncached
    return fn(plan, s0, mk, b0, b1, g, dtype, device)


def _fold_rows(x: torch.Tensor, nbc: int, c: int) -> torch.Tensor:
    """[G, nbc c, D] -> [nbc, G c, D]: the G query heads of a K/V group as rows of one GEMM
    (a view when G = 1, even for a row-strided x)."""
    g, _, d = x.shape
    if g == 1:
        return x[0].unflatten(0, (nbc, c))
    return x.unflatten(1, (nbc, c)).transpose(0, 1).reshape(nbc, g * c, d)


def _rows(x: torch.Tensor, dim: int, start: int, stop: int) -> torch.Tensor:
    """Rows start..stop-1 of x along ``dim``, zeros where they fall outside x."""
    lo, hi = max(start, 0), min(stop, x.shape[dim])
    if hi <= lo:
        part, front, back = x.narrow(dim, 0, 0), stop - start, 0
    else:
        part, front, back = x.narrow(dim, lo, hi - lo), lo - start, stop - hi
    if not front and not back:
        return part
    return F.pad(part, [0, 0] * (x.dim() - 1 - dim) + [front, back])


def _spans(plan: _Plan, sq: _Seq, per: int):
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


def _run(plan: _Plan, q, k, v) -> torch.Tensor:
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
    G, X = H // Hkv, B * Hkv
    c, L = plan.c, plan.L
    dev, dt, e = q.device, q.dtype, q.element_size()
    scale = 1.0 / math.sqrt(D)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    bias_in, bias_lo, bias_hi = _inner_bias(plan, G, dt, str(dev))
    nb_max = max(_cdiv(s.a + s.nq, c) for s in plan.seqs if s.nq)
    per = min(nb_max, max(1, CHUNK_BYTES // (G * c * L * e)))
    q5 = q.unflatten(1, (Hkv, G))  # [B, Hkv, G, N, D]
    if not grad:
        out = torch.empty(B, H, N, D, dtype=dt, device=dev)
        out5 = out.unflatten(1, (Hkv, G))
        sbuf = torch.empty(per, G * c, L, dtype=dt, device=dev)
        obuf = torch.empty(per, G * c, D, dtype=dt, device=dev)
    seq_outs: list[list] = [[] for _ in range(X)]  # autograd: per (batch, kv head), per sequence
    for sq in plan.seqs:
        if sq.nq == 0:
            continue
        qs = q5[:, :, :, sq.q_start::sq.q_step]  # [B, Hkv, G, nq, D]
        ks, vs = k[:, :, sq.k_start::sq.k_step], v[:, :, sq.k_start::sq.k_step]  # [B, Hkv, mk, D]
        os_ = None if grad else out5[:, :, :, sq.q_start::sq.q_step]
        # per-head pieces through unbind, whose backward stacks the gradients once (indexing
        # each head would make a zero-filled full-size gradient per head)
        q_heads = qs.reshape(X, G, sq.nq, D).unbind(0)
        k_heads, v_heads = ks.reshape(X, sq.mk, D).unbind(0), vs.reshape(X, sq.mk, D).unbind(0)
        nb, s0, spans = _spans(plan, sq, per)
        parts: list[list] = [[] for _ in range(X)]
        for b0, b1, edge in spans:
            nbc = b1 - b0
            r0, r1 = b0 * c - sq.a, b1 * c - sq.a  # real query rows of the chunk
            j0, j1 = b0 * c + s0, (b1 - 1) * c + s0 + L  # key coordinates it reads
            lo, hi = max(r0, 0), min(r1, sq.nq)  # rows that exist
            if edge:
                bias, keep = _edge_bias(plan, s0, sq.mk, b0, b1, G, dt, str(dev))
            batch_bytes = X * nbc * max(G * c, D) * L * e
            if edge and (batch_bytes <= EDGE_BATCH_BYTES or (nbc * G * c <= 16 and batch_bytes <= CHUNK_BYTES)):
                # a few rows (decode): all heads at once, on small copies
                qi = _rows(qs, 3, r0, r1).reshape(X, G, nbc, c, D).transpose(1, 2).reshape(X * nbc, G * c, D)
                kt = _rows(ks, 2, j0, j1).reshape(X, -1, D).unfold(1, L, c).reshape(X * nbc, D, L)
                vw = _rows(vs, 2, j0, j1).reshape(X, -1, D).unfold(1, L, c).transpose(2, 3).reshape(X * nbc, L, D)
                sc = (torch.bmm(qi, kt) * scale).view(X, nbc, G * c, L) + bias
                o = torch.bmm(torch.softmax(sc, dim=-1).view(X * nbc, G * c, L), vw).view(X, nbc, G * c, D)
                if keep is not None:
                    o = o * keep
                if grad:
                    for x, ox in enumerate(o.unbind(0)):
                        parts[x].append(ox)
                elif hi > lo:
                    o = o.view(B, Hkv, nbc, G, c, D).permute(0, 1, 3, 2, 4, 5).reshape(B, Hkv, G, nbc * c, D)
                    os_[:, :, :, lo:hi].copy_(o[:, :, :, lo - r0:hi - r0])
                continue
            for x in range(X):
                bi, hk = divmod(x, Hkv)
                qx, kx, vx = q_heads[x], k_heads[x], v_heads[x]
                if edge:
                    qi = _fold_rows(_rows(qx, 1, r0, r1), nbc, c)
                    kt = _rows(kx, 0, j0, j1).unfold(0, L, c)
                    vw = _rows(vx, 0, j0, j1).unfold(0, L, c).transpose(1, 2)
                else:
                    qi = _fold_rows(qx[:, r0:r1], nbc, c)  # [nbc, G c, D]
                    kt = kx[j0:j1].unfold(0, L, c)  # [nbc, D, L]
                    vw = vx[j0:j1].unfold(0, L, c).transpose(1, 2)  # [nbc, L, D]
                    bias, keep = bias_in, None
                if grad:
                    p = torch.softmax(torch.baddbmm(bias, qi, kt, alpha=scale), dim=-1)
                    o = torch.bmm(p, vw)
                    parts[x].append(o if keep is None else o * keep)
                    continue
                s = sbuf[:nbc]
                s.baddbmm_(qi, kt, beta=0, alpha=scale)
                if edge:
                    s.add_(bias)
                else:
                    if plan.u0:
                        s[..., :plan.u0].add_(bias_lo)
                    if plan.u1 < L:
                        s[..., plan.u1:].add_(bias_hi)
                torch.ops.aten._softmax.out(s, -1, False, out=s)  # in place, row-wise
                ox = os_[bi, hk]  # [G, nq, D]
                if G == 1 and not edge and sq.q_step == 1:  # straight into the output rows
                    torch.bmm(s, vw, out=ox[0, r0:r1].unflatten(0, (nbc, c)))
                    continue
                o = torch.bmm(s, vw, out=obuf[:nbc])
                if keep is not None:
                    o.mul_(keep)
                o4 = o.view(nbc, G, c, D).transpose(0, 1)  # [G, nbc, c, D]
                if not edge:
                    ox[:, r0:r1].unflatten(1, (nbc, c)).copy_(o4)
                elif hi > lo:
                    ox[:, lo:hi].copy_(o4.reshape(G, nbc * c, D)[:, lo - r0:hi - r0])
        if grad:
            for x in range(X):
                o = torch.cat(parts[x], 0) if len(parts[x]) > 1 else parts[x][0]
                o = o.view(nb, G, c, D).transpose(0, 1).reshape(G, nb * c, D)
                seq_outs[x].append(o[:, sq.a:sq.a + sq.nq])
    if not grad:
        return out
    outs = []
    for so in seq_outs:
        if len(so) == 1:
            outs.append(so[0])
        else:  # interleave the residue classes back: query i = t dil + e
            rows = so[0].shape[1]
            st = torch.stack([F.pad(x, (0, 0, 0, rows - x.shape[1])) for x in so], 2)
            outs.append(st.reshape(G, rows * len(so), D)[:, :N])
    return torch.stack(outs, 0).reshape(B, H, N, D)




def run(plan, q, k, v):
    return _run(plan, q, k, v)


def flops(plan, batch, heads, head_dim):
    return 4.0 * batch * heads * head_dim * plan.pairs()


def peak_bytes(plan, batch, heads, kv_heads, head_dim, elem, grad):
    g = heads // max(1, kv_heads)
    out = batch * heads * plan_n(plan) * head_dim * elem
    row = g * plan.c * plan.L * elem
    nb = max([_cdiv(s.a + s.nq, plan.c) for s in plan.seqs if s.nq] or [1])
    chunk = min(nb, max(1, CHUNK_BYTES // row)) * row
    total = float(out + chunk * (1 + head_dim / plan.L))
    if grad:
        total += 1.5 * batch * heads * plan.pairs() * elem + 3.0 * out
    return total


def plan_n(plan):
    return sum(s.nq for s in plan.seqs)
