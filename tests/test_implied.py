"""Every registered variant's implied attention weights (``attnbench.stats.implied``).

Registry-driven: every variant outside the test family, on small odd sizes (N = M = 35 is a
5 x 7 grid for swin and sra; cross both ways where the variant takes it), causal and not, K/V
heads H and 1, in float64. The weights must (a) average v into the variant's dense definition
(``check.expected_output``) and into its kernel's own output where the kernel runs here;
(b) have rows summing to 1, or 0 for a row that attends nothing; (c) be 0 outside ``allowed``;
(d) for an exact softmax variant, equal ``exact()``'s, whose output is softmax attention's (or
the variant's ``target_fn``).
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from attnbench import Shape, Unsupported, catalog, get, reference
from attnbench.check import check_settings, expected_output, is_compiled
from attnbench.harness.inputs import make_inputs
from attnbench.patterns.swin import bias_table_init
from attnbench.stats.implied import exact, implied
from attnbench.variants.lsh import shared_qk_weights

SPECS = [s for s in catalog.all_specs() if s.family != "test"]
SIZES = [(35, 35), (21, 35), (37, 21)]  # square (a 5 x 7 grid), fewer queries, more queries
HEADS = 4
# Settings of declared params whose defaults cover every key at these sizes (one LSH chunk, one
# XL segment, one causal block); a normalizer eps at 0 makes rows sum to exactly 1 (or 0).
SMALL = {"bucket_size": 8, "n_hashes": 2, "segment_len": 8, "mem_len": 8, "chunk": 8, "eps": 0.0}
ATOL = 1e-12


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one torch thread (conftest.one_thread)."""


def _settings(spec, **over) -> list[dict]:
    """Resolved params: the pattern's small examples (far from full at these sizes), then the
    defaults; SMALL where declared."""
    settings = check_settings(spec, [{}])
    small = {k: v for k, v in SMALL.items() if k in spec.params}
    return [spec.resolve_params({**base, **small, **over}) for base in settings[1:] + settings[:1]]


def _params(spec, **over) -> dict:
    return _settings(spec, **over)[0]


def _cases(spec):
    """(shape, q, k, v) in float64 for every size, causality and K/V-head count (after the
    variant's own K/V-head rule, deduplicated)."""
    seen = []
    for n, m in SIZES:
        for causal in (False, True):
            for hkv in (HEADS, 1):
                sh = spec.resolve_shape(Shape(batch=2, heads=HEADS, kv_heads=hkv, seq_len=n, kv_len=m,
                                              head_dim=16, dtype="float64", causal=causal))
                if sh not in seen:
                    seen.append(sh)
    return [(sh, *make_inputs(sh, seed=len(seen))) for sh in seen]


def _average(w, v):
    """weights [B, H, N, M] @ v [B, Hkv, M, D] -> [B, H, N, D] (query head h reads h // G)."""
    b, h, n, m = w.shape
    hkv = v.shape[1]
    return torch.matmul(w.reshape(b, hkv, h // hkv, n, m), v.unsqueeze(2)).reshape(b, h, n, -1)  # [B, H, N, D]


def _kernel_out(spec, sh, q, k, v, params, **extra):
    """The kernel's own output here, or None where it cannot run on CPU in float64 (compiled
    kernels aside: a compile per shape; test_kernels checks them)."""
    if is_compiled(spec) or spec.not_supported_reasons(sh, params):
        return None
    return spec.forward(q, k, v, causal=sh.causal, **params, **extra).out


def _implied_or_none(spec, sh, q, k, v, params):
    """implied(), or None when it refuses; it may refuse only what the kernel refuses too."""
    try:
        return implied(spec, q, k, v, causal=sh.causal, params=params)
    except Unsupported as e:
        assert str(e).startswith(spec.name) and spec.not_supported_reasons(sh, params), (sh, e)
        return None


def _assert_rows(im, sh):
    """(b) rows sum to 1 where the row attends a key, 0 otherwise; (c) 0 outside allowed."""
    w = im.weights
    assert w.dtype == torch.float64 and w.shape == (sh.batch, sh.heads, sh.seq_len, sh.kv_len)
    allowed = im.allowed.expand_as(w)
    assert not w.masked_fill(allowed, 0.0).any(), "weight outside allowed keys"
    assert (w >= 0).all()
    sums = w.sum(-1)
    ones, zeros = (sums - 1).abs() <= 1e-12, sums.abs() <= 1e-12
    assert (ones | zeros).all(), sums
    assert zeros[~allowed.any(-1)].all(), "a row with no allowed key has weight"
    if im.support is not None:
        assert not (allowed & ~im.support.expand_as(w)).any(), "allowed beyond the support"


def _check_setting(spec, params) -> int:
    """(a), (b), (c) on every case of one setting; the number of cases that gave weights."""
    ran = 0
    for sh, q, k, v in _cases(spec):
        im = _implied_or_none(spec, sh, q, k, v, params)
        if im is None:
            continue
        ran += 1
        out = _average(im.weights, v)
        want = expected_output(spec, sh, q, k, v, params)
        torch.testing.assert_close(out, want, rtol=0, atol=ATOL, msg=f"{spec.name} {sh}: vs its definition")
        got = _kernel_out(spec, sh, q, k, v, params)
        if got is not None:
            torch.testing.assert_close(out, got, rtol=0, atol=1e-10, msg=f"{spec.name} {sh}: vs its kernel")
        _assert_rows(im, sh)
        assert im.source == "implied"
    return ran


@pytest.mark.parametrize("variant", [s.name for s in SPECS])
def test_implied_weights_average_into_the_definition_and_kernel(variant):
    """The first setting the variant runs (an example its kernel refuses is passed over)."""
    spec = get(variant)
    assert any(_check_setting(spec, params) for params in _settings(spec)), f"{variant}: no case gave weights"


@pytest.mark.parametrize("variant", [s.name for s in SPECS])
def test_exact_is_softmax_or_the_target(variant):
    """exact(): softmax attention (or target_fn) output; its weights average into it; (d) an
    exact softmax variant's implied weights are exact()'s."""
    spec = get(variant)
    params = _params(spec)
    softmax_variant = spec.exact and spec.reference == "full" and spec.reference_fn is None
    for sh, q, k, v in _cases(spec)[:4]:
        try:
            ex, out = exact(spec, q, k, v, causal=sh.causal, params=params)
        except Unsupported:
            assert spec.not_supported_reasons(sh, params)
            continue
        if spec.target_fn is not None:
            want = spec.target_fn(q, k, v, causal=sh.causal, **params)
        else:
            want = reference.attention(q, k, v, causal=sh.causal).out
        torch.testing.assert_close(out, want, rtol=0, atol=ATOL)
        torch.testing.assert_close(_average(ex.weights, v), out, rtol=0, atol=ATOL)
        assert ex.support is None and ex.source == "exact"
        _assert_rows(ex, sh)
        if softmax_variant:
            im = implied(spec, q, k, v, causal=sh.causal, params=params)
            torch.testing.assert_close(im.weights, ex.weights, rtol=0, atol=ATOL)


def test_sra_weights_are_over_the_original_tokens():
    spec = get("sra@naive")
    sh = Shape(batch=2, heads=HEADS, kv_heads=1, seq_len=35, kv_len=35, head_dim=16, dtype="float64")
    q, k, v = make_inputs(sh)
    params = spec.resolve_params({"ratio": 2, "grid": (5, 7)})
    im = implied(spec, q, k, v, causal=False, params=params)
    assert im.weights.shape == (2, HEADS, 35, 35) and im.support is None
    kernel = spec.forward(q, k, v, need_weights=True, **params)
    torch.testing.assert_close(im.weights, kernel.weights, rtol=0, atol=ATOL)
    # tokens of one pooling window share its weight: 4 windows of 2 x 2 in the first two rows
    assert torch.allclose(im.weights[..., 0], im.weights[..., 8])


def test_lsh_support_is_its_bucket_mates_and_its_target_is_shared_qk():
    spec = get("lsh@shared_qk")
    sh = Shape(batch=2, heads=HEADS, kv_heads=2, seq_len=37, kv_len=37, head_dim=16, dtype="float64", causal=True)
    q, k, v = make_inputs(sh)
    params = _params(spec)
    im = implied(spec, q, k, v, causal=True, params=params)
    assert im.support.shape == (2, HEADS, 37, 37) and not im.support.all()
    assert im.support.diagonal(dim1=-2, dim2=-1).all()  # a token is always its own bucket-mate
    ex, _ = exact(spec, q, k, v, causal=True, params=params)
    torch.testing.assert_close(ex.weights, shared_qk_weights(q, k, v, causal=True), rtol=0, atol=ATOL)


def _learned_extra(spec, sh, params) -> dict:
    """The kernel's own tensors, moved off their initial values: learned ones (XL's u, v_bias,
    w_r), else a relative-position bias table (Swin)."""
    g = torch.Generator().manual_seed(5)
    if spec.learned is not None:
        start = spec.learned(sh.heads, sh.head_dim, params)
    else:
        start = {"bias_table": bias_table_init(sh.seq_len, sh.heads, params)}
    return {name: t + 0.3 * torch.randn(t.shape, generator=g, dtype=t.dtype) for name, t in start.items()}


@pytest.mark.parametrize("variant", [s.name for s in SPECS if s.relative_positions])
def test_learned_tensors_given_as_keywords_are_used(variant):
    spec = get(variant)
    params = _params(spec)
    causal = spec.family == "memory"
    sh = Shape(batch=2, heads=HEADS, kv_heads=2, seq_len=35, kv_len=35, head_dim=16, dtype="float64", causal=causal)
    q, k, v = make_inputs(sh)
    extra = _learned_extra(spec, sh, params)
    im = implied(spec, q, k, v, causal=causal, params=params, extra=extra)
    seeded = implied(spec, q, k, v, causal=causal, params=params)
    assert not torch.allclose(im.weights, seeded.weights)
    got = _kernel_out(spec, sh, q, k, v, params, **extra)
    if got is None:
        pytest.skip(f"{variant}: the kernel does not run here: {spec.not_supported_reasons(sh, params)}")
    torch.testing.assert_close(_average(im.weights, v), got, rtol=0, atol=1e-10)


def test_too_many_pairs_is_unsupported_with_the_numbers():
    sh = Shape(batch=2, heads=HEADS, kv_heads=HEADS, seq_len=64, kv_len=32, head_dim=8, dtype="float64")
    q, k, v = make_inputs(sh)
    with pytest.raises(Unsupported, match=r"\[2, 4, 64, 32\] = 16384 pairs; above max_pairs=16000"):
        implied(get("full@sdpa"), q, k, v, causal=False, params={}, max_pairs=16000)


def test_own_definition_without_weights_fn_is_unsupported():
    spec = replace(get("performer@favor"), weights_fn=None)
    sh = Shape(batch=1, heads=2, kv_heads=2, seq_len=8, kv_len=8, head_dim=8, dtype="float64")
    with pytest.raises(Unsupported, match="declares no weights_fn"):
        implied(spec, *make_inputs(sh), causal=False, params={})
    assert spec.describe()["implied_weights"] is False
    assert all(s.describe()["implied_weights"] for s in SPECS)


@pytest.mark.parametrize("variant", [s.name for s in SPECS if "eps" in s.params])
def test_a_normalizer_eps_keeps_weights_and_definition_together(variant):
    """At the default eps the weights are A / (A 1 + eps): rows a hair under 1, same output."""
    spec = get(variant)
    params = _params(spec, eps=spec.params["eps"].default)
    for sh, q, k, v in _cases(spec)[:4]:
        im = implied(spec, q, k, v, causal=sh.causal, params=params)
        torch.testing.assert_close(_average(im.weights, v), expected_output(spec, sh, q, k, v, params),
                                   rtol=0, atol=ATOL)
        assert (im.weights.sum(-1) <= 1).all()
