"""The linear-attention engine (``attnbench.engines.linear_chunks``) at its span boundaries.

The variants' own tests (test_linear.py) run at sizes where a call is one span; here spans are
made tiny (``span_rows`` patched to 1, 3, 7 rows), so every path crosses many of them:

* outputs and gradients equal the dense definition (``reference_fn``), causal or not, N != M
  both ways, GQA, causal blocks of 1 and of sizes that do not divide N; ``gradcheck`` in fp64
  through the custom backward, a state carried from one call into the next included;
* FAVOR+'s running log-scale: keys whose scales rise span after span (every span rescales the
  state) stay exact in fp32, and the state's scale is the largest key log-scale;
* causal outputs never depend on later tokens, bit for bit, across spans;
* training saves no features (saved-tensor hooks count the bytes) and its measured peak grows
  like O(n d), far slower than the O(n r) of phi(Q) and phi(K).
* the hand-derived causal backward (through ``engine.run``): fp64 gradcheck of q, k, v and an
  incoming state, with gradients arriving at the output and the final state, spans of several
  blocks, short last blocks, GQA, N != M both ways; any subset of inputs; fp32 under rising
  key log-scales against the fp64 definition.
"""
from __future__ import annotations

import pytest
import torch

import attnbench.variants.linear as L
from attnbench import Shape, get
from attnbench.catalog import all_specs
from attnbench.check import check_case
from attnbench.engines import linear_chunks as engine
from attnbench.harness import memory

# every variant the linear-attention engine runs, from the registry
VARIANTS = [s.name for s in all_specs() if s.forward.__module__ == L.__name__]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one torch thread (conftest.one_thread)."""


@pytest.fixture
def spans(monkeypatch):
    """spans(rows): every call from now on cuts its sequences into spans of ``rows`` rows."""
    return lambda rows: monkeypatch.setattr(engine, "span_rows", lambda *_: rows)


def _qkv(n, m, hkv=2, *, heads=4, d=8, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n, d, generator=g, dtype=dtype)
    k = torch.randn(1, hkv, m, d, generator=g, dtype=dtype)
    v = torch.randn(1, hkv, m, d, generator=g, dtype=dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def _params(name):
    """Small r for FAVOR+ (fast tests); the others have no parameter to set."""
    return {"nb_features": 16} if name == "performer@favor" else {}


def _grads(out, inputs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, g)


# --------------------------------------------------------------------- against the definition
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rows", [1, 3, 7])
def test_tiny_spans_equal_the_definition_outputs_and_grads(variant, rows, spans):
    """Spans of 1, 3, 7 rows (none divides N or M), causal blocks of 1 and 4: outputs and
    gradients of q, k, v equal the dense definition's, N = M, N < M (cross), N > M (causal
    rows before every key), one K/V head for 4 query heads and two."""
    spec, params = get(variant), _params(variant)
    spans(rows)
    for (n, m, hkv), causal, chunk in [((13, 13, 2), False, 4), ((13, 13, 2), True, 4), ((11, 17, 1), True, 1),
                                       ((17, 11, 2), True, 4), ((11, 17, 1), False, 4), ((17, 11, 2), True, 5)]:
        q, k, v = _qkv(n, m, hkv, grad=True)
        got = spec(q, k, v, causal=causal, chunk=chunk, **params).out
        want = spec.reference_fn(q, k, v, causal=causal, **{**spec.defaults, **params})
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=f"{(n, m, hkv, causal, chunk)}")
        for a, b in zip(_grads(got, (q, k, v)), _grads(want, (q, k, v))):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=f"grads {(n, m, hkv, causal, chunk)}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_harness_check_with_tiny_spans(variant, dtype, spans):
    """The harness's own check (outputs and gradients against the definition, its tolerance
    rule) with 5-row spans: batch 2, GQA, causal and not."""
    spans(5)
    for causal in (False, True):
        sh = Shape(batch=2, heads=4, kv_heads=2, seq_len=23, kv_len=31, head_dim=8, dtype=dtype, causal=causal)
        res = check_case(get(variant), sh, grads=True, params={"chunk": 3, **_params(variant)})
        assert res.status == "ok", f"{variant} causal={causal}: {res.reasons}"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_through_the_custom_backward(variant, causal, spans):
    """torch.autograd.gradcheck in fp64: a prefill of 5 tokens, then 3 more continued from its
    state (the state's gradient flows from the second call into the first), spans of 2 rows."""
    spec, params = get(variant), _params(variant)
    spans(2)
    q, k, v = _qkv(8, 8, 1, heads=2, d=3, grad=True)

    def two_calls(q, k, v):
        first = spec(q[:, :, :5], k[:, :, :5], v[:, :, :5], causal=causal, chunk=2, **params)
        rest = spec(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], causal=causal, state=first.state, chunk=2, **params)
        return first.out, rest.out

    assert torch.autograd.gradcheck(two_calls, (q, k, v))


# --------------------------------------------------------------------- the running log-scale
@pytest.mark.parametrize("causal", [False, True])
def test_rising_key_scales_rescale_the_state_exactly(causal, spans):
    """Key norms grow along the sequence (log-scales from ~0 to ~-60 and up to ~+60 of the
    first keys'), so every 4-row span raises the running scale m and multiplies the state by
    exp(m - m') << 1: fp32 stays finite and matches the fp64 definition; the state's scale is
    the largest key log-scale, and its sums equal the dense ones on that scale."""
    spec = get("performer@favor")
    spans(4)
    q, k, v = _qkv(40, 40, 2, d=16, dtype=torch.float32)
    k = k * torch.linspace(0.05, 6.0, 40)[:, None]
    out = spec(q, k, v, causal=causal, chunk=3)
    want = spec.reference_fn(q.double(), k.double(), v.double(), causal=causal, **spec.defaults)
    assert torch.isfinite(out.out).all()
    torch.testing.assert_close(out.out.double(), want, rtol=1e-4, atol=1e-4)
    ws2 = L.favor_projection(16) * (16 ** -0.25 * L.LOG2E)
    f, c = L.favor_key_features(k.double(), ws2.double())  # [1, 2, 40, r], [1, 2, 40]
    torch.testing.assert_close(out.state.log_scale.double(), c.amax(-1), rtol=1e-5, atol=1e-5)
    scaled = f * torch.exp(c - c.amax(-1, keepdim=True)).unsqueeze(-1)  # phi(k) on the final scale
    kv = scaled.transpose(-1, -2) @ torch.cat([v.double(), torch.ones_like(v[..., :1]).double()], -1)
    torch.testing.assert_close(out.state.kv.double(), kv, rtol=1e-4, atol=1e-4 * kv.abs().max().item())


# --------------------------------------------------------------------- causality and decode
@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_never_leaks_across_spans(variant, spans):
    """With 3-row spans and blocks of 2: changing tokens from t on leaves every earlier output
    the same bit for bit, t at span and block boundaries and inside them."""
    spec = get(variant)
    spans(3)
    q, k, v = _qkv(20, 20, dtype=torch.float32)
    base = spec(q, k, v, causal=True, chunk=2).out
    for t in (1, 2, 3, 5, 6, 19):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        q2[:, :, t:], k2[:, :, t:], v2[:, :, t:] = 5 * q2[:, :, t:], 5 * k2[:, :, t:], 100.0
        got = spec(q2, k2, v2, causal=True, chunk=2).out
        assert torch.equal(got[:, :, :t], base[:, :, :t]), f"t={t}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_then_decode_with_tiny_spans(variant, spans):
    """A prefill cut into 3-row spans, then single-token steps from its state, equals the full
    causal call; decode_state (streamed in spans) equals the prefill's state."""
    spec = get(variant)
    spans(3)
    q, k, v = _qkv(30, 30)
    full = spec(q, k, v, causal=True, chunk=4).out
    pre = spec(q[:, :, :17], k[:, :, :17], v[:, :, :17], causal=True, chunk=4)
    st = pre.state
    for t in range(17, 30):
        res = spec(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], causal=True, state=st)
        torch.testing.assert_close(res.out[:, :, 0], full[:, :, t], rtol=0, atol=1e-12)
        st = res.state
    direct = spec.decode_state(k[:, :, :17], v[:, :, :17], **spec.defaults)
    torch.testing.assert_close(direct.kv, pre.state.kv, rtol=0, atol=1e-12 * direct.kv.abs().max().item())


# --------------------------------------------------------------------- memory of training
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("causal", [False, True])
def test_training_saves_no_features(variant, causal):
    """Saved-tensor hooks see everything autograd keeps for the backward: beyond the inputs
    (kept by reference), a few states [r, D + 1] and log-scales — under an eighth of phi(Q)
    [B, H, N, r] alone, which the previous implementation saved (with phi(K) and more)."""
    spec = get(variant)
    q, k, v = _qkv(1024, 1024, 2, heads=2, d=16, dtype=torch.float32, grad=True)
    inputs = {t.untyped_storage().data_ptr() for t in (q, k, v)}
    extra = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in inputs:
            extra.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = spec(q, k, v, causal=causal).out
    r = spec.defaults.get("nb_features", 16)
    phi_q = q.shape[0] * q.shape[1] * q.shape[2] * r * 4
    assert 0 < sum(extra) < phi_q / 8, (sum(extra), phi_q)
    assert all(g is not None for g in torch.autograd.grad(out.sum(), (q, k, v)))


def _training_peak(spec, n, causal) -> int:
    """Resident peak above the inputs of forward + backward at n (H = 2, D = 16), warmed up."""
    q, k, v = _qkv(n, n, 2, heads=2, d=16, dtype=torch.float32, grad=True)
    grad = torch.randn(q.shape)

    def step():
        out = spec(q, k, v, causal=causal).out
        return torch.autograd.grad(out, (q, k, v), grad)

    step()
    return memory.peak_bytes(step)


@pytest.mark.parametrize("causal", [False, True])
def test_training_peak_grows_like_n_d(causal):
    """Measured (resident high-water mark): from n = 4096 to 20480 at H = 2, D = 16, r = 256
    (full spans at both), the peak of forward + backward grows by ~10 MiB (the output, its
    gradient, dq, dk, dv: 640 B per token; the heap adds +-10 MiB of noise) — not by the 64 MiB
    that phi(Q) and phi(K) [B, H, n, r] alone would add."""
    spec = get("performer@favor")
    grow = _training_peak(spec, 20480, causal) - _training_peak(spec, 4096, causal)
    phi_grow = 2 * 2 * (20480 - 4096) * 256 * 4
    assert grow < phi_grow / 2, f"grew {grow / 2**20:.1f} MiB (phi(Q), phi(K): {phi_grow / 2**20:.0f} MiB)"


# --------------------------------------------------------------------- the causal backward by hand
def _maps(d):
    """The engine's feature maps at head dim d (r = 8 for FAVOR+) and the eps each runs with."""
    ws2 = L.favor_projection(d, 8) * (d ** -0.25 * L.LOG2E)
    return {"favor": (L.favor_map(ws2), 0.0), "elu": (L.elu_map(d), 0.0), "relu": (L.relu_map(d), L.RELU_EPS)}


def _unscaled(state):
    """The state's sums off its log-scale, kv exp(m): a function of the keys alone (the scale m is
    a stabilizer without gradient), so its finite differences are the true gradient."""
    return state.kv if state.log_scale is None else state.kv * state.log_scale.exp()[..., None, None]


# (N, M, Hkv, H, chunk, span rows, keys in the incoming state, D)
CAUSAL_CASES = [
    (9, 9, 1, 3, 2, 4, 5, 3),  # GQA 3:1; spans of 2 blocks, the last span one block of 1 row
    (7, 11, 2, 4, 3, 7, 4, 4),  # N < M: 4 keys absorbed before the first block; spans of 2 blocks
    (11, 6, 2, 2, 2, 5, 0, 3),  # N > M: 5 queries see no key (and no state)
    (10, 10, 1, 2, 3, 8, 3, 5),  # blocks of 3 and a last one of 1 in each 6-row span
]


@pytest.mark.parametrize("name", ["favor", "elu", "relu"])
@pytest.mark.parametrize("n, m, hkv, h, chunk, rows, before, d", CAUSAL_CASES)
def test_causal_backward_gradcheck(name, n, m, hkv, h, chunk, rows, before, d):
    """gradcheck (fp64) of the hand-derived causal backward through ``engine.run``: q, k, v and
    the incoming state's kv, with gradients arriving at both the output and the final state
    (so every span's state gradient is nonzero), several spans of several blocks."""
    fmap, eps = _maps(d)[name]
    q, k, v = _qkv(n, m, hkv, heads=h, d=d, grad=True)
    pk, pv = _qkv(1, before, hkv, heads=h, d=d, seed=1)[1:]  # the keys of the incoming state
    st = engine.state_of(fmap, pk, pv, torch.float64) if before else None
    ins = (q, k, v) + (() if st is None else (st.kv.clone().requires_grad_(),))

    def call(q, k, v, *kv):
        state = st._replace(kv=kv[0]) if kv else None
        out, new = engine.run(fmap, q, k, v, causal=True, state=state, chunk=chunk, eps=eps,
                              dt=torch.float64, rows=rows)
        return out, _unscaled(new)

    assert torch.autograd.gradcheck(call, ins)


@pytest.mark.parametrize("name", ["favor", "elu"])
def test_causal_backward_with_some_inputs_only(name):
    """Asking for the gradient of q alone, k alone, v alone or the state alone gives what the
    full backward gives (an input that needs none is skipped, the rest unchanged)."""
    fmap, eps = _maps(4)[name]
    q, k, v = _qkv(9, 10, 1, heads=2, d=4)
    st = engine.state_of(fmap, *_qkv(1, 3, 1, heads=2, d=4, seed=1)[1:], torch.float64)
    ins = (q, k, v, st.kv)
    g = torch.randn(1, 2, 9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def grads(wanted):
        xs = [x.detach().requires_grad_(i in wanted) for i, x in enumerate(ins)]
        out, new = engine.run(fmap, *xs[:3], causal=True, state=st._replace(kv=xs[3]), chunk=2, eps=eps,
                              dt=torch.float64, rows=4)
        return torch.autograd.grad((out * g).sum() + _unscaled(new).sum(), [xs[i] for i in wanted])

    full = grads(range(4))
    for i in range(4):
        torch.testing.assert_close(grads([i])[0], full[i], rtol=0, atol=1e-12)


def test_causal_gradients_with_rising_key_scales_in_fp32(spans):
    """Key log-scales rising span after span (as in the output test above): the fp32 causal
    gradients of q, k, v stay finite and match the fp64 definition's."""
    spec = get("performer@favor")
    spans(4)
    q, k, v = _qkv(40, 40, 2, d=16, dtype=torch.float32)
    k = k * torch.linspace(0.05, 6.0, 40)[:, None]
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    x64 = [t.double().requires_grad_() for t in (q, k, v)]
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = torch.autograd.grad(spec(*xs, causal=True, chunk=3).out, xs, g.float())
    want = torch.autograd.grad(spec.reference_fn(*x64, causal=True, **spec.defaults), x64, g)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5 * b.abs().max().item())
