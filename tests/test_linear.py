"""Linear attention (performer@favor, linear@elu, linear@relu): each kernel path against the
variant's own dense definition, and the properties the definition promises.

* outputs and gradients equal ``reference_fn`` (``check_case``): causal or not, odd N that are
  not multiples of the chunk, N != M both ways, batch 2, H 4, K/V heads 4 / 2 / 1, fp32, fp64;
* any chunk size gives the dense result; causal outputs never depend on later tokens (bit for
  bit); decode from a running state equals the full causal output at every position;
* FAVOR+'s error against exact softmax falls as the number of random features grows, and its
  stabilization keeps keys of any scale finite and exact;
* bad parameters raise ValueError naming the value and what is allowed.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import attnbench.variants.linear as L  # registers the variants (also imported by attnbench.variants)
from attnbench import reference
from attnbench.check import check_case
from attnbench import Shape, get

VARIANTS = ("performer@favor", "linear@elu", "linear@relu")
# (N, M, kv_heads): odd sizes past the default chunk (64) and not multiples of it, cross both
# ways (N > M: causal rows with no key), a single query against a cache.
SIZES = [(37, 37, 1), (100, 100, 2), (129, 129, 4), (37, 91, 2), (91, 37, 4), (1, 300, 1)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one torch thread (conftest.one_thread)."""


def _shape(n, m, hkv=4, *, causal, dtype="float64", heads=4, batch=2, d=16, mode="fwd"):
    return Shape(batch=batch, heads=heads, kv_heads=hkv, seq_len=n, kv_len=m, head_dim=d,
                 dtype=dtype, causal=causal, mode=mode)


def _qkv(n, m, hkv=2, *, heads=4, d=16, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = scale * torch.randn(2, heads, n, d, generator=g, dtype=dtype)
    k = scale * torch.randn(2, hkv, m, d, generator=g, dtype=dtype)
    v = torch.randn(2, hkv, m, d, generator=g, dtype=dtype)
    return q, k, v


# --------------------------------------------------------------------- against the definition
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_own_definition_outputs_and_grads(variant, causal, dtype):
    spec = get(variant)
    for n, m, hkv in SIZES:
        sh = _shape(n, m, hkv, causal=causal, dtype=dtype)
        res = check_case(spec, sh, grads=True)
        assert res.status == "ok", f"{variant} {sh}: {res.reasons} {res.errors} {res.allowed}"
    # a small chunk: many chunks, a partial last one, N != M offsets inside chunks
    res = check_case(spec, _shape(91, 37, 2, causal=causal, dtype=dtype), params={"chunk": 16})
    assert res.status == "ok", res.reasons


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n,m", [(129, 129), (100, 137), (137, 100)])
def test_any_chunk_equals_dense(variant, n, m):
    spec = get(variant)
    q, k, v = _qkv(n, m)
    want = spec.reference_fn(q, k, v, causal=True, **spec.defaults)
    for chunk in (1, 7, 16, 64, 1000):
        got = spec(q, k, v, causal=True, chunk=chunk).out
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=f"chunk={chunk}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_rows_and_gqa_by_broadcast(variant):
    """reference_fn(rows=...) returns those rows; K/V heads are shared by groups of query heads
    (head h reads K/V head h // (H / Hkv)) exactly as if K/V were copied per head."""
    spec = get(variant)
    q, k, v = _qkv(50, 70, hkv=2)
    for causal in (False, True):
        full = spec.reference_fn(q, k, v, causal=causal, **spec.defaults)
        rows = torch.tensor([0, 13, 49])
        torch.testing.assert_close(spec.reference_fn(q, k, v, causal=causal, rows=rows, **spec.defaults),
                                   full[:, :, rows], rtol=0, atol=1e-13)
        got = spec(q, k, v, causal=causal).out
        copied = spec(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), causal=causal).out
        torch.testing.assert_close(got, copied, rtol=0, atol=1e-12)
        torch.testing.assert_close(got, full, rtol=0, atol=1e-12)


def test_causal_rows_without_keys_are_zero():
    """N > M, bottom-right aligned: query i < N - M sees no key and outputs 0 (as the dense
    reference does), with finite gradients."""
    for variant in VARIANTS:
        q, k, v = _qkv(20, 5)
        q.requires_grad_(True)
        out = get(variant)(q, k, v, causal=True, chunk=4).out
        assert (out[:, :, :15] == 0).all() and (out[:, :, 15:].abs() > 0).any()
        (g,) = torch.autograd.grad(out.sum(), q)
        assert torch.isfinite(g).all()


# --------------------------------------------------------------------- causality and decode
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n,m,chunk", [(100, 100, 16), (100, 100, 64), (60, 90, 16), (90, 60, 7)])
def test_causal_never_leaks_the_future(variant, n, m, chunk):
    """Changing the queries, keys and values from position t on (keys: those no earlier query may
    see) leaves every earlier output bit for bit the same — at chunk boundaries and inside."""
    spec = get(variant)
    q, k, v = _qkv(n, m, dtype=torch.float32)
    base = spec(q, k, v, causal=True, chunk=chunk).out
    off = m - n
    for t in (1, chunk - 1, chunk, chunk + 3, n - 1):
        if not 0 < t < n or t + off < 0:
            continue
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        q2[:, :, t:] = 5 * torch.randn_like(q2[:, :, t:])
        k2[:, :, t + off:] = 5 * torch.randn_like(k2[:, :, t + off:])  # first key query t-1 cannot see
        v2[:, :, t + off:] = 100.0
        got = spec(q2, k2, v2, causal=True, chunk=chunk).out
        assert torch.equal(got[:, :, :t], base[:, :, :t]), f"t={t}"
        assert not torch.equal(got[:, :, t:], base[:, :, t:])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_step_by_step_equals_causal(variant, dtype):
    """decode_state of the first t tokens, then one step with token t, equals the full causal
    output at position t, for every t (t = 0: an empty cache); chaining the returned states
    (prefill, then steps) gives the same; the state counts its keys."""
    spec = get(variant)
    n = 70
    q, k, v = _qkv(n, n, dtype=dtype)
    full = spec(q, k, v, causal=True).out
    tol = dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for t in range(n):
        st = spec.decode_state(k[:, :, :t], v[:, :, :t], **spec.defaults)
        assert st.count == t
        for causal in (True, False):  # one query sees the whole cache either way
            res = spec(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], causal=causal, state=st)
            torch.testing.assert_close(res.out[:, :, 0], full[:, :, t], **tol, msg=f"t={t}")
            assert res.state.count == t + 1
    # prefill 30 tokens, then 40 chained single-token steps
    pre = spec(q[:, :, :30], k[:, :, :30], v[:, :, :30], causal=True)
    torch.testing.assert_close(pre.out, full[:, :, :30], **tol)
    st = pre.state
    for t in range(30, n):
        res = spec(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], causal=True, state=st)
        torch.testing.assert_close(res.out[:, :, 0], full[:, :, t], **tol, msg=f"chained t={t}")
        st = res.state
    # the state is the same whichever way it was built
    direct = spec.decode_state(k, v, **spec.defaults)
    scale = 1.0 if direct.log_scale is None else torch.exp(st.log_scale - direct.log_scale)[..., None, None]
    rel = 1e-12 if dtype == torch.float64 else 1e-5  # sums of signed terms: relative to their size
    torch.testing.assert_close(st.kv * scale, direct.kv, rtol=0, atol=rel * direct.kv.abs().max().item())


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_continues_a_block_of_new_tokens(variant):
    """With a state of t keys, L new tokens with N = L (or L + 1) queries continue the causal
    sequence; N > L + 1 would hide part of the state from the first query: ValueError."""
    spec = get(variant)
    q, k, v = _qkv(90, 90)
    full = spec(q, k, v, causal=True).out
    st = spec.decode_state(k[:, :, :40], v[:, :, :40], **spec.defaults)
    got = spec(q[:, :, 40:], k[:, :, 40:], v[:, :, 40:], causal=True, state=st, chunk=16).out
    torch.testing.assert_close(got, full[:, :, 40:], rtol=0, atol=1e-12)
    got = spec(q[:, :, 39:], k[:, :, 40:], v[:, :, 40:], causal=True, state=st, chunk=16).out
    torch.testing.assert_close(got, full[:, :, 39:], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="N must be <= new keys"):
        spec(q[:, :, 38:], k[:, :, 40:], v[:, :, 40:], causal=True, state=st)
    # non-causal with a state: every query sees the cache and the new keys
    nc = spec(q, k, v, causal=False).out
    got = spec(q, k[:, :, 40:], v[:, :, 40:], causal=False, state=st).out
    torch.testing.assert_close(got, nc, rtol=0, atol=1e-12)


def test_state_of_another_variant_is_refused():
    q, k, v = _qkv(10, 10)
    st = get("linear@elu").decode_state(k, v)
    with pytest.raises(ValueError, match="state"):
        get("performer@favor")(q[:, :, :1], k[:, :, :1], v[:, :, :1], state=st)


# --------------------------------------------------------------------- FAVOR+ as an estimator
def test_favor_error_vs_softmax_falls_with_features():
    """Mean relative error against exact softmax over 3 seeds, q, k ~ 0.5 N(0, 1) (where the
    estimator's variance is moderate): each 4x more features cuts it (~1/sqrt(r) in theory)."""
    q, k, v = _qkv(128, 128, hkv=4, d=32, scale=0.5)
    errs = {}
    for causal in (False, True):
        exact = reference.attention(q, k, v, causal=causal).out
        for r in (16, 64, 256, 1024):
            e = [((get("performer@favor")(q, k, v, causal=causal, nb_features=r, seed=s).out - exact).norm()
                  / exact.norm()).item() for s in range(3)]
            errs[causal, r] = sum(e) / 3
        seq = [errs[causal, r] for r in (16, 64, 256, 1024)]
        assert all(b < 0.8 * a for a, b in zip(seq, seq[1:])), (causal, seq)
        assert seq[-1] < 0.15, seq


@pytest.mark.parametrize("orthogonal", [True, False])
def test_favor_features_estimate_the_softmax_kernel_without_bias(orthogonal):
    """E_W[phi(x) . phi(y)] = exp(x . y) with phi(x) = exp(W x - |x|^2 / 2) / sqrt(r): averaged
    over 300 draws (seeds) the estimate is within 3% (~3 standard errors) of the kernel, for a few (x, y) pairs —
    the rows of the orthogonal blocks, rescaled by chi norms, are marginally N(0, I)."""
    d, r = 8, 64
    g = torch.Generator().manual_seed(5)
    xs = 0.25 * torch.randn(4, d, generator=g, dtype=torch.float64)  # |x + y|^2 ~ 1: variance ~ 1 / r
    ys = 0.25 * torch.randn(4, d, generator=g, dtype=torch.float64)
    est = torch.zeros(4, dtype=torch.float64)
    half_norms = ((xs * xs).sum(1, keepdim=True) + (ys * ys).sum(1, keepdim=True)) / 2
    for s in range(300):
        w = L.favor_projection(d, r, seed=s, orthogonal=orthogonal)
        est += torch.exp((xs + ys) @ w.T - half_norms).mean(1)  # phi(x) . phi(y), r features
    torch.testing.assert_close(est / 300, torch.exp((xs * ys).sum(1)), rtol=0.03, atol=0)


def test_features_reproducible_orthogonal_and_redrawn():
    w = L.favor_projection(16, 40, seed=3)
    assert w.shape == (40, 16) and torch.equal(w, L.favor_projection(16, 40, seed=3))
    assert not torch.allclose(w, L.favor_projection(16, 40, seed=4))
    assert not torch.allclose(w[:16], L.favor_projection(32, 40, seed=3)[:16, :16])  # (D, r) seed it too
    # rows of one block are orthogonal; lengths are chi_16 draws (mean ~ 3.9), not all equal
    unit = w / w.norm(dim=1, keepdim=True)
    for blk in (unit[:16], unit[16:32], unit[32:]):
        torch.testing.assert_close(blk @ blk.T, torch.eye(blk.shape[0], dtype=w.dtype), rtol=0, atol=1e-12)
    assert 2.5 < w.norm(dim=1).mean() < 5.5 and w.norm(dim=1).std() > 0.1
    iid = L.favor_projection(16, 40, seed=3, orthogonal=False)
    assert (iid[:16] @ iid[:16].T - torch.diag((iid[:16] ** 2).sum(1))).abs().max() > 1.0
    # explicit features equal the drawn ones; another seed is another estimate
    q, k, v = _qkv(30, 30, d=16)
    a = get("performer@favor")(q, k, v, nb_features=40, seed=3).out
    b = get("performer@favor")(q, k, v, features=w).out
    torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    assert not torch.allclose(a, get("performer@favor")(q, k, v, nb_features=40, seed=4).out)


def test_favor_module_holds_and_redraws_features():
    m = L.FavorAttention(16, nb_features=40, seed=3)
    q, k, v = _qkv(30, 30, d=16, dtype=torch.float32)
    ours = m(q, k, v, causal=True).out
    torch.testing.assert_close(ours, get("performer@favor")(q, k, v, causal=True, nb_features=40, seed=3).out)
    m.redraw()
    assert m.seed == 4 and torch.equal(m.projection, L.favor_projection(16, 40, seed=4).float())
    assert "projection" in m.state_dict()


@pytest.mark.parametrize("causal", [False, True])
def test_favor_keys_of_any_scale_stay_finite_and_exact(causal):
    """Keys of norm ~ 0.01 next to keys of norm ~ 60 (their log-features differ by hundreds):
    every feature is kept <= 1 on a running log-scale, so fp32 neither overflows nor loses the
    small keys' share, and the result matches the fp64 definition; decode agrees."""
    q, k, v = _qkv(96, 96, hkv=2, d=32, dtype=torch.float32)
    scale = torch.ones(96)
    scale[:30], scale[60:70] = 1e-2, 8.0  # the big keys come late: the state must rescale
    k = k * scale[:, None]
    spec = get("performer@favor")
    out = spec(q, k, v, causal=causal, chunk=16).out
    want = spec.reference_fn(q.double(), k.double(), v.double(), causal=causal, **spec.defaults)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-4)
    st = spec.decode_state(k[:, :, :95], v[:, :, :95])
    step = spec(q[:, :, 95:], k[:, :, 95:], v[:, :, 95:], state=st).out
    torch.testing.assert_close(step.double(), want[:, :, 95:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_computes_in_fp32(variant, dtype):
    spec = get(variant)
    dt = getattr(torch, dtype)
    q, k, v = (t.to(dt) for t in _qkv(50, 50))
    for causal in (False, True):
        out = spec(q, k, v, causal=causal).out
        assert out.dtype == dt
        want = spec.reference_fn(q.double(), k.double(), v.double(), causal=causal, **spec.defaults)
        # only the final rounding to 16 bits: a few units in the last place
        torch.testing.assert_close(out.double(), want, rtol=2e-2 if dtype == "bfloat16" else 2e-3, atol=1e-2)


# --------------------------------------------------------------------- parameters
@pytest.mark.parametrize("variant,params,match", [
    ("performer@favor", {"nb_features": 0}, r"nb_features=0(: must be| is not allowed; allowed:) an integer >= 1"),
    ("performer@favor", {"nb_features": -8}, r"nb_features=-8"),
    ("performer@favor", {"nb_features": 2.5}, r"nb_features=2.5"),
    ("performer@favor", {"nb_features": True}, r"nb_features=True"),
    ("performer@favor", {"seed": -1}, r"seed=-1(: must be| is not allowed; allowed:) an integer >= 0"),
    ("performer@favor", {"orthogonal": "yes"}, r"(orthogonal='yes': must be True|orthogonal=yes is not allowed; allowed: true or false)"),
    ("performer@favor", {"chunk": 0}, r"chunk=0(: must be| is not allowed; allowed:) an integer >= 1"),
    ("performer@favor", {"features": torch.randn(8, 5)}, r"features: must be a tensor \[r, D=16\]"),
    ("linear@elu", {"chunk": -1}, r"chunk=-1"),
    ("linear@relu", {"eps": -1e-3}, r"eps=-0.001 is not allowed; allowed: a number >= 0"),
    ("linear@relu", {"eps": float("inf")}, r"eps=inf"),
])
def test_bad_params_raise_value_error(variant, params, match):
    q, k, v = _qkv(8, 8)
    with pytest.raises(ValueError, match=match):
        get(variant)(q, k, v, causal=True, **params)
    if variant == "performer@favor" and "features" not in params:
        with pytest.raises(ValueError, match=match):
            get(variant).decode_state(k, v, **{**get(variant).defaults, **params})


def test_bad_shapes_raise_value_error():
    q, k, v = _qkv(8, 8, hkv=3, heads=4)
    with pytest.raises(ValueError, match="heads=4 is not a multiple of kv_heads=3"):
        get("performer@favor")(q, k, v)
    with pytest.raises(ValueError, match="do not match"):
        get("linear@elu")(q[..., :8], k[:, :1], v[:, :1])


# --------------------------------------------------------------------- registry and harness
def test_specs_declare_what_they_are():
    for name in VARIANTS:
        s = get(name)
        assert s.family == "linear" and not s.exact and s.reference_fn and s.decode_state
        assert s.target_fn is None and s.causal and s.cross and s.kv_heads
    assert get("performer").name == "performer@favor" and get("linear").name == "linear@elu"
    assert get("performer@favor").defaults["nb_features"] == 256


@pytest.mark.parametrize("variant", VARIANTS)
def test_cost_model(variant):
    """FLOPs grow linearly in n; the forward's extra memory is the output plus a working set of
    fixed size (never features for the whole sequence), with autograd O(n d) too; a decode step
    costs the same at any cache length."""
    s = get(variant)
    base = Shape(batch=1, heads=8, kv_heads=8, seq_len=1024, kv_len=1024, head_dim=64)
    for causal in (False, True):
        a, b = replace(base, causal=causal), replace(base, seq_len=4096, kv_len=4096, causal=causal)
        assert 3.9 < s.flops(b) / s.flops(a) < 4.1
        out_growth = 8 * (4096 - 1024) * 64 * 4  # the output [B, H, N, D]
        assert s.predicted_peak_bytes(b) - s.predicted_peak_bytes(a) == out_growth
        big = replace(base, seq_len=16384, kv_len=16384, causal=causal)
        assert s.predicted_peak_bytes(big) < 48e6  # the output is 33.6 MB, phi(Q) alone 134 MB
        ga, gb, gbig = (s.predicted_peak_bytes(replace(x, mode="fwd+bwd")) for x in (a, b, big))
        assert 3.9 < (gbig - gb) / (gb - ga) < 4.1  # a constant plus a linear term
    d1 = replace(base, seq_len=1, kv_len=1024, mode="decode")
    assert s.flops(d1) == s.flops(replace(d1, kv_len=65536)) and s.flops(d1) < s.flops(base) / 500
    if variant == "performer@favor":  # features, state, read: 2 r D each for q and k, ... ~5e8
        r, d, n, h = 256, 64, 1024, 8
        assert s.flops(base) == pytest.approx(h * n * (2 * r * d * 2 + 2 * r * (d + 1) * 2), rel=0.05)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd", "decode"])
def test_harness_rows_are_ok(variant, mode):
    """run_case checks the kernel against its own definition (decode: the step's output after
    a state of M-1 keys) and reports rel_err against softmax."""
    from attnbench.harness.execute import run_json

    for causal in (False, True):
        n = 1 if mode == "decode" else 70
        case = {"variant": variant, "shape": dict(batch=1, heads=4, kv_heads=2, seq_len=n, kv_len=70,
                                                   head_dim=16, mode=mode, causal=causal)}
        row = run_json(case, {"timing": {"budget_s": 0.01, "min_repeats": 2}, "memory": False})
        assert row["status"] == "ok", row
        assert row["max_abs_err"] <= row["allowed_err"]
        assert row["rel_err"] is not None and 0 < row["rel_err"] < 2


def test_first_call_in_inference_mode_then_autograd():
    """The cached random features must not be inference tensors: a timing pass under
    torch.inference_mode followed by a backward pass with the same features works."""
    L._scaled.cache_clear()
    L._draw.cache_clear()
    q, k, v = _qkv(20, 20, d=8, dtype=torch.float32)
    with torch.inference_mode():
        get("performer@favor")(q, k, v, nb_features=24, seed=11)
    q.requires_grad_(True)
    out = get("performer@favor")(q, k, v, nb_features=24, seed=11, causal=True).out
    (g,) = torch.autograd.grad(out.sum(), q)
    assert torch.isfinite(g).all()
