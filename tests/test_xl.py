"""Transformer-XL (``xl@segment``): the segmented kernel against its dense definition and the
properties the paper's recurrence promises.

* kernel == ``reference_fn`` (outputs and gradients, through ``check_case``), K/V heads H and 1,
  fp32 and fp64, sizes that are not multiples of the segment, memory 0 / < N / >= N;
  the inference path (no autograd, chunked) and decode-like N < M as well;
* memory >= N: the segmented kernel is full causal relative attention (checked against a
  per-query loop written here from the paper's formula, not from the module's code);
* memory 0: segments are independent;
* no gradient reaches the memory, while the forward does read it;
* streaming: segment-aligned calls chained through ``state`` equal one call;
* the relative shift equals a naive gather; bad parameters raise ValueError.
"""
from __future__ import annotations

import math

import pytest
import torch

import attnbench.variants.xl as xl
from attnbench.check import check_case
from attnbench.harness.inputs import make_inputs
from attnbench import Shape, Unsupported

SPEC = xl.SPEC


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one torch thread (conftest.one_thread)."""


def _shape(n, *, m=None, hkv=4, dtype="float32", heads=4, batch=2, d=16, causal=True):
    return Shape(batch=batch, heads=heads, kv_heads=hkv, seq_len=n, kv_len=n if m is None else m,
                 head_dim=d, dtype=dtype, causal=causal)


def _qkv(n, *, m=None, hkv=4, dtype=torch.float64, heads=4, batch=2, d=16, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    m = n if m is None else m

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_(grad)

    return r(batch, heads, n, d), r(batch, hkv, m, d), r(batch, hkv, m, d)


def _run(q, k, v, **params):
    return xl.xl_segment(q, k, v, causal=True, **params)


# ---------------------------------------------------------------------------------------------
# Against the dense definition
# ---------------------------------------------------------------------------------------------
CASES = [(37, 8, 16), (100, 32, 0), (64, 16, 64)]  # (N, segment_len, mem_len)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("hkv", [4, 1])
@pytest.mark.parametrize("n,L,P", CASES)
def test_kernel_equals_reference(n, L, P, hkv, dtype):
    r = check_case(SPEC, _shape(n, hkv=hkv, dtype=dtype), params=dict(segment_len=L, mem_len=P))
    assert r.status == "ok", (r.reasons, r.errors, r.allowed)
    assert set(r.errors) == {"out", "dq", "dk", "dv"}  # gradients were checked


@pytest.mark.parametrize("n,L,P", [(1, 8, 16), (5, 8, 3), (33, 8, 5), (40, 7, 100)])
def test_kernel_equals_reference_odd_sizes(n, L, P):
    r = check_case(SPEC, _shape(n, hkv=2, dtype="float64"), params=dict(segment_len=L, mem_len=P))
    assert r.status == "ok", (r.reasons, r.errors, r.allowed)


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 30])
@pytest.mark.parametrize("n,m,L,P", [(37, 37, 8, 16), (64, 64, 16, 64), (1, 50, 8, 16),
                                     (1, 48, 8, 5), (13, 50, 8, 12), (20, 20, 8, 0)])
def test_inference_path_and_decode(monkeypatch, chunk_bytes, n, m, L, P):
    """No autograd (the harness's timed path), one segment per chunk or all at once; N < M
    (queries are the last N positions, a decode query is the newest token)."""
    monkeypatch.setattr(xl, "CHUNK_BYTES", chunk_bytes)
    q, k, v = _qkv(n, m=m, hkv=2)
    with torch.inference_mode():
        out = _run(q, k, v, segment_len=L, mem_len=P).out
    ref = xl.xl_reference(q, k, v, causal=True, segment_len=L, mem_len=P)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    if n < m:  # the same rows of the full-length call
        qf = torch.cat([torch.randn(2, 4, m - n, 16, dtype=torch.float64), q], 2)
        full = _run(qf, k, v, segment_len=L, mem_len=P).out
        torch.testing.assert_close(out, full[:, :, m - n:], rtol=0, atol=1e-12)


def test_reference_rows_subset():
    q, k, v = _qkv(45, hkv=1)
    rows = torch.tensor([0, 7, 8, 30, 44])
    full = xl.xl_reference(q, k, v, causal=True, segment_len=8, mem_len=10)
    part = xl.xl_reference(q, k, v, causal=True, rows=rows, segment_len=8, mem_len=10)
    torch.testing.assert_close(part, full[:, :, rows], rtol=0, atol=1e-14)


def test_low_precision_runs_close():
    q, k, v = _qkv(40, dtype=torch.bfloat16)
    out = _run(q, k, v, segment_len=8, mem_len=8).out
    ref = xl.xl_reference(q.double(), k.double(), v.double(), causal=True, segment_len=8, mem_len=8)
    assert out.dtype == torch.bfloat16
    assert (out.double() - ref).abs().max() < 5e-2


# ---------------------------------------------------------------------------------------------
# Memory >= N: full causal relative attention, from the paper's formula
# ---------------------------------------------------------------------------------------------
def full_causal_relative(q, k, v, *, seed=0):
    """Dai et al. eq. (relative attention), every query i over keys j <= i, written per query:
    score = (q_i + u) . k_j + (q_i + v) . W_r R_{i-j}, R the [sin | cos] encoding of i - j."""
    B, H, N, D = q.shape
    G = H // k.shape[1]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    d_pos = H * D
    u, vb, wr = xl.xl_parameters(H, D, seed=seed, dtype=q.dtype)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, d_pos, 2, dtype=torch.float64) / d_pos)
    out = torch.empty_like(q)
    for i in range(N):
        dist = torch.arange(i, -1, -1, dtype=torch.float64)  # i - j for j = 0..i
        ang = dist[:, None] * inv_freq[None, :]
        R = torch.cat([ang.sin(), ang.cos()], -1)  # [i + 1, d_pos]
        pos = torch.einsum("jp,hpd->hjd", R, wr)  # W_r R_{i-j} per head
        a = torch.einsum("bhd,bhjd->bhj", q[:, :, i] + u, k[:, :, :i + 1])
        b = torch.einsum("bhd,hjd->bhj", q[:, :, i] + vb, pos)
        p = torch.softmax((a + b) / math.sqrt(D), -1)
        out[:, :, i] = torch.einsum("bhj,bhjd->bhd", p, v[:, :, :i + 1])
    return out


@pytest.mark.parametrize("hkv", [4, 1])
@pytest.mark.parametrize("n,L,P", [(40, 8, 40), (37, 5, 64), (16, 16, 16)])
def test_memory_covering_sequence_is_full_causal_relative_attention(n, L, P, hkv):
    q, k, v = _qkv(n, hkv=hkv)
    out = _run(q, k, v, segment_len=L, mem_len=P).out
    torch.testing.assert_close(out, full_causal_relative(q, k, v), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Memory 0: independent segments; no gradient through memory
# ---------------------------------------------------------------------------------------------
def test_no_memory_segments_are_independent():
    L, n = 8, 29
    q, k, v = _qkv(n, hkv=2)
    out = _run(q, k, v, segment_len=L, mem_len=0).out
    for s0 in range(0, n, L):
        sl = slice(s0, min(n, s0 + L))
        alone = _run(q[:, :, sl], k[:, :, sl], v[:, :, sl], segment_len=L, mem_len=0).out
        torch.testing.assert_close(out[:, :, sl], alone, rtol=0, atol=1e-13)


def test_no_gradient_through_memory_but_forward_reads_it():
    L, P, n = 8, 16, 24
    q, k, v = _qkv(n, hkv=1, grad=True)
    out = _run(q, k, v, segment_len=L, mem_len=P).out
    seg2 = out[:, :, 2 * L:3 * L]
    dk, dv = torch.autograd.grad(seg2.sum(), (k, v))
    # keys/values of segments 0 and 1 are segment 2's memory: no gradient
    assert dk[:, :, :2 * L].abs().max() == 0 and dv[:, :, :2 * L].abs().max() == 0
    assert dk[:, :, 2 * L:].abs().max() > 0 and dv[:, :, 2 * L:].abs().max() > 0
    # ... yet the forward depends on them
    with torch.no_grad():
        k2, v2 = k.clone(), v.clone()
        k2[:, :, L:2 * L] += 1.0
        v2[:, :, L:2 * L] += 1.0
        changed = _run(q, k2, v2, segment_len=L, mem_len=P).out[:, :, 2 * L:3 * L]
    assert (changed - seg2).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Streaming through state
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("L,P", [(8, 12), (8, 0), (8, 100), (4, 4)])
def test_streaming_equals_one_call(L, P):
    n = 45
    q, k, v = _qkv(n, hkv=2)
    whole = _run(q, k, v, segment_len=L, mem_len=P)
    cuts = [0, 2 * L, 3 * L, 5 * L, n]  # segment-aligned calls, the last one short
    state, outs = None, []
    for a, b in zip(cuts, cuts[1:]):
        r = _run(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], segment_len=L, mem_len=P, state=state)
        outs.append(r.out)
        state = r.state
    torch.testing.assert_close(torch.cat(outs, 2), whole.out, rtol=0, atol=1e-13)
    assert isinstance(state, xl.XLMemory)
    assert state.k.shape[2] == min(P, n)
    torch.testing.assert_close(state.k, whole.state.k, rtol=0, atol=0)
    torch.testing.assert_close(state.v, v[:, :, n - min(P, n):], rtol=0, atol=0)


def test_state_is_detached_and_decode_with_state():
    L, P, n = 8, 10, 30
    q, k, v = _qkv(n, hkv=1, grad=True)
    r = _run(q[:, :, :24], k[:, :, :24], v[:, :, :24], segment_len=L, mem_len=P)
    assert not r.state.k.requires_grad and not r.state.v.requires_grad
    # token by token within the last segment, each call one query against the segment so far
    whole = _run(q, k, v, segment_len=L, mem_len=P).out.detach()
    for t in range(24, n):
        sl = slice(24, t + 1)
        o = _run(q[:, :, t:t + 1], k[:, :, sl], v[:, :, sl], segment_len=L, mem_len=P, state=r.state).out
        torch.testing.assert_close(o.detach(), whole[:, :, t:t + 1], rtol=0, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# The relative shift, parameters, registry metadata
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lq,w", [(1, 1), (5, 5), (4, 11), (7, 7 + 3), (3, 9)])
def test_rel_shift_equals_naive_gather(lq, w):
    x = torch.randn(2, 3, lq, w, dtype=torch.float64)
    y = xl.rel_shift(x)
    assert y.shape == x.shape
    for r in range(lq):
        for c in range(w):
            if c <= w - lq + r:  # the band the kernel keeps
                assert y[..., r, c].equal(x[..., r, c + lq - 1 - r])


def test_rel_shift_backward_is_the_gather():
    x = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    lq, w = x.shape
    r = torch.arange(lq)[:, None]
    c = torch.arange(w)[None, :]
    band = c <= w - lq + r
    g = torch.randn(lq, w, dtype=torch.float64) * band
    (dx,) = torch.autograd.grad(xl.rel_shift(x), x, g)
    idx = (c + lq - 1 - r).clamp(max=w - 1)
    want = torch.zeros(lq, w, dtype=torch.float64).scatter_add_(1, idx, g)
    torch.testing.assert_close(dx, want, rtol=0, atol=0)


@pytest.mark.parametrize("params,match", [
    (dict(segment_len=0), r"segment_len must be a positive integer \(>= 1\), got 0"),
    (dict(segment_len=-3), r"segment_len .* got -3"),
    (dict(segment_len=2.5), r"segment_len .* got 2\.5"),
    (dict(mem_len=-1), r"mem_len must be an integer >= 0, got -1"),
    (dict(mem_len="x"), r"mem_len .* got 'x'"),
])
def test_bad_params_raise(params, match):
    q, k, v = _qkv(8)
    with pytest.raises(ValueError, match=match):
        _run(q, k, v, **params)
    with pytest.raises(ValueError, match=match):
        xl.xl_reference(q, k, v, causal=True, **params)


def test_non_causal_is_unsupported_with_reason():
    q, k, v = _qkv(8)
    with pytest.raises(Unsupported, match="causal by construction"):
        xl.xl_segment(q, k, v, causal=False)
    r = check_case(SPEC, _shape(16, causal=False))
    assert r.status == "unsupported"
    assert any("causal by construction" in x for x in r.reasons)
    assert SPEC.not_supported_reasons(_shape(16)) == []


def test_spec_metadata_and_flops():
    assert SPEC.family == "memory" and SPEC.exact and SPEC.default and SPEC.causal
    assert SPEC.cross and SPEC.reference_fn is xl.xl_reference
    assert SPEC.time == "O(n (L+mem) d)" and "Transformer-XL" in SPEC.paper
    d = dict(SPEC.defaults)
    assert d["segment_len"] == 512 and d["mem_len"] == 512
    # N a multiple of L, memory full after the first segment: segment 0 reads L keys of its
    # own (no memory exists yet), the others mem + L; 3 terms (content, position, PV).
    n, L, P = 4096, 512, 512
    shape = Shape(batch=1, heads=8, kv_heads=8, seq_len=n, kv_len=n, head_dim=64, causal=True)
    pairs = L * L + (n // L - 1) * L * (L + P)
    assert SPEC.flops(shape) == pytest.approx(6.0 * 8 * 64 * pairs)
    # one decode query reads its own segment only, whatever M
    dec = Shape(batch=1, heads=8, kv_heads=8, seq_len=1, kv_len=n + 5, head_dim=64, causal=True, mode="decode")
    assert SPEC.not_supported_reasons(dec) == []
    assert SPEC.flops(dec) == pytest.approx(6.0 * 8 * 64 * (P + 5))
    assert SPEC.predicted_peak_bytes(shape) > 0


@pytest.mark.parametrize("grad", [False, True])
def test_strided_inputs(grad):
    """q, k, v as transposed views of [B, N, H, D] tensors (the usual projection layout)."""
    q, k, v = _qkv(37, hkv=2)
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(grad) for x in (q, k, v))
    assert not qt.is_contiguous()
    with torch.set_grad_enabled(grad):
        out = _run(qt, kt, vt, segment_len=8, mem_len=12).out
    ref = xl.xl_reference(q, k, v, causal=True, segment_len=8, mem_len=12)
    torch.testing.assert_close(out.detach(), ref, rtol=0, atol=1e-12)


def test_state_forms():
    """state as a plain (k, v) pair, longer than mem_len (its last mem_len rows are used);
    state of the wrong shape is refused."""
    L, P = 8, 6
    q, k, v = _qkv(24, hkv=2)
    whole = _run(q, k, v, segment_len=L, mem_len=P).out
    first = _run(q[:, :, :16], k[:, :, :16], v[:, :, :16], segment_len=L, mem_len=16)
    assert first.state.k.shape[2] == 16
    rest = _run(q[:, :, 16:], k[:, :, 16:], v[:, :, 16:], segment_len=L, mem_len=P,
                state=(first.state.k, first.state.v)).out
    torch.testing.assert_close(rest, whole[:, :, 16:], rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="state tensors must be"):
        _run(q, k, v, segment_len=L, mem_len=P, state=(k[:, :1], v[:, :1]))


# ---------------------------------------------------------------------------------------------
# Learned u, v_bias, W_r (a model's own tensors, the spec's ``learned``)
# ---------------------------------------------------------------------------------------------
def _learned(heads=4, d=16, d_pos=None, seed=3):
    """Tensors unlike the seed's stand-ins (another seed, scaled), float64, requiring grad."""
    t = xl.xl_learned(heads, d, {"seed": seed, "d_pos": d_pos})
    return {k: (2.0 * x).requires_grad_(True) for k, x in t.items()}


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("n,L,P,hkv", [(37, 8, 5, 2), (23, 7, 12, 4), (9, 4, 0, 1)])
def test_learned_tensors_kernel_equals_reference_with_gradients(n, L, P, hkv, with_state):
    """Outputs and gradients w.r.t. q, k, v, u, v_bias, w_r: segmented kernel == dense definition,
    float64, causal, sizes off the segment grid, with and without a memory from ``state``."""
    q, k, v = _qkv(n, hkv=hkv, grad=True)
    own = _learned(d_pos=24)
    kf, vf, state = k, v, None
    if with_state:  # a memory of S keys (a multiple of L, so the reference's segments align)
        S = L * max(1, -(-P // L))
        _, mk, mv = _qkv(S, hkv=hkv, seed=5)
        state, kf, vf = (mk, mv), torch.cat([mk, k], 2), torch.cat([mv, v], 2)
    out = _run(q, k, v, segment_len=L, mem_len=P, d_pos=24, state=state, **own).out
    ref = xl.xl_reference(q, kf, vf, causal=True, segment_len=L, mem_len=P, d_pos=24, **own)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    leaves = (q, k, v, *own.values())
    got = torch.autograd.grad(out, leaves, g)
    want = torch.autograd.grad(ref, leaves, g)
    for name, a, b in zip(("q", "k", "v", *own), got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11, msg=lambda m, name=name: f"d{name}: {m}")
    assert all(x.abs().sum() > 0 for x in got[3:])  # gradients do reach u, v_bias, W_r


@pytest.mark.parametrize("grad", [False, True])
def test_seed_tensors_given_reproduce_the_seed_path(grad):
    """Passing the seed's own u, v_bias, W_r (the spec's ``learned`` values) gives exactly the
    cached stand-ins' output, on the autograd path and on the buffered inference path."""
    q, k, v = _qkv(29, hkv=2, grad=grad)
    params = SPEC.resolve_params(dict(segment_len=8, mem_len=6))
    own = SPEC.learned(4, 16, params)
    with torch.set_grad_enabled(grad):
        seeded = _run(q, k, v, **params).out
        given = _run(q, k, v, **params, **own).out
    assert torch.equal(seeded, given)
    ref = xl.xl_reference(q, k, v, causal=True, **params, **own)
    torch.testing.assert_close(ref, xl.xl_reference(q, k, v, causal=True, **params), rtol=0, atol=0)


def test_learned_spec_fields_and_bad_shapes():
    assert SPEC.relative_positions and SPEC.learned is xl.xl_learned
    own = SPEC.learned(4, 16, SPEC.resolve_params({"d_pos": 8}))
    assert {k: tuple(t.shape) for k, t in own.items()} == {"u": (4, 16), "v_bias": (4, 16), "w_r": (4, 8, 16)}
    assert own["u"].data_ptr() != xl.xl_parameters(4, 16)[0].data_ptr()  # a copy, not the cache
    q, k, v = _qkv(8)
    with pytest.raises(ValueError, match=r"w_r must be \[4, 64, 16\]"):
        _run(q, k, v, w_r=own["w_r"])
