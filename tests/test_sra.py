"""PVT spatial-reduction attention (``sra@*``): kernels against the dense definition, the
definition against first principles (torch's ceil-mode avg_pool2d, full attention at R = 1),
and the declared limits as reasons.

The registry-wide suites pick the kernels up too (``test_kernels``: own-definition checks,
rel_err, inference-then-autograd; ``tests/bench``); this file adds the grid geometry they do
not reach: non-square grids that R does not divide, R > a side, GQA / MQA, batch 2.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from attnbench import reference
from attnbench import Shape, Unsupported, get, names
from attnbench.check import check_case
from attnbench.harness.inputs import make_inputs
from attnbench.patterns.grid import avg_pool_grid, pooling_matrix
from attnbench.variants.sra import pooled_keys, sra_reference

HEADS = 4
KERNELS = ("sra@sdpa", "sra@naive")
# (grid, R): R divides neither side, one side, both; R larger than a side; 1 x n; R = 1.
GEOMETRIES = [((5, 7), 2), ((5, 7), 3), ((6, 9), 2), ((6, 9), 3), ((1, 7), 2), ((3, 5), 8), ((4, 4), 1)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one torch thread (conftest.one_thread)."""


def _shape(grid, hkv=HEADS, dtype="float64", batch=2, d=16, **kw) -> Shape:
    n = grid[0] * grid[1]
    return Shape(batch=batch, heads=HEADS, kv_heads=hkv, seq_len=n, kv_len=n, head_dim=d, dtype=dtype, **kw)


def _params(grid, ratio) -> dict:
    return {"ratio": ratio, "grid": grid}


def _run(kernel, q, k, v, grid, ratio, **kw):
    spec = get(kernel)
    return spec.forward(q, k, v, **kw, **spec.resolve_params(_params(grid, ratio)))


# --------------------------------------------------------------------------- kernels vs the definition

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("hkv", [HEADS, 1], ids=["mha", "mqa"])
@pytest.mark.parametrize("grid, ratio", GEOMETRIES, ids=[f"{g[0]}x{g[1]}-R{r}" for g, r in GEOMETRIES])
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matches_definition(kernel, grid, ratio, hkv, dtype):
    """Outputs and dq, dk, dv against the fp64 dense definition (check_case's tolerance rule)."""
    res = check_case(get(kernel), _shape(grid, hkv, dtype), grads=True, params=_params(grid, ratio))
    assert res.status == "ok", f"{kernel} {grid} R={ratio}: {res.reasons} {res.errors} {res.allowed}"
    assert {"out", "dq", "dk", "dv"} <= set(res.errors)


def test_gqa_reads_pooled_head_of_its_group():
    """Query head h reads pooled K/V head h // (H / Hkv): the same as MHA on repeated K/V."""
    grid, ratio = (6, 9), 2
    q, k, v = make_inputs(_shape(grid, hkv=2))
    for kernel in KERNELS:
        got = _run(kernel, q, k, v, grid, ratio).out
        want = _run(kernel, q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), grid, ratio).out
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- the definition itself

@pytest.mark.parametrize("grid, ratio", GEOMETRIES, ids=[f"{g[0]}x{g[1]}-R{r}" for g, r in GEOMETRIES])
def test_pooling_is_ceil_mode_avg_pool2d(grid, ratio):
    """The stated rule: avg_pool2d(kernel=R, stride=R, ceil_mode=True, count_include_pad=False),
    by the kernels' pooling and by the definition's explicit matrix P."""
    h, w = grid
    x = torch.randn(2, 3, h * w, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    img = x.reshape(6, h, w, 5).permute(0, 3, 1, 2)  # [B*Hkv, D, H, W]
    want = F.avg_pool2d(img, ratio, ratio, ceil_mode=True, count_include_pad=False)
    want = want.permute(0, 2, 3, 1).reshape(2, 3, -1, 5)  # [B, Hkv, M', D]
    torch.testing.assert_close(avg_pool_grid(x, h, w, ratio), want, rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.matmul(pooling_matrix(h, w, ratio), x), want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("grid, ratio, pooled", [
    ((32, 32), 2, 256), ((32, 32), 4, 64), ((5, 7), 2, 12), ((6, 9), 3, 6), ((6, 9), 2, 15),
    ((1, 7), 2, 4), ((3, 5), 8, 1), ((4, 4), 1, 16),
])
def test_pooled_keys_count(grid, ratio, pooled):
    n = grid[0] * grid[1]
    assert pooled_keys(n, _params(grid, ratio)) == pooled
    p = pooling_matrix(*grid, ratio)
    assert p.shape == (pooled, n)
    torch.testing.assert_close(p.sum(1), torch.ones(pooled, dtype=torch.float64), rtol=0, atol=1e-15)
    assert ((p > 0).sum(0) == 1).all()  # every token in exactly one window
    q, k, v = make_inputs(_shape(grid))
    res = _run("sra@naive", q, k, v, grid, ratio)
    assert res.lse is not None and res.out.shape == q.shape
    # the default grid is the most nearly square factorization: 1024 -> 32 x 32
    assert pooled_keys(1024, {"ratio": 2, "grid": None}) == 256


@pytest.mark.parametrize("grid", [(4, 4), (5, 7), (1, 7)])
@pytest.mark.parametrize("kernel", KERNELS)
def test_ratio_one_is_full_attention(kernel, grid):
    q, k, v = make_inputs(_shape(grid, hkv=2))
    full = reference.attention(q, k, v).out
    torch.testing.assert_close(_run(kernel, q, k, v, grid, 1).out, full, rtol=0, atol=1e-12)
    torch.testing.assert_close(sra_reference(q, k, v, **_params(grid, 1)), full, rtol=0, atol=1e-12)


def test_ratio_covering_the_grid_is_one_mean_key():
    """R >= max(H, W): one pooled key, the mean of all tokens; every query outputs mean(v)."""
    grid = (3, 5)
    q, k, v = make_inputs(_shape(grid))
    out = _run("sra@sdpa", q, k, v, grid, 8).out
    torch.testing.assert_close(out, v.mean(2, keepdim=True).expand_as(out), rtol=0, atol=1e-12)


def test_naive_weights_are_the_implied_attention_over_tokens():
    grid, ratio = (5, 7), 2
    n = grid[0] * grid[1]
    q, k, v = make_inputs(_shape(grid, hkv=1))
    res = _run("sra@naive", q, k, v, grid, ratio, need_weights=True)
    assert get("sra@naive").returns_weights and res.weights.shape == (2, HEADS, n, n)
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(2, HEADS, n, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.weights @ v, res.out, rtol=0, atol=1e-12)
    assert _run("sra@naive", q, k, v, grid, ratio).weights is None


# --------------------------------------------------------------------------- declaration and limits

def test_registered_as_the_reduce_family():
    assert names("sra@*") == ["sra@naive", "sra@sdpa"]
    spec = get("sra")
    assert spec.name == "sra@sdpa" and spec.default
    for s in map(get, KERNELS):
        assert (s.family, s.exact, s.causal, s.cross, s.kv_heads) == ("reduce", False, False, False, True)
        assert s.reference_fn is sra_reference and s.target_fn is None  # rel_err vs softmax attention
        assert s.defaults == {"ratio": 2, "grid": None}
        assert s.time == "O(n^2 d / R^2)"
    with pytest.raises(ValueError, match="ratio"):
        spec.resolve_params({"ratio": 0})


def test_flops_count_pooled_pairs_and_pooling():
    spec = get("sra@sdpa")
    s = Shape(batch=2, heads=8, kv_heads=2, seq_len=1024, kv_len=1024, head_dim=64)
    attention = 4.0 * 2 * 8 * 64 * 1024 * 256
    pooling = 2.0 * 2 * 2 * 1024 * 64
    assert spec.flops(s) == attention + pooling
    assert spec.flops(s, {"ratio": 4, "grid": None}) == attention / 4 + pooling
    for kernel in KERNELS:
        for mode in ("fwd", "fwd+bwd"):
            assert get(kernel).predicted_peak_bytes(replace(s, mode=mode)) > 0


@pytest.mark.parametrize("kernel", KERNELS)
def test_causal_cross_decode_and_bad_grid_give_reasons(kernel):
    spec = get(kernel)
    ok = _shape((6, 9))
    assert spec.not_supported_reasons(ok) == []
    assert any("causal" in r for r in spec.not_supported_reasons(replace(ok, causal=True)))
    assert any("N != M" in r for r in spec.not_supported_reasons(replace(ok, kv_len=60)))
    decode = spec.not_supported_reasons(replace(ok, seq_len=1, mode="decode"))
    assert decode and "same N tokens" in decode[0]
    bad = spec.not_supported_reasons(ok, spec.resolve_params({"grid": "5x5"}))
    assert bad and "grid 5x5 holds 25 tokens" in bad[0]
    q, k, v = make_inputs(ok)
    with pytest.raises(Unsupported, match="not causal"):
        spec(q, k, v, causal=True)
    with pytest.raises(Unsupported, match="one grid"):
        spec(q, k[:, :, :20], v[:, :, :20])
