"""Every exact kernel in the registry against the dense reference: outputs and gradients.

The kernel list comes from the registry (``names('all')``), never from a list written here, so
a newly registered exact variant is tested without touching this file. A case the kernel cannot
run is skipped with its reasons (never silently); every other case must be ``ok``.

Compiled kernels (``*@flex``) compile once per shape (7-20 s on CPU): their cases are few and
marked ``slow``. The rest of the grid runs in seconds.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import replace

import pytest
import torch

from attnbench import reference
from attnbench.check import check_case
from attnbench import AttnOutput, Shape, Unsupported, VariantSpec, get, names

HEADS = 8
KV_HEADS = (HEADS, HEADS // 4, 1)  # MHA, GQA, MQA
# (N, M): single query, odd square, cross both ways (N > M has query rows with no key when
# causal), decode-like.
SMALL_SIZES = [(1, 1), (7, 7), (37, 91), (91, 37), (1, 300)]
# (N, M, heads, kv_heads, causal, dtype), batch 1, head_dim 16: odd sizes past the kernels'
# block sizes (multi-block online softmax, SDPA's folded-GQA, is_causal and explicit-mask paths).
# Few and narrow: the fp64 reference with its gradients dominates their run time.
LARGE = [
    (1023, 1023, 4, 1, False, "float32"),
    (1023, 1023, 4, 2, True, "float64"),
    (1000, 1023, 2, 2, True, "float32"),
]
# Compiled kernels: a handful of fp32 shapes (each compiles).
COMPILED_SIZES = [
    (64, 64, HEADS, False),
    (64, 64, 1, True),
    (37, 91, HEADS, True),
    (1, 300, 2, True),
]


def _is_compiled(spec: VariantSpec) -> bool:
    return spec.kernel == "flex"


def _exact_specs() -> list[VariantSpec]:
    specs = [get(n) for n in names("all")]
    return [s for s in specs if s.exact and s.reference == "full"]


def _shape_id(s: Shape) -> str:
    mask = "causal" if s.causal else "nomask"
    return (f"{s.device}-{s.dtype}-b{s.batch}h{s.heads}kv{s.kv_heads}-n{s.seq_len}m{s.kv_len}"
            f"d{s.head_dim}-{mask}")


def _grid(device: str, dtypes: tuple[str, ...]) -> list[Shape]:
    shapes = [
        Shape(batch=2, heads=HEADS, kv_heads=hkv, seq_len=n, kv_len=m, head_dim=32,
              dtype=dt, device=device, causal=causal)
        for dt in dtypes for n, m in SMALL_SIZES for causal in (False, True) for hkv in KV_HEADS
    ]
    for n, m, h, hkv, causal, dt in LARGE:
        for x in (dt,) if device == "cpu" else dtypes:
            shapes.append(Shape(batch=1, heads=h, kv_heads=hkv, seq_len=n, kv_len=m, head_dim=16,
                                dtype=x, device=device, causal=causal))
    return shapes


def _compiled_grid(device: str, dtype: str) -> list[Shape]:
    return [Shape(batch=2, heads=HEADS, kv_heads=hkv, seq_len=n, kv_len=m, head_dim=32,
                  dtype=dtype, device=device, causal=causal)
            for n, m, hkv, causal in COMPILED_SIZES]


def _cases(spec: VariantSpec, device: str, dtypes: tuple[str, ...]) -> list[Shape]:
    """The shapes to run for ``spec``, deduplicated after its own K/V-head rule (mqa/gqa)."""
    grid = _compiled_grid(device, dtypes[0]) if _is_compiled(spec) else _grid(device, dtypes)
    seen: list[Shape] = []
    for s in grid:
        r = spec.resolve_shape(s)
        if r not in seen:
            seen.append(r)
    return seen


def _params(device: str, dtypes: tuple[str, ...]):
    out = []
    for spec in _exact_specs():
        marks = [pytest.mark.slow] if _is_compiled(spec) else []
        for s in _cases(spec, device, dtypes):
            out.append(pytest.param(spec.name, s, id=f"{spec.name}-{_shape_id(s)}", marks=marks))
    return out


def _check_and_assert(variant: str, shape: Shape):
    spec = get(variant)
    res = check_case(spec, shape, grads=True)
    if res.status == "unsupported":
        assert res.reasons, f"{variant}: unsupported without a reason"
        assert all(isinstance(r, str) and r.strip() for r in res.reasons), res.reasons
        pytest.skip(f"{variant} unsupported here: {'; '.join(res.reasons)}")
    detail = f"{variant} {shape}: {res.status}: {res.reasons} errors={res.errors} allowed={res.allowed}"
    assert res.status == "ok", detail
    assert res.errors["out"] <= res.allowed["out"], detail
    grad_reasons = spec.not_supported_reasons(replace(shape, mode="fwd+bwd"))
    if grad_reasons:
        # gradients not comparable here (no backward on this device): said so, not hidden
        assert any("gradients not checked" in r for r in res.reasons), detail
    else:
        assert {"dq", "dk", "dv"} <= set(res.errors), detail
        assert all(res.errors[g] <= res.allowed[g] for g in ("dq", "dk", "dv")), detail


def test_registry_has_exact_kernels_to_test():
    specs = _exact_specs()
    assert len(specs) >= 5
    assert "full@naive" in [s.name for s in specs]


@pytest.mark.parametrize("variant, shape", _params("cpu", ("float32", "float64")))
def test_kernel_matches_reference_cpu(variant, shape):
    _check_and_assert(variant, shape)


def _variant_params():
    return [pytest.param(s.name, id=s.name, marks=[pytest.mark.slow] if _is_compiled(s) else [])
            for s in _exact_specs()]


@pytest.mark.cuda
@pytest.mark.parametrize("variant", _variant_params())
def test_kernel_matches_reference_cuda(variant):
    """The same checks on CUDA in half precision: one test per kernel over the whole grid."""
    if not torch.cuda.is_available():  # conftest skips cuda-marked tests too; kept for direct runs
        pytest.skip("needs CUDA: torch.cuda.is_available() is False")
    spec = get(variant)
    failures, unsupported, passed = [], [], 0
    for shape in _cases(spec, "cuda", ("bfloat16", "float16")):
        res = check_case(spec, shape, grads=True)
        if res.status == "unsupported":
            assert res.reasons and all(isinstance(r, str) and r.strip() for r in res.reasons), res
            unsupported.append(f"{_shape_id(shape)}: {'; '.join(res.reasons)}")
            continue
        try:
            assert res.status == "ok"
            grad_reasons = spec.not_supported_reasons(replace(shape, mode="fwd+bwd"))
            assert grad_reasons or {"dq", "dk", "dv"} <= set(res.errors)
            passed += 1
        except AssertionError:
            failures.append(f"{_shape_id(shape)}: {res.status}: {res.reasons} errors={res.errors} "
                            f"allowed={res.allowed}")
    assert not failures, f"{variant}: {len(failures)} failing CUDA cases:\n" + "\n".join(failures)
    if not passed:
        pytest.skip(f"{variant} unsupported on CUDA for every case, e.g. {unsupported[0]}")
    if unsupported:  # stated, not silent
        warnings.warn(f"{variant}: {len(unsupported)} CUDA cases unsupported: " + " | ".join(unsupported))


# --------------------------------------------------------------------------- check_case catches bad kernels
# The grid above is only as good as check_case: broken kernels must be reported as such.

def _spec(fn, **kw) -> VariantSpec:
    return VariantSpec(name="broken@k", forward=fn, family="test", exact=True, time="-", memory="-", **kw)


def _top_left_causal(q, k, v, *, causal=False, **_):
    n, m = q.shape[2], k.shape[2]
    mask = torch.ones(n, m, dtype=torch.bool).tril() if causal else None  # wrong alignment
    return AttnOutput(out=reference.attention(q, k, v, mask=mask).out)


def _wrong_gqa_mapping(q, k, v, *, causal=False, **_):
    h, hkv = q.shape[1], k.shape[1]
    idx = torch.arange(h) % hkv  # interleaved instead of h // (H // Hkv)
    return AttnOutput(out=reference.attention(q, k[:, idx], v[:, idx], causal=causal).out)


def _slightly_off(q, k, v, *, causal=False, **_):
    return AttnOutput(out=reference.attention(q, k, v, causal=causal).out * (1 + 1e-3))


def _wrong_grads(q, k, v, *, causal=False, **_):
    out = reference.attention(q, k, v, causal=causal).out
    # right values, wrong gradients (dk = dv = 0, dq = the incoming gradient)
    return AttnOutput(out=out.detach() + (q - q.detach()) + 0 * (k.sum() + v.sum()))


def _nan(q, k, v, *, causal=False, **_):
    return AttnOutput(out=reference.attention(q, k, v, causal=causal).out * float("nan"))


@pytest.mark.parametrize("fn, shape_kw, needle", [
    (_top_left_causal, dict(seq_len=37, kv_len=91, causal=True), "out"),
    (_wrong_gqa_mapping, dict(kv_heads=2), "out"),
    (_slightly_off, dict(), "out"),
    (_wrong_grads, dict(), "dk"),
    (_nan, dict(), "out"),
], ids=["top-left-causal", "gqa-mapping", "off-by-1e-3", "wrong-grads", "nan"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_check_case_flags_incorrect_kernels(fn, shape_kw, needle, dtype):
    shape = Shape(**{**dict(batch=1, heads=8, kv_heads=8, seq_len=7, kv_len=7, head_dim=16,
                            dtype=dtype), **shape_kw})
    res = check_case(_spec(fn), shape)
    assert res.status == "incorrect", res
    assert any(r.startswith(needle) for r in res.reasons), res.reasons


def test_check_case_reports_errors_and_kernel_refusals():
    shape = Shape(1, 2, 2, 5, 5, 8)

    def boom(q, k, v, **_):
        raise RuntimeError("kernel exploded")

    def refuse(q, k, v, **_):
        raise Unsupported("not for this shape, says the kernel")

    err = check_case(_spec(boom), shape)
    assert err.status == "error" and "kernel exploded" in err.reasons[0]
    uns = check_case(_spec(refuse), shape)
    assert uns.status == "unsupported" and uns.reasons == ["not for this shape, says the kernel"]
    cap = check_case(_spec(boom, devices=("cuda",)), shape)  # declared capabilities come first
    assert cap.status == "unsupported" and "device cpu" in cap.reasons[0]


# --------------------------------------------------------------------------- the reference itself

def _manual_attention(q, k, v, allowed):
    """Hand-written fp64 attention: repeat K/V per head group, einsum, masked softmax."""
    h, hkv, d = q.shape[1], k.shape[1], q.shape[-1]
    group = h // hkv
    kh = torch.stack([k[:, i // group] for i in range(h)], dim=1)
    vh = torch.stack([v[:, i // group] for i in range(h)], dim=1)
    s = torch.einsum("bhnd,bhmd->bhnm", q, kh) / math.sqrt(d)
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    w = torch.softmax(s, dim=-1)
    w = torch.nan_to_num(w, nan=0.0)  # rows with no allowed key
    return torch.einsum("bhnm,bhmd->bhnd", w, vh), w


def _manual_causal(n, m):
    return torch.tensor([[j <= i + (m - n) for j in range(m)] for i in range(n)], dtype=torch.bool)


def _qkv(b, h, hkv, n, m, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, m, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, m, d, generator=g, dtype=torch.float64)
    return q, k, v


def test_reference_non_causal_matches_manual():
    q, k, v = _qkv(2, 3, 3, 5, 9, 16)
    r = reference.attention(q, k, v)
    out, w = _manual_attention(q, k, v, None)
    torch.testing.assert_close(r.out, out, rtol=0, atol=1e-12)
    torch.testing.assert_close(r.weights, w, rtol=0, atol=1e-12)
    lse = torch.logsumexp(torch.einsum("bhnd,bhmd->bhnm", q, k) / 4.0, dim=-1)
    torch.testing.assert_close(r.lse, lse, rtol=0, atol=1e-12)


def test_reference_causal_square_is_lower_triangle():
    n = 6
    q, k, v = _qkv(1, 2, 2, n, n, 8)
    r = reference.attention(q, k, v, causal=True)
    assert torch.equal(reference.causal_mask(n, n), torch.ones(n, n, dtype=torch.bool).tril())
    out, w = _manual_attention(q, k, v, _manual_causal(n, n))
    torch.testing.assert_close(r.out, out, rtol=0, atol=1e-12)
    assert torch.equal(r.weights[..., 0, 1:], torch.zeros_like(r.weights[..., 0, 1:]))
    # query 0 sees only key 0: its output is v[0]
    torch.testing.assert_close(r.out[:, :, 0], v[:, :, 0], rtol=0, atol=1e-12)


def test_reference_causal_fewer_queries_is_bottom_right():
    n, m = 3, 8
    q, k, v = _qkv(1, 2, 2, n, m, 8)
    r = reference.attention(q, k, v, causal=True)
    assert torch.equal(reference.causal_mask(n, m), _manual_causal(n, m))
    out, _ = _manual_attention(q, k, v, _manual_causal(n, m))
    torch.testing.assert_close(r.out, out, rtol=0, atol=1e-12)
    # the last query sees every key: same as unmasked attention for that row
    full = reference.attention(q, k, v).out
    torch.testing.assert_close(r.out[:, :, -1], full[:, :, -1], rtol=0, atol=1e-12)
    # and the first query sees keys 0..M-N exactly
    assert (r.weights[:, :, 0, : m - n + 1] > 0).all()
    assert (r.weights[:, :, 0, m - n + 1:] == 0).all()
    # a single decode query sees its whole cache
    q1 = q[:, :, -1:]
    torch.testing.assert_close(reference.attention(q1, k, v, causal=True).out,
                               reference.attention(q1, k, v).out, rtol=0, atol=1e-12)


def test_reference_causal_more_queries_than_keys_gives_zero_rows():
    n, m = 7, 3
    q, k, v = _qkv(1, 2, 2, n, m, 4)
    r = reference.attention(q, k, v, causal=True)
    out, _ = _manual_attention(q, k, v, _manual_causal(n, m))
    torch.testing.assert_close(r.out, out, rtol=0, atol=1e-12)
    empty = n - m  # rows 0..N-M-1 have no key
    assert torch.equal(r.out[:, :, :empty], torch.zeros_like(r.out[:, :, :empty]))
    assert torch.isneginf(r.lse[:, :, :empty]).all()
    assert torch.isfinite(r.lse[:, :, empty:]).all()
    assert torch.isfinite(r.out).all()


@pytest.mark.parametrize("h, hkv", [(8, 1), (8, 2), (8, 4), (8, 8), (6, 3)])
@pytest.mark.parametrize("causal", [False, True])
def test_reference_gqa_head_mapping(h, hkv, causal):
    n, m = 4, 6
    q, k, v = _qkv(2, h, hkv, n, m, 8)
    r = reference.attention(q, k, v, causal=causal)
    out, _ = _manual_attention(q, k, v, _manual_causal(n, m) if causal else None)
    torch.testing.assert_close(r.out, out, rtol=0, atol=1e-12)
    # query head i reads K/V head i // (H // Hkv): same as MHA on explicitly repeated K/V
    rep = h // hkv
    mha = reference.attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), causal=causal)
    torch.testing.assert_close(r.out, mha.out, rtol=0, atol=1e-12)
    if 1 < hkv < h:  # the interleaved mapping (h % Hkv) is a different answer
        wrong = reference.attention(q, k.repeat(1, rep, 1, 1), v.repeat(1, rep, 1, 1), causal=causal)
        assert not torch.allclose(r.out, wrong.out)


def test_reference_rejects_indivisible_heads():
    q, k, v = _qkv(1, 6, 4, 3, 3, 8)
    with pytest.raises(ValueError, match="multiple"):
        reference.attention(q, k, v)


def test_reference_scale_mask_and_bias():
    q, k, v = _qkv(1, 2, 2, 4, 5, 8)
    r = reference.attention(q, k, v, scale=0.5)
    s = torch.einsum("bhnd,bhmd->bhnm", q, k) * 0.5
    torch.testing.assert_close(r.out, torch.softmax(s, -1) @ v, rtol=0, atol=1e-12)
    bias = torch.randn(4, 5, dtype=torch.float64)
    rb = reference.attention(q, k, v, bias=bias)
    sb = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(8) + bias
    torch.testing.assert_close(rb.out, torch.softmax(sb, -1) @ v, rtol=0, atol=1e-12)
    mask = torch.rand(4, 5, generator=torch.Generator().manual_seed(3)) > 0.4
    mask[:, 0] = True
    rm = reference.attention(q, k, v, mask=mask, causal=True)
    out, _ = _manual_attention(q, k, v, mask & _manual_causal(4, 5))
    torch.testing.assert_close(rm.out, out, rtol=0, atol=1e-12)


def test_reference_rows_and_sampling():
    q, k, v = _qkv(2, 4, 2, 50, 60, 8)
    rows = reference.sample_rows(50, 16)
    assert rows[0] == 0 and rows[-1] == 49
    assert len(rows) <= 16 and torch.equal(rows, rows.unique())
    assert torch.equal(reference.sample_rows(5, 16), torch.arange(5))
    for causal in (False, True):
        full = reference.attention(q, k, v, causal=causal).out
        part = reference.attention_rows(q.float(), k.float(), v.float(), rows, causal=causal)
        assert part.dtype == torch.float64
        torch.testing.assert_close(part, full[:, :, rows], rtol=0, atol=1e-5)


@pytest.mark.parametrize("n, m, causal", [(7, 7, False), (7, 7, True), (5, 40, True), (1, 300, True)])
def test_naive_weights_sum_to_one(n, m, causal):
    spec = get("full@naive")
    assert spec.returns_weights
    q, k, v = _qkv(2, 4, 2, n, m, 16)
    res = spec(q, k, v, causal=causal, need_weights=True)
    assert res.weights is not None and res.weights.shape == (2, 4, n, m)
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(2, 4, n, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert (res.weights >= 0).all()
    if causal:
        assert (res.weights[..., ~reference.causal_mask(n, m)] == 0).all()
    torch.testing.assert_close(res.weights @ v.repeat_interleave(2, 1), res.out, rtol=0, atol=1e-12)
    assert spec(q, k, v, causal=causal).weights is None


# ---------------------------------------------------------------- variants with their own definition
def _own_definition_specs() -> list[VariantSpec]:
    """Approximate (FAVOR+, LSH, linear) and position-aware (Transformer-XL) variants: each is
    checked against its own dense definition (``reference_fn``); their families' test files go
    further (error vs exact softmax, leaks, decode)."""
    return [get(n) for n in names("all") if get(n).reference_fn is not None]


OWN_SIZES = [(7, 7), (100, 100), (129, 129)]


@pytest.mark.parametrize("variant", [s.name for s in _own_definition_specs()])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_own_definition_kernels_match(variant, causal, dtype):
    spec = get(variant)
    ran = 0
    for n, m in OWN_SIZES:
        sh = Shape(batch=2, heads=4, kv_heads=4, seq_len=n, kv_len=m, head_dim=16, dtype=dtype, causal=causal)
        res = check_case(spec, sh, grads=True)
        if res.status == "unsupported":
            assert res.reasons and all(r.strip() for r in res.reasons)
            continue
        assert res.status == "ok", f"{variant} {sh}: {res.reasons} {res.errors} {res.allowed}"
        ran += 1
    if not ran:
        pytest.skip(f"{variant}: no {'causal' if causal else 'non-causal'} case supported")


def test_every_approximate_variant_reports_rel_err():
    """rel_err (gaussian) and rel_err_sharp are finite, and an exact kernel's is ~0."""
    from attnbench.approx import rel_errors

    approx = [get(n) for n in names("all") if not get(n).exact and get(n).family != "test"]
    for spec in approx:
        for causal in (False, True):
            sh = Shape(batch=1, heads=2, kv_heads=2, seq_len=64, kv_len=64, head_dim=16, causal=causal)
            if spec.not_supported_reasons(sh):
                continue
            r = rel_errors(spec, sh)
            assert r["rel_err"] is not None and 0 <= r["rel_err"] < 10, (spec.name, r)
            assert r["rel_err_sharp"] is not None and 0 <= r["rel_err_sharp"] < 10, (spec.name, r)
    exact = rel_errors(get("full@naive"), Shape(1, 2, 2, 64, 64, 16))
    assert exact["rel_err"] < 1e-6 and exact["rel_err_sharp"] < 1e-6


def _backward_cpu_specs() -> list[str]:
    return [n for n in names("all") if "cpu" in get(n).backward and "cpu" in get(n).devices
            and not get(n).missing_packages()]


@pytest.mark.parametrize("variant", _backward_cpu_specs())
def test_inference_call_then_autograd_call(variant):
    """`run` times fwd cases under inference_mode, then fwd+bwd cases in the same worker: a
    tensor a kernel caches during the first (an inference tensor) must not break the second."""
    spec = get(variant)
    causal = not spec.not_supported_reasons(Shape(1, 2, 2, 64, 64, 16, causal=True))
    sh = Shape(1, 2, 2, 64, 64, 16, causal=causal)
    if spec.not_supported_reasons(sh):
        pytest.skip("; ".join(spec.not_supported_reasons(sh)))
    from attnbench.harness.inputs import make_inputs

    q, k, v = make_inputs(sh, requires_grad=False)
    with torch.inference_mode():
        spec(q, k, v, causal=causal)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    out = spec(qg, kg, vg, causal=causal).out
    out.sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad).all()
