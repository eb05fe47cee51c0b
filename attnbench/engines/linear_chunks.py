"""Linear attention engine: out_i = phi(q_i) [S | z] split as num / den, by chunked scans.

For a non-negative feature map phi (a :class:`FeatureMap`), A_ij = phi(q_i) . phi(k_j) and

    out_i = sum_j A_ij v_j / (sum_j A_ij + eps)          (j over the keys query i may see)

computed without A and without phi(Q) or phi(K) for the whole sequence: the features of one
span of rows exist at a time. Layouts: q [B, H, N, D]; k, v [B, Hkv, M, D], H a multiple of
Hkv (query heads of one K/V head are folded side by side, nothing is copied per head); causal
is bottom-right aligned (query i sees keys j <= i + M - N).

* Keys are streamed: a span's features are summed into the state [S | z] = sum_j phi(k_j)
  [v_j^T, 1] [B, Hkv, r, D + 1] and dropped. A map with per-key log-scales c_j (FAVOR+) keeps
  the state on a running log-scale m (the largest c_j absorbed): when keys come in, m grows to
  m' and the state is multiplied by exp(m - m') <= 1, like the running max of online softmax.
* Non-causal: all keys, then each span of queries: features, one GEMM with the state,
  normalize, straight into the output's rows.
* Causal: spans of whole ``chunk``-query blocks. Inside a span each block reads the state (keys
  every query of the block sees) and its diagonal block of keys under the causal mask, at the
  per-query scale M_i = max(c_j : j visible to i), so no later key changes a bit of an earlier
  output; then the block's keys are absorbed.
* Autograd: the whole sweep is one node (:class:`_Sweep`). It keeps the inputs, the final state,
  each span's starting log-scale and, causal only, each span's starting state [r, D + 1]; the
  backward walks the spans in reverse, rebuilds one span's features under autograd,
  differentiates it alone and writes its rows of dq, dk, dv in place. Extra memory is
  O(n d + (n / span) r d), never O(n r).

Stabilizers (query row maxima, key log-scales in m, M_i) are computed without gradient: they
multiply numerator and normalizer alike, so the output does not depend on them.

A span holds about ``STREAM_BYTES`` of features and rows (query side, all heads): a few MiB.
Without autograd a call allocates its span buffers once (:class:`_Work`) and every span works
in them — no fresh pages per span, and never a >32 MiB temporary, which glibc would map anew
and page-fault on every call. Python loops run over spans and blocks, never over tokens.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch.autograd.function import once_differentiable

from attnbench.engines import pages

# Bytes of a span's features and [rows, D] blocks. FAVOR+ forward at n = 16K, H = 8, D = 64 on a
# 2-core AVX-512 CPU (medians of 12, alternated): 2 MiB 183 ms, 4 MiB 167, 6 MiB 168; elu and
# relu flat from 4 to 8 MiB. Causal fwd+bwd peak at n = 16K (each span keeps its starting state
# [Hkv, r, D + 1] for the backward): spans of 4 MiB 196 MiB, 8 MiB 215, 12 MiB 236.
STREAM_BYTES = 4 * 2**20


class FeatureMap(NamedTuple):
    """phi as the engine uses it (any rows [..., L, D] at the compute dtype).

    r:       the number of features.
    queries: (x, out=None) -> phi(x) [..., L, r] up to a positive factor per row (it cancels
             in out_i); written into ``out`` when given (no autograd then), else a new tensor.
    keys:    (x, out=None) -> (f [..., L, r], c [..., L] or None): phi(x) = f exp(c) up to one
             global constant; c is the key's log-scale (its gradient, if any, is phi's).
    scaled:  whether ``keys`` gives log-scales (the state then carries one).
    """

    r: int
    queries: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    keys: Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]
    scaled: bool


class LinearState(NamedTuple):
    """The running summary of the keys seen so far (per batch and K/V head).

    kv:        [B, Hkv, r, D + 1]: [S | z] = sum_j phi(k_j) [v_j^T, 1], scaled by exp(-log_scale)
               (one matmul then yields numerator and normalizer together).
    log_scale: [B, Hkv] log-scale of ``kv`` (the largest key log-scale absorbed so far), or None
               for feature maps that need none (elu, relu).
    count:     how many keys have been absorbed.
    """

    kv: torch.Tensor
    log_scale: torch.Tensor | None
    count: int

    @property
    def S(self) -> torch.Tensor:
        """sum_j phi(k_j) v_j^T [B, Hkv, r, D] (times exp(-log_scale))."""
        return self.kv[..., :-1]

    @property
    def z(self) -> torch.Tensor:
        """sum_j phi(k_j) [B, Hkv, r] (times exp(-log_scale))."""
        return self.kv[..., -1]


class _Cfg(NamedTuple):
    """What every step of one call shares."""

    fmap: FeatureMap
    dt: torch.dtype  # compute dtype
    eps: float
    chunk: int  # queries per causal block
    off: int  # M - N: query i sees local keys j <= i + off (causal)


class _Work:
    """The buffers of a forward without autograd, made once per call and reused by every span:
    no span asks the heap for fresh pages, each of which page-faults on its first touch
    (measured: 20-30% of FAVOR+'s forward at n = 16K under glibc's default malloc). ``size``:
    the most rows a step reads."""

    def __init__(self, b, h, hkv, size, r, d, dt, device):
        self.fq = torch.empty(b * h * size * r, dtype=dt, device=device)  # query features
        self.fk = torch.empty(b * hkv * size * r, dtype=dt, device=device)  # key features
        self.va = torch.empty(b * hkv * size * (d + 1), dtype=dt, device=device)  # [v | 1]
        self.o = torch.empty(b * h * size * (d + 1), dtype=dt, device=device)  # [num | den]
        self.den = torch.empty(b * h * size, dtype=dt, device=device)  # denominators
        self.kv = torch.empty(b * hkv * r * d, dtype=dt, device=device)  # a key span's f^T v


def _buf(work: _Work | None, name: str, *shape) -> torch.Tensor | None:
    """``work``'s buffer ``name`` as a tensor of ``shape`` (its first elements), or None."""
    return None if work is None else getattr(work, name)[:math.prod(shape)].view(shape)


class _Step(NamedTuple):
    """One span of the sweep. ``keys``: absorb keys [k0, k1); ``read``: queries [q0, q1) read the
    state; ``causal``: queries [q0, q1) with the keys [k0, k1) that become visible to them."""

    kind: str
    q0: int
    q1: int
    k0: int
    k1: int


def span_rows(b: int, h: int, r: int, d: int, dt: torch.dtype) -> int:
    """Rows per span: ``STREAM_BYTES`` of query features [B, H, rows, r] and two [B, H, rows, D]
    blocks (the span's rows of the input and of the output)."""
    return max(1, STREAM_BYTES // (b * h * (r + 2 * d) * torch.finfo(dt).bits // 8))


def empty_state(b, hkv, r, d, dtype, device, scaled: bool) -> LinearState:
    m = torch.full((b, hkv), torch.finfo(dtype).min, dtype=dtype, device=device) if scaled else None
    return LinearState(torch.zeros(b, hkv, r, d + 1, dtype=dtype, device=device), m, 0)


def state_of(fmap: FeatureMap, k, v, dt, rows: int | None = None) -> LinearState:
    """The :class:`LinearState` of keys k, v [B, Hkv, M, D] (M may be 0): O(M r D), streamed."""
    b, hkv, _, d = k.shape
    q = k.new_empty(b, hkv, 0, d)  # no queries: the key sweep alone
    return run(fmap, q, k, v, causal=False, state=None, chunk=1, eps=0.0, dt=dt, rows=rows)[1]


def run(fmap: FeatureMap, q, k, v, *, causal: bool, state: LinearState | None, chunk: int,
        eps: float, dt: torch.dtype, rows: int | None = None) -> tuple[torch.Tensor, LinearState]:
    """out [B, H, N, D] (at ``dt``) and the state after all M keys (and ``state``'s before them).

    ``state``: keys seen before, visible to every query (causal then needs N <= M + 1). A query
    that sees no key (causal, N > M) outputs 0. ``rows``: rows per span (default
    :func:`span_rows`). Time O((N H + M Hkv) r D + N H chunk (r + D)); extra memory
    O(N H D + rows H r + chunk^2); with autograd, saved: the inputs, O(N / rows) log-scales and
    (causal) states [r, D + 1] — never features.
    """
    b, h, n, d = q.shape
    hkv, l = k.shape[1], k.shape[2]
    kv, m, count = _check_state(fmap, q, k, state, causal, dt)
    cfg = _Cfg(fmap, dt, eps, chunk, l - n)
    grad = _needs_grad(q, k, v, kv)
    steps = _plan(n, l, causal, rows or span_rows(b, h, fmap.r, d, dt), chunk)
    if grad:
        out, kv, m = _Sweep.apply(cfg, steps, q, k, v, kv, m)
    else:
        out, kv, m, _ = _forward(cfg, steps, q, k, v, kv, m, keep=False)
    return out.reshape(b, h, n, d), LinearState(kv, m, count + l)  # [B, H, N, D]


# ------------------------------------------------------------------------------ checks and plan
def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def _check_state(fmap: FeatureMap, q, k, state, causal, dt) -> LinearState:
    """(kv, log-scale, count) to start from: ``state`` checked and at ``dt``, or empty."""
    b, hkv, l, d = k.shape
    if state is None:
        return empty_state(b, hkv, fmap.r, d, dt, q.device, fmap.scaled)
    if (state.log_scale is not None) != fmap.scaled or tuple(state.kv.shape) != (b, hkv, fmap.r, d + 1):
        raise ValueError(f"state {tuple(state.kv.shape)} (scaled={state.log_scale is not None}) does not "
                         f"belong to this call: need kv [{b}, {hkv}, {fmap.r}, {d + 1}]")
    n = q.shape[2]
    if causal and state.count > 0 and n > l + 1:
        raise ValueError(f"causal with a state of {state.count} keys: N={n} queries would see only part "
                         f"of the state (N must be <= new keys + 1 = {l + 1})")
    m = None if state.log_scale is None else state.log_scale.to(dt)
    return LinearState(state.kv.to(dt), m, state.count)


def _key_steps(k0: int, k1: int, rows: int) -> list[_Step]:
    return [_Step("keys", 0, 0, j, min(j + rows, k1)) for j in range(k0, k1, rows)]


def _plan(n: int, l: int, causal: bool, rows: int, chunk: int) -> list[_Step]:
    """The steps of one call. Non-causal: the keys, then the queries, ``rows`` at a time. Causal:
    the keys every query sees, then spans of whole ``chunk``-query blocks (about ``rows``)."""
    if not causal:
        return _key_steps(0, l, rows) + [_Step("read", i, min(i + rows, n), 0, 0) for i in range(0, n, rows)]
    span = max(chunk, rows // chunk * chunk)
    ends = list(range(0, n, span)) + [n]  # span s: queries [ends[s], ends[s+1])
    first = [min(max(i + l - n, 0), l) for i in ends]  # keys [first[s], first[s+1]) join span s
    return _key_steps(0, first[0], rows) + [_Step("causal", a, b, ka, kb) for a, b, ka, kb
                                            in zip(ends[:-1], ends[1:], first[:-1], first[1:])]


# ------------------------------------------------------------------------------ the sweep
def _forward(cfg: _Cfg, steps, q, k, v, kv, m, keep: bool):
    """The steps without a graph: (out [B, Hkv, G, N, D], final kv, final m, and when ``keep``
    what each step starts from: (kv: read and causal steps, else None; m))."""
    b, h, _, d = q.shape
    hkv = k.shape[1]
    q5 = q.unflatten(1, (hkv, h // hkv))  # [B, Hkv, G, N, D]: query head hkv * G + g; a view
    out = pages.empty(*q5.shape, dtype=cfg.dt, device=q.device)  # [B, Hkv, G, N, D]
    size = max((max(st.q1 - st.q0, st.k1 - st.k0) for st in steps), default=0)
    work = _Work(b, h, hkv, size, cfg.fmap.r, d, cfg.dt, q.device)
    kv = kv.clone()  # updated in place from here on (a state passed in stays as it was)
    starts = []
    for st in steps:
        if keep:
            starts.append((_kept_state(st, kv), m))
        qs, ks, vs = q5[:, :, :, st.q0:st.q1], k[:, :, st.k0:st.k1], v[:, :, st.k0:st.k1]
        _, kv, m = _step(cfg, st, qs, ks, vs, kv, m, out[:, :, :, st.q0:st.q1], work)
    return out, kv, m, starts


def _kept_state(st: _Step, kv: torch.Tensor) -> torch.Tensor | None:
    """What a step's backward needs of the state it starts from: nothing for a key step, the
    final state (which no later step changes) for a read step, a copy for a causal step."""
    if st.kind == "keys":
        return None
    return kv if st.kind == "read" else kv.clone()


def _step(cfg: _Cfg, st: _Step, qs, ks, vs, kv, m, dest, work: _Work | None):
    """(out of the step's queries or None, kv, m) after one step; qs [B, Hkv, G, S, D], ks, vs
    [B, Hkv, L, D] its rows; ``dest``: where its output goes (None: a new tensor). With ``work``
    (no autograd) the step runs in its buffers and updates kv in place."""
    if st.kind == "keys":
        b, hkv, nk, _ = ks.shape
        f, c = cfg.fmap.keys(ks.to(cfg.dt), out=_buf(work, "fk", b, hkv, nk, cfg.fmap.r))  # [B, Hkv, L, r], [B, Hkv, L]
        if work is not None:
            return (None, *_absorb_split(kv, m, f, c, vs.to(cfg.dt), work))
        return (None, *_absorb(kv, m, f, c, _with_ones(vs, cfg.dt, work), False))
    if st.kind == "read":
        return (_read_split if work is not None else _read_span)(cfg, qs, kv, dest, work), kv, m
    return _causal_span(cfg, qs, ks, vs, kv, m, st.q0, st.k0, dest, work)


class _Sweep(torch.autograd.Function):
    """All steps of a call as one autograd node, so that no feature is ever saved.

    Forward: :func:`_forward`, keeping what each step starts from. Backward: the steps in
    reverse, each recomputed under autograd from its start (its features rebuilt) and
    differentiated alone; its input gradients are written into dq, dk, dv (no per-span pieces,
    no concatenation) and its starting state's gradient goes to the step before. A key step's
    gradient does not depend on its starting state (only on its log-scale): none is kept for it.
    """

    @staticmethod
    def forward(ctx, cfg, steps, q, k, v, kv, m):
        out, kv_end, m_end, starts = _forward(cfg, steps, q, k, v, kv, m, keep=True)
        ctx.cfg, ctx.steps = cfg, steps
        ctx.save_for_backward(q, k, v, *[t for pair in starts for t in pair])
        if m_end is not None:
            ctx.mark_non_differentiable(m_end)
        return out, kv_end, m_end

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dkv, _dm):
        q, k, v, *saved = ctx.saved_tensors
        hkv = k.shape[1]
        grads = [torch.empty_like(t) if need else None for t, need in zip((q, k, v), ctx.needs_input_grad[2:5])]
        g5 = [None if t is None else t.unflatten(1, (hkv, q.shape[1] // hkv)) for t in grads[:1]]  # [B, Hkv, G, N, D]
        ins = (q.unflatten(1, (hkv, q.shape[1] // hkv)), k, v)  # [B, Hkv, G, N, D], [B, Hkv, M, D] x 2
        dkv = dkv.clone()  # overwritten by each step: nothing small outlives a step on the heap
        for st, kv0, m0 in reversed(list(zip(ctx.steps, saved[0::2], saved[1::2]))):
            dkv.copy_(_step_backward(ctx.cfg, st, ins, g5 + grads[1:], kv0, m0, dout, dkv))
        return None, None, *grads, dkv if ctx.needs_input_grad[5] else None, None


def _step_backward(cfg: _Cfg, st: _Step, ins, grads, kv0, m0, dout, dkv):
    """One step recomputed from its start (kv0: None for a key step, whose gradients do not
    depend on it) and differentiated: its rows of dq, dk, dv written into ``grads``; returns the
    gradient of the state it started from."""
    spans = [(st.q0, st.q1), (st.k0, st.k1), (st.k0, st.k1)]  # the step's rows of q5, k, v
    xs = [x.narrow(-2, a, b - a) for x, (a, b) in zip(ins, spans)]
    wrt = [g is not None and x.numel() > 0 for x, g in zip(xs, grads)]
    xs = [x.detach().requires_grad_() if w else x for x, w in zip(xs, wrt)]
    with torch.enable_grad():
        kv_in = (torch.zeros_like(dkv) if kv0 is None else kv0).detach().requires_grad_()
        o, kv_out, _ = _step(cfg, st, *xs, kv_in, m0, None, None)  # a read step returns kv_in itself
        outs, douts = [kv_out], [dkv]
        if o is not None:
            outs, douts = outs + [o], douts + [dout.narrow(-2, st.q0, st.q1 - st.q0)]
        got = list(torch.autograd.grad(outs, [kv_in] + [x for x, w in zip(xs, wrt) if w], douts,
                                       allow_unused=True))
    dkv_in = got.pop(0)
    for g, (a, b), w in zip(grads, spans, wrt):
        if not w:
            continue
        rows, gx = g.narrow(-2, a, b - a), got.pop(0)  # each row of dq, dk, dv is one step's
        if gx is None:  # rows the step's output does not depend on
            rows.zero_()
        else:
            rows.copy_(gx)
    return torch.zeros_like(dkv) if dkv_in is None else dkv_in


# ------------------------------------------------------------------------------ span kernels
def _with_ones(v: torch.Tensor, dt, work: _Work | None) -> torch.Tensor:
    """[v | 1] [B, Hkv, L, D + 1] at ``dt`` (in ``work``'s buffer when given): one GEMM then
    gives numerator and normalizer."""
    if work is None:
        v = v.to(dt)
        return torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)  # [B, Hkv, L, D+1]
    b, hkv, nk, d = v.shape
    va = _buf(work, "va", b, hkv, nk, d + 1)  # [B, Hkv, L, D+1]
    va[..., :d].copy_(v)
    va[..., d].fill_(1.0)
    return va


def _absorb(kv, m, f, c, vaug, inplace: bool):
    """Add keys f [B, Hkv, L, r] (log-scales c [B, Hkv, L] or None), vaug [B, Hkv, L, D + 1] to
    the state kv [B, Hkv, r, D + 1] on log-scale m [B, Hkv]: O(L r D). ``inplace`` (no autograd):
    kv and vaug are overwritten."""
    if f.shape[2] == 0:
        return kv, m
    if c is not None:
        with torch.no_grad():
            m_new = torch.maximum(m, c.amax(-1))
        w = torch.exp(c - m_new.unsqueeze(-1)).unsqueeze(-1)  # [B, Hkv, L, 1]: <= 1, keys on the new scale
        back = torch.exp(m - m_new)[..., None, None]  # [B, Hkv, 1, 1]: the state on the new scale
        vaug, kv, m = (vaug.mul_(w), kv.mul_(back), m_new) if inplace else (vaug * w, kv * back, m_new)
    ft, acc = f.transpose(-1, -2).flatten(0, 1), kv.flatten(0, 1)  # [B*Hkv, r, L], [B*Hkv, r, D+1]
    if inplace:  # kv += f^T vaug, the add fused into the GEMM
        acc.baddbmm_(ft, vaug.flatten(0, 1))
        return kv, m
    return torch.baddbmm(acc, ft, vaug.flatten(0, 1)).view(kv.shape), m  # [B, Hkv, r, D+1]


def _absorb_split(kv, m, f, c, v, work: _Work):
    """:func:`_absorb` in place without autograd, S and z apart: S += f^T v as a GEMM D wide
    (D + 1 = 65 wide, as [v | 1] makes it, is ~20% slower on a 2-core EPYC: measured), z += the
    features' column sums (weighted by the keys' scales when there are any). Unscaled keys use
    v itself: no [v | 1] copy."""
    if f.shape[2] == 0:
        return kv, m
    b, hkv, nk, d = v.shape
    if c is not None:
        m_new = torch.maximum(m, c.amax(-1))
        w = torch.exp(c - m_new.unsqueeze(-1))  # [B, Hkv, L]: <= 1, keys on the new scale
        kv.mul_(torch.exp(m - m_new)[..., None, None])  # the state on the new scale
        v, m = torch.mul(v, w.unsqueeze(-1), out=_buf(work, "va", b, hkv, nk, d)), m_new
        kv[..., d].add_(torch.matmul(w.unsqueeze(-2), f).squeeze(-2))  # z += w^T f [B, Hkv, r]
    else:
        kv[..., d].add_(f.sum(-2))  # z += 1^T f
    # S += f^T v: the GEMM into a contiguous buffer (into the state's strided view it would run
    # as one addmm per head), then one small add
    fv = torch.bmm(f.transpose(-1, -2).flatten(0, 1), v.flatten(0, 1), out=_buf(work, "kv", b * hkv, f.shape[3], d))
    kv[..., :d].add_(fv.view(b, hkv, -1, d))  # [B, Hkv, r, D]
    return kv, m


def _read_split(cfg: _Cfg, qs, kv, dest, work: _Work):
    """:func:`_read_span` without autograd, S and z apart: num = phi(Q) S (a GEMM D wide), den =
    phi(Q) . z, and num / den into ``dest`` (a fresh output's first touch) in one pass."""
    b, hkv, g, s, d = qs.shape
    r = cfg.fmap.r
    fq = cfg.fmap.queries(qs.to(cfg.dt), out=_buf(work, "fq", b, hkv, g, s, r)).view(b, hkv, g * s, r)  # [B, Hkv, G*S, r]
    num = torch.matmul(fq, kv[..., :d], out=_buf(work, "o", b, hkv, g * s, d))  # [B, Hkv, G*S, D]
    den = _buf(work, "den", b, hkv, g * s)  # [B, Hkv, G*S] = phi(Q) z: one matrix-vector
    for x, (fx, zx) in enumerate(zip(fq.flatten(0, 1), kv[..., d].flatten(0, 1))):  # product per head
        torch.mv(fx, zx, out=den.view(b * hkv, g * s)[x])  # (3x faster than a bmm one column wide)
    den = den.add_(cfg.eps) if cfg.eps > 0 else torch.where(den > 0, den, 1.0)
    return torch.div(num.view(b, hkv, g, s, d), den.view(b, hkv, g, s, 1), out=dest)  # [B, Hkv, G, S, D]


def _normalize(o: torch.Tensor, eps: float, dest: torch.Tensor | None) -> torch.Tensor:
    """[num | den] [..., D + 1] -> num / (den + eps) [..., D], into ``dest`` when given."""
    num, den = o.split([o.shape[-1] - 1, 1], -1)  # (its backward is one concatenation, no zero-fill)
    # eps = 0: only a row that sees no key has den == 0 (num is 0 too): 0, with a finite gradient
    den = den + eps if eps > 0 else torch.where(den > 0, den, 1.0)
    return num / den if dest is None else torch.div(num, den, out=dest)


def _read_span(cfg: _Cfg, qs, kv, dest, work: _Work | None):
    """Queries qs [B, Hkv, G, S, D] read the state kv [B, Hkv, r, D + 1]: [B, Hkv, G, S, D]."""
    b, hkv, g, s, d = qs.shape
    r = cfg.fmap.r
    fq = cfg.fmap.queries(qs.to(cfg.dt), out=_buf(work, "fq", b, hkv, g, s, r))  # [B, Hkv, G, S, r]
    o = torch.matmul(fq.view(b, hkv, g * s, r), kv, out=_buf(work, "o", b, hkv, g * s, d + 1))  # [B, Hkv, G*S, D+1]
    return _normalize(o.view(b, hkv, g, s, d + 1), cfg.eps, dest)  # [B, Hkv, G, S, D]


def _causal_span(cfg: _Cfg, qs, ks, vs, kv, m, i0, lo, dest, work: _Work | None):
    """Queries [i0, i0 + S) (qs [B, Hkv, G, S, D]) and the keys [lo, lo + L) that become
    visible to them (ks, vs [B, Hkv, L, D]), block by block: (out, kv, m) after the span."""
    b, hkv, g, s, _ = qs.shape
    nk, r = ks.shape[2], cfg.fmap.r
    fq = cfg.fmap.queries(qs.to(cfg.dt), out=_buf(work, "fq", b, hkv, g, s, r))  # [B, Hkv, G, S, r]
    fk, c = cfg.fmap.keys(ks.to(cfg.dt), out=_buf(work, "fk", b, hkv, nk, r))  # [B, Hkv, L, r], [B, Hkv, L]
    vaug = _with_ones(vs, cfg.dt, work)  # [B, Hkv, L, D+1]
    starts = list(range(i0, i0 + s, cfg.chunk))
    firsts = [min(max(i + cfg.off, lo), lo + nk) for i in starts] + [lo + nk]  # block's first key
    sizes = [y - x for x, y in zip(firsts[:-1], firsts[1:])]
    cs = [None] * len(starts) if c is None else c.split(sizes, 2)
    dests = [None] * len(starts) if dest is None else dest.split(cfg.chunk, 3)
    outs = []
    for i, fqb, fkb, cb, vab, lob, db in zip(starts, fq.split(cfg.chunk, 3), fk.split(sizes, 2), cs,
                                              vaug.split(sizes, 2), firsts, dests):
        o, kv, m = _causal_block(cfg, fqb, fkb, cb, vab, kv, m, i, lob, db, work is not None)
        outs.append(o)
    return (dest if dest is not None else torch.cat(outs, 3)), kv, m  # [B, Hkv, G, S, D]


def _causal_block(cfg: _Cfg, fq, fk, c, vaug, kv, m, i0, lo, dest, inplace: bool):
    """Queries [i0, i0 + cq) (fq [B, Hkv, G, cq, r]) against the state and their diagonal block of
    keys [lo, lo + lb) (fk [B, Hkv, lb, r]) under the causal mask; then the block is absorbed
    (``inplace``: into kv itself, scaling vaug)."""
    b, hkv, g, cq, r = fq.shape
    lb, d1 = fk.shape[2], vaug.shape[3]
    qc = fq.reshape(b, hkv, g * cq, r)  # [B, Hkv, G*cq, r]
    o = torch.matmul(qc, kv)  # [B, Hkv, G*cq, D+1]: the keys every query of the block sees
    if lb:
        rows = torch.arange(i0, i0 + cq, device=fq.device)
        cols = torch.arange(lo, lo + lb, device=fq.device)
        vis = cols[None, :] <= rows[:, None] + cfg.off  # [cq, lb]
        p = torch.matmul(qc, fk.transpose(-1, -2)).view(b, hkv, g, cq, lb)  # [B, Hkv, G, cq, lb]
        if c is None:
            p = p.masked_fill(~vis, 0.0)  # not a product: inf * 0 would be nan
        else:
            p, o = _block_scales(p, o.view(b, hkv, g, cq, d1), c, m, vis, rows + cfg.off - lo)
        # o + P [V | 1] in one fused call (the add is part of the GEMM)
        o = torch.baddbmm(o.reshape(b * hkv, g * cq, d1), p.reshape(b * hkv, g * cq, lb),
                          vaug.reshape(b * hkv, lb, d1))  # [B*Hkv, G*cq, D+1]
    out = _normalize(o.view(b, hkv, g, cq, d1), cfg.eps, dest)  # [B, Hkv, G, cq, D]
    kv, m = _absorb(kv, m, fk, c, vaug, inplace)
    return out, kv, m


def _block_scales(p, o, c, m, vis, last):
    """Bring a block to query i's scale M_i = max(m, c_j : j visible to i in the block).

    p [B, Hkv, G, cq, lb] (features on each key's own scale), o [B, Hkv, G, cq, D+1] (state on
    m), c [B, Hkv, lb], m [B, Hkv], vis [cq, lb], last [cq]: index of i's last visible key (-1:
    none). Every factor is exp(<= 0), 0 on hidden keys; M_i depends only on keys i sees.
    """
    with torch.no_grad():
        run = torch.cummax(c, dim=-1).values  # [B, Hkv, lb]
        mi = torch.maximum(m.unsqueeze(-1), run[..., last.clamp(min=0)])
        mi = torch.where(last >= 0, mi, m.unsqueeze(-1))  # [B, Hkv, cq]
    e = (c.unsqueeze(-2) - mi.unsqueeze(-1)).masked_fill(~vis, float("-inf")).exp()  # [B, Hkv, cq, lb]
    p = p * e.unsqueeze(2)  # exp(c_j - M_i) <= 1 on visible keys, 0 elsewhere
    o = o * torch.exp(m.unsqueeze(-1) - mi)[:, :, None, :, None]  # [B, Hkv, G, cq, D+1]
    return p, o
