"""Local-window patterns (sliding, dilated, block-local): every kernel against the pattern's
definition, outputs and gradients.

``check_case`` runs a kernel with autograd on (the O(n w) kernels then take their autograd
path); ``run`` times the forward under ``torch.inference_mode`` (their buffered path). Both
paths are checked here, over odd sizes that are not multiples of the window or block, N != M
both ways, decode (one query against a cache), K/V heads H, H/4 and 1, fp32 and fp64, small
windows / dilations / blocks, and the degenerate settings that equal full attention.

The compiled ``@flex`` kernels compile once per shape (about 10 s on CPU): few fp32 shapes,
marked ``slow``.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace

import pytest
import torch

from attnbench import reference
from attnbench.check import check_case
from attnbench.harness.inputs import make_inputs
from attnbench.check import reference_constraints
from attnbench.patterns import get_pattern, pattern_flops
from attnbench import Shape, get
from attnbench.engines import band as W

PATTERNS = ("sliding_window", "dilated_window", "block_local")
BLOCKED = [f"{p}@blocked" for p in PATTERNS]
# Small parameter settings per pattern: windows 0/1/3/16, dilations 1/2/3, blocks 1/5/16.
PARAMS = {
    "sliding_window": [dict(window=1), dict(window=3), dict(window=16), dict(window=0)],
    "dilated_window": [dict(window=1, dilation=2), dict(window=3, dilation=3),
                       dict(window=16, dilation=1), dict(window=2, dilation=5)],
    "block_local": [dict(block=1, prev=False), dict(block=5, prev=True), dict(block=16, prev=False),
                    dict(block=16, prev=True), dict(block=5, prev=False)],
}
# (N, M): a single query, odd sizes past the window / block (several blocks, sequence ends on
# both sides), cross both ways (N > M: rows with no key), decode-like.
SIZES = [(1, 1), (7, 7), (100, 100), (257, 257), (37, 91), (91, 37), (1, 300)]
KV = (8, 2, 1)  # H, H/4, 1 with H = 8
DTYPES = ("float32", "float64")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one torch thread (conftest.one_thread)."""


def _shape(n, m, *, causal, hkv=8, dtype="float32", heads=8, batch=2, d=16):
    return Shape(batch=batch, heads=heads, kv_heads=hkv, seq_len=n, kv_len=m, head_dim=d,
                 dtype=dtype, causal=causal)


def _assert_check(variant: str, shape: Shape, params: dict, grads: bool = True):
    spec = get(variant)
    res = check_case(spec, shape, grads=grads, params=params)
    detail = f"{variant} {params} {shape}: {res.status} {res.reasons} errors={res.errors} allowed={res.allowed}"
    assert res.status == "ok", detail
    if grads and not spec.not_supported_reasons(replace(shape, mode="fwd+bwd")):
        assert {"dq", "dk", "dv"} <= set(res.errors), detail


def _forward_error(variant: str, shape: Shape, params: dict, seed: int = 0):
    """(error, allowed) of the kernel's inference-mode forward against the fp64 pattern
    reference, by check_case's rule: 2x torch's own error at the dtype + the dtype's floor."""
    spec = get(variant)
    q, k, v = make_inputs(shape, seed)
    with torch.inference_mode():
        out = spec(q, k, v, causal=shape.causal, **params).out
    mask, bias, causal = reference_constraints(spec.reference, shape, {**spec.defaults, **params})
    ref64 = reference.attention(q.double(), k.double(), v.double(), causal=causal, mask=mask).out
    reflp = reference.attention(q, k, v, causal=causal, mask=mask).out
    assert out.shape == ref64.shape and out.dtype == q.dtype
    tol = spec.tolerance(shape.dtype)
    err = (out.double() - ref64).abs().max().item() if out.numel() else 0.0
    if not torch.isfinite(out).all():
        err = math.inf
    lp = (reflp.double() - ref64).abs().max().item() if out.numel() else 0.0
    return err, 2 * lp + tol.atol + tol.rtol * (ref64.abs().max().item() if out.numel() else 0.0)


def _grid_cases(variants, sizes=SIZES):
    """One case per (variant, params, size, causal); K/V heads and dtype rotate over the cases
    so that every size meets each of them across the parameter settings."""
    cases = []
    for variant in variants:
        pattern = variant.split("@")[0]
        for pi, params in enumerate(PARAMS[pattern]):
            for si, ((n, m), causal) in enumerate(itertools.product(sizes, (False, True))):
                hkv = KV[(si + pi) % 3]
                dtype = DTYPES[(si // 2 + pi) % 2]
                pid = "-".join(f"{k}{v}" for k, v in params.items())
                cases.append(pytest.param(variant, params, n, m, causal, hkv, dtype,
                                          id=f"{variant}-{pid}-n{n}m{m}-{'causal' if causal else 'full'}-kv{hkv}-{dtype}"))
    return cases


# --------------------------------------------------------------------------- registration

def test_blocked_kernels_registered_as_default_and_exact():
    for p in PATTERNS:
        spec = get(p)  # the bare pattern name means its default kernel
        assert spec.name == f"{p}@blocked"
        assert spec.exact and spec.family == "window" and spec.reference == p
        assert spec.defaults == get_pattern(p).defaults
        assert spec.time == "O(n w d)" and spec.memory == "O(n w)"
        assert spec.kv_heads and spec.cross and spec.causal


@pytest.mark.parametrize("variant", BLOCKED)
def test_flops_count_the_computed_scores(variant):
    """flops_fn counts what the kernel computes (band waste and padding included): at least the
    pattern's useful pairs, at most a small multiple of them at the benchmark's shape."""
    spec = get(variant)
    for n in (1000, 2048):
        for causal in (False, True):
            s = Shape(batch=1, heads=8, kv_heads=8, seq_len=n, kv_len=n, head_dim=64, causal=causal)
            useful = pattern_flops(spec.pattern, s, spec.defaults)
            done = spec.flops(s)
            assert useful <= done <= 2.5 * useful, (variant, n, causal, done / useful)
            assert 0 < spec.predicted_peak_bytes(s) < 4 * s.batch * s.heads * n * 64 * 4 + (64 << 20)
    s = Shape(batch=1, heads=8, kv_heads=8, seq_len=16384, kv_len=16384, head_dim=64)
    if variant == "sliding_window@blocked":  # blocks of 64 queries x (64 + 512) keys
        assert spec.flops(s) == 4.0 * 8 * 64 * 16384 * (64 + 512)
    # memory is O(n w): it grows linearly, the grad modes keep every block's probabilities
    m1 = spec.predicted_peak_bytes(replace(s, seq_len=2048, kv_len=2048, mode="fwd+bwd"))
    m2 = spec.predicted_peak_bytes(replace(s, mode="fwd+bwd"))
    assert 6 <= m2 / m1 <= 10


def test_plan_geometry():
    """The block geometry the kernels (and flops_fn) use: decode reads only the window."""
    p = W.sliding_plan(16384, 16384, False, 256)
    assert (p.c, p.L, p.u0, p.u1) == (64, 576, 63, 513)  # columns 63..512 need no mask
    p = W.sliding_plan(1, 100000, True, 256)  # decode: one query, 257 keys
    assert (p.c, p.L, p.pairs()) == (1, 257, 257)
    p = W.dilated_plan(1, 100000, False, 64, 4)
    assert p.pairs() == 129 and len(p.seqs) == 1
    p = W.block_local_plan(1, 100000, False, 64, True)
    assert p.pairs() == 64 * 128
    assert W.block_local_plan(1000, 1000, False, 5, False).c == 35  # tiny blocks are grouped


# --------------------------------------------------------------------------- against the definition

@pytest.mark.parametrize("variant, params, n, m, causal, hkv, dtype", _grid_cases(BLOCKED))
def test_blocked_matches_pattern_with_grads(variant, params, n, m, causal, hkv, dtype):
    _assert_check(variant, _shape(n, m, causal=causal, hkv=hkv, dtype=dtype), params)


@pytest.mark.parametrize("variant", BLOCKED)
@pytest.mark.parametrize("hkv", KV)
@pytest.mark.parametrize("dtype", DTYPES)
def test_blocked_inference_path_full_grid(variant, hkv, dtype):
    """The buffered forward (what ``run`` times) over the whole grid: every parameter setting,
    size, causal flag, K/V-head count and dtype."""
    bad = []
    for params in PARAMS[variant.split("@")[0]]:
        for (n, m), causal in itertools.product(SIZES + [(300, 1), (2, 1)], (False, True)):
            shape = _shape(n, m, causal=causal, hkv=hkv, dtype=dtype, batch=1)
            err, allowed = _forward_error(variant, shape, params)
            if not err <= allowed:
                bad.append(f"{params} n={n} m={m} causal={causal}: {err:.3g} > {allowed:.3g}")
    assert not bad, f"{variant} kv={hkv} {dtype}:\n" + "\n".join(bad)


LARGE = [(777, 777, "float32"), (600, 900, "float64"), (900, 600, "float32")]


@pytest.mark.parametrize("variant", BLOCKED)
@pytest.mark.parametrize("hkv", KV)
@pytest.mark.parametrize("causal", [False, True])
def test_blocked_default_params_many_blocks(variant, hkv, causal):
    """Default parameters (window 256 / 64 x 4 / block 64) at sizes past several blocks: inner
    blocks on views, edge blocks, a partial last block, N != M both ways, with gradients."""
    n, m, dtype = LARGE[(KV.index(hkv) + causal) % 3]
    _assert_check(variant, _shape(n, m, causal=causal, hkv=hkv, dtype=dtype, batch=1, d=8), {})


@pytest.mark.parametrize("variant", BLOCKED)
def test_blocked_many_chunks(monkeypatch, variant):
    """Tiny chunks: many inner and edge chunks per sequence, both paths."""
    monkeypatch.setattr(W, "CHUNK_BYTES", 4096)
    pattern = variant.split("@")[0]
    params = {"sliding_window": dict(window=20), "dilated_window": dict(window=7, dilation=3),
              "block_local": dict(block=24, prev=True)}[pattern]
    for hkv, causal in ((4, False), (1, True)):
        shape = _shape(377, 401, causal=causal, hkv=hkv, dtype="float64", batch=1, heads=4, d=8)
        _assert_check(variant, shape, params)
        err, allowed = _forward_error(variant, replace(shape, dtype="float32"), params)
        assert err <= allowed


@pytest.mark.parametrize("variant", BLOCKED)
def test_inference_then_autograd_and_strided_inputs(variant):
    """Masks cached by an inference-mode call serve a later autograd call (they must not be
    inference tensors), and inputs laid out [B, N, H, D] (permuted views) work on both paths."""
    params = {"sliding_window": dict(window=5), "dilated_window": dict(window=3, dilation=2),
              "block_local": dict(block=7, prev=True)}[variant.split("@")[0]]
    spec = get(variant)
    for n, m, hkv, causal in ((61, 83, 2, False), (83, 61, 4, True)):
        shape = _shape(n, m, causal=causal, hkv=hkv, dtype="float64", heads=4, batch=2)
        g = torch.Generator().manual_seed(5)
        q, k, v = (torch.randn(2, s, h, 16, generator=g, dtype=torch.float64).permute(0, 2, 1, 3)
                   for s, h in ((n, 4), (m, hkv), (m, hkv)))
        mask = reference_constraints(spec.reference, shape, params)[0]
        ref = reference.attention(q, k, v, mask=mask).out
        with torch.inference_mode():
            torch.testing.assert_close(spec(q, k, v, causal=causal, **params).out, ref)
        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
        out = spec(qg, kg, vg, causal=causal, **params).out
        torch.testing.assert_close(out, ref)
        grads = torch.autograd.grad(out, (qg, kg, vg), torch.ones_like(out))
        q64, k64, v64 = (t.detach().requires_grad_() for t in (q, k, v))
        r = reference.attention(q64, k64, v64, mask=mask).out
        torch.testing.assert_close(grads, torch.autograd.grad(r, (q64, k64, v64), torch.ones_like(r)))


@pytest.mark.parametrize("variant", [f"{p}@{k}" for p in PATTERNS for k in ("dense", "sdpa_mask")])
@pytest.mark.parametrize("causal", [False, True])
def test_generic_kernels_match_pattern(variant, causal):
    """The generic @dense (the reference kernel itself) and @sdpa_mask of the same patterns."""
    pattern = variant.split("@")[0]
    for i, (params, (n, m)) in enumerate(zip(PARAMS[pattern], [(7, 7), (100, 100), (37, 91), (91, 37), (1, 300)])):
        _assert_check(variant, _shape(n, m, causal=causal, hkv=KV[i % 3], dtype=DTYPES[i % 2]), params)


# --------------------------------------------------------------------------- degenerate = full attention

DEGENERATE = [
    ("sliding_window@blocked", dict(window=10**6)),
    ("sliding_window@blocked", dict(window=300)),  # >= max(N, M) - 1
    ("dilated_window@blocked", dict(window=10**6, dilation=1)),
    ("dilated_window@blocked", dict(window=300, dilation=1)),
    ("block_local@blocked", dict(block=512, prev=False)),  # one block holds every position
    ("block_local@blocked", dict(block=300, prev=True)),
]


@pytest.mark.parametrize("variant, params", DEGENERATE)
@pytest.mark.parametrize("causal", [False, True])
def test_degenerate_settings_equal_full_attention(variant, params, causal):
    """A window covering every distance, or one block holding every key, is full attention
    (outputs and gradients compared with full@naive directly). Block-local has no block for a
    query at a negative position (N > M), so it is compared for N <= M only."""
    naive = get("full@naive")
    sizes = [(257, 257, 8), (37, 91, 2), (1, 300, 1)]
    if not variant.startswith("block_local"):
        sizes.append((91, 37, 1))
    for n, m, hkv in sizes:
        shape = _shape(n, m, causal=causal, hkv=hkv, dtype="float64")
        q, k, v = make_inputs(shape, 3, requires_grad=True)
        full = naive(q, k, v, causal=causal).out
        out = get(variant)(q, k, v, causal=causal, **params).out
        torch.testing.assert_close(out, full, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(full)
        torch.testing.assert_close(torch.autograd.grad(out, (q, k, v), g),
                                   torch.autograd.grad(full, (q, k, v), g), rtol=1e-9, atol=1e-9)
        with torch.inference_mode():
            out = get(variant)(q, k, v, causal=causal, **params).out
        torch.testing.assert_close(out, full.detach(), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- decode

@pytest.mark.parametrize("variant", BLOCKED)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hkv", [8, 1])
def test_decode_one_query_equals_reference(variant, causal, hkv):
    """N = 1 against an n-token cache equals the pattern's reference (and its gradients)."""
    for m in (1, 300, 1000):
        _assert_check(variant, _shape(1, m, causal=causal, hkv=hkv, dtype="float64"), {})
        err, allowed = _forward_error(variant, _shape(1, m, causal=causal, hkv=hkv), {})
        assert err <= allowed, (m, err, allowed)


@pytest.mark.parametrize("variant, params", [
    ("sliding_window@blocked", dict(window=256)),
    ("dilated_window@blocked", dict(window=64, dilation=4)),
    ("block_local@blocked", dict(block=64, prev=True)),
])
def test_decode_reads_only_the_window(variant, params):
    """One query against a 262144-token cache whose keys and values outside the query's window are
    NaN: a kernel that touched them (even to mask them) would return NaN, and O(n) work would
    show in the time."""
    m, d = 1 << 18, 64
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 1, d, generator=g)
    k = torch.full((1, 1, m, d), float("nan"))
    v = torch.full((1, 1, m, d), float("nan"))
    span = {"sliding_window@blocked": 257, "dilated_window@blocked": 257, "block_local@blocked": 128}[variant]
    k[:, :, -span:] = torch.randn(1, 1, span, d, generator=g)
    v[:, :, -span:] = torch.randn(1, 1, span, d, generator=g)
    spec = get(variant)
    for causal in (True, False):
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = spec(q, k, v, causal=causal, **params).out
            took = time.perf_counter() - t0
        assert torch.isfinite(out).all(), variant
        mask = reference_constraints(spec.reference, _shape(1, span, causal=causal, hkv=1, heads=4),
                                     {**spec.defaults, **params})[0]
        # the same query against the last `span` keys alone: positions shift by a multiple of
        # the block / dilation, so the pattern is unchanged
        ref = reference.attention(q.double(), k[:, :, -span:].double(), v[:, :, -span:].double(), mask=mask).out
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        assert took < 0.5, f"{variant}: one decode query took {took:.2f} s against a {m}-token cache"


# --------------------------------------------------------------------------- compiled (slow)

FLEX_CASES = [
    ("sliding_window", dict(window=16), 64, 64, 8, False),
    ("sliding_window", dict(window=16), 37, 91, 2, True),
    ("dilated_window", dict(window=3, dilation=2), 64, 64, 8, True),
    ("dilated_window", dict(window=3, dilation=2), 1, 300, 1, False),
    ("block_local", dict(block=16, prev=True), 64, 64, 2, False),
    ("block_local", dict(block=16, prev=False), 37, 91, 8, True),
]


@pytest.mark.slow
@pytest.mark.parametrize("pattern, params, n, m, hkv, causal", FLEX_CASES,
                         ids=[f"{p}-{'-'.join(f'{k}{v}' for k, v in kw.items())}-n{n}m{m}-kv{h}-"
                              f"{'causal' if c else 'full'}" for p, kw, n, m, h, c in FLEX_CASES])
def test_flex_matches_pattern(pattern, params, n, m, hkv, causal):
    """FlexAttention with the pattern's mask_mod, compiled (fp32; CPU has no flex backward)."""
    shape = _shape(n, m, causal=causal, hkv=hkv, dtype="float32", d=32)
    res = check_case(get(f"{pattern}@flex"), shape, grads=True, params=params)
    assert res.status == "ok", (res.reasons, res.errors, res.allowed)
    assert any("gradients not checked" in r for r in res.reasons)  # said so, not hidden


# --------------------------------------------------------------------------- @xformers (CUDA kernels)

def _xformers_fmha():
    pytest.importorskip("xformers")
    from attnbench.variants.xformers import _import_xformers

    return _import_xformers()[1]


@pytest.mark.parametrize("n, m", [(7, 7), (100, 100), (37, 91), (91, 37), (1, 300)])
@pytest.mark.parametrize("window", [0, 1, 3, 16])
@pytest.mark.parametrize("causal", [False, True])
def test_xformers_sliding_bias_is_the_pattern(n, m, window, causal):
    """The bias xformers gets is exactly the pattern's mask (materialized on CPU, so this holds
    wherever the CUDA kernel later runs)."""
    from attnbench.variants.xformers import sliding_bias

    bias = sliding_bias(_xformers_fmha(), n, m, causal, window)
    got = torch.isfinite(bias.materialize((n, m), dtype=torch.float32))
    want = reference_constraints("sliding_window", _shape(n, m, causal=causal), {"window": window})[0]
    assert torch.equal(got, want.expand(n, m))


@pytest.mark.parametrize("n, block", [(7, 3), (100, 16), (64, 64), (37, 5)])
@pytest.mark.parametrize("causal", [False, True])
def test_xformers_block_local_bias_is_the_pattern(n, block, causal):
    from attnbench.variants.xformers import block_local_bias

    batch = 2
    bias = block_local_bias(_xformers_fmha(), batch, n, causal, block)
    got = torch.isfinite(bias.materialize((batch * n, batch * n), dtype=torch.float32))
    want = reference_constraints("block_local", _shape(n, n, causal=causal), {"block": block, "prev": False})[0]
    assert torch.equal(got, torch.block_diag(*[want.expand(n, n)] * batch))  # no pair across batch items


def test_xformers_pattern_kernels_give_reasons_here():
    """On CPU (or with prev=True / N != M for block_local) the row is 'unsupported' with a reason."""
    sh = _shape(100, 100, causal=False)
    for name in ("sliding_window@xformers", "block_local@xformers"):
        spec = get(name)
        if torch.cuda.is_available() and not spec.missing_packages():
            continue
        assert check_case(spec, sh).status == "unsupported"
        assert check_case(spec, sh).reasons
    from attnbench.variants.xformers import _block_local_limits

    assert "prev=True" in _block_local_limits(True, 8, 8)[0]
    assert "N == M" in _block_local_limits(False, 8, 9)[0]


@pytest.mark.cuda
@pytest.mark.parametrize("variant, params", [
    ("sliding_window@xformers", dict(window=16)), ("sliding_window@xformers", dict(window=0)),
    ("block_local@xformers", dict(block=16, prev=False)), ("block_local@xformers", dict(block=5, prev=False)),
])
@pytest.mark.parametrize("n, m", [(100, 100), (257, 257), (37, 91)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hkv", [8, 1])
def test_xformers_pattern_kernels_cuda(variant, params, n, m, causal, hkv):
    sh = Shape(batch=2, heads=8, kv_heads=hkv, seq_len=n, kv_len=m, head_dim=64, dtype="float16",
               device="cuda", causal=causal)
    res = check_case(get(variant), sh, params=params)
    if variant.startswith("block_local") and n != m:
        assert res.status == "unsupported" and "N == M" in res.reasons[0]
        return
    assert res.status == "ok", res.reasons
