"""Every kernel of every pattern against the pattern's definition, N > M included — driven by the
registry (a new pattern or kernel is checked here with no edit) — and each built-in pattern's
mask against a definition written here independently, element by element, including queries at
negative key positions (N > M and N > 2M).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from attnbench.catalog import all_specs
from attnbench.check import check_case, check_settings, is_compiled
from attnbench.case import Shape
from attnbench.patterns import PATTERNS, dense_mask, get_pattern
from attnbench.patterns.sparse import bigbird_layout

SIZES = [(7, 7), (37, 91), (1, 300), (40, 37), (91, 37)]  # N > M and N > 2M: negative query positions
COMPILED_SIZES = [(91, 37)]  # one compile per shape: N > 2M here; test_window/test_sparse/test_swin cover N < M


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Small shapes: one torch thread (conftest.one_thread)."""


def _pattern_kernels():
    return [s for s in all_specs() if s.reference in PATTERNS and s.family != "test"]


def _cases():
    out = []
    for spec in _pattern_kernels():
        marks = [pytest.mark.slow] if is_compiled(spec) else []
        sizes = COMPILED_SIZES if is_compiled(spec) else SIZES
        dtypes = ("float32",) if is_compiled(spec) else ("float32", "float64")
        for i, setting in enumerate(check_settings(spec, [{}])):
            kv = (8,) if is_compiled(spec) else (8, 1)
            for (n, m), causal, hkv, dt in itertools.product(sizes, (False, True), kv, dtypes):
                out.append(pytest.param(spec.name, setting, n, m, causal, hkv, dt, marks=marks,
                                        id=f"{spec.name}-s{i}-{n}x{m}-{'causal' if causal else 'full'}-kv{hkv}-{dt}"))
    return out


def test_every_pattern_has_kernels_and_examples():
    for p in PATTERNS.values():
        kernels = [s.name for s in _pattern_kernels() if s.reference == p.name]
        assert {f"{p.name}@dense", f"{p.name}@flex", f"{p.name}@sdpa_mask"} <= set(kernels), kernels
        assert p.examples, f"{p.name} has no small example settings for the checks"
        for ex in p.examples:
            assert set(ex) <= set(p.params), (p.name, ex)


@pytest.mark.parametrize("variant, setting, n, m, causal, hkv, dtype", _cases())
def test_kernel_equals_the_pattern_definition(variant, setting, n, m, causal, hkv, dtype):
    from attnbench.catalog import get

    spec = get(variant)
    shape = Shape(batch=2, heads=8, kv_heads=hkv, seq_len=n, kv_len=m, head_dim=16, dtype=dtype, causal=causal)
    res = check_case(spec, shape, grads=True, params=setting)
    if res.status == "unsupported":
        assert res.reasons and all(r.strip() for r in res.reasons)
        pytest.skip(f"{variant} unsupported here: {'; '.join(res.reasons)}")
    assert res.status == "ok", (variant, setting, shape, res.reasons, res.errors, res.allowed)


# ------------------------------------------------------------------ independent definitions
def _global_blocks(nbk: int, g: int) -> set[int]:
    return set(range((g + 1) // 2)) | set(range(nbk - g // 2, nbk))


def _allowed(name: str, p: dict, n: int, m: int, i: int, j: int) -> bool:
    """The patterns' definitions as stated in their docstrings, one (query, key) pair at a time."""
    qp = i + m - n  # the query's key position; negative when N > M
    if name == "sliding_window":
        return abs(qp - j) <= p["window"]
    if name == "dilated_window":
        d = qp - j
        return abs(d) <= p["window"] * p["dilation"] and d % p["dilation"] == 0
    if name == "block_local":
        gap = math.floor(qp / p["block"]) - j // p["block"]
        return gap == 0 or (gap == 1 and p["prev"])
    if name == "longformer":
        g = set(range(min(p["global_tokens"], m))) if isinstance(p["global_tokens"], int) else set(p["global_tokens"])
        return abs(qp - j) <= p["window"] or j in g or qp in g
    b = p["block"]
    qb, kb, nbk = math.floor(qp / b), j // b, -(-m // b)
    if name == "bigbird":
        gl = _global_blocks(nbk, p["global_blocks"])
        if qb < 0:  # before the first key: window and global keys only
            return abs(qb - kb) <= p["window_blocks"] // 2 or kb in gl
        lay = bigbird_layout(nbk, p["window_blocks"], p["global_blocks"], p["random_blocks"], p["seed"])
        return bool(lay[qb, kb])  # its random blocks are drawn by the layout (checked below)
    if name == "block_sparse":
        s = max(1, round(nbk ** 0.5)) if p["stride"] == "auto" else p["stride"]
        if p["layout"] == "strided":
            return abs(qb - kb) < s or (qb - kb) % s == 0
        return qb // s == kb // s or kb % s >= s - p["summary"]
    raise KeyError(name)


DEFINED = ["sliding_window", "dilated_window", "block_local", "longformer", "bigbird", "block_sparse"]


@pytest.mark.parametrize("name", DEFINED)
@pytest.mark.parametrize("n, m", [(7, 7), (37, 91), (40, 37), (91, 37), (130, 37)])
def test_mask_equals_the_definition_at_negative_positions(name, n, m):
    pat = get_pattern(name)
    for setting in ({}, *pat.examples):
        p = {**pat.defaults, **setting}
        got = dense_mask(pat, n, m, p)
        want = torch.tensor([[_allowed(name, p, n, m, i, j) for j in range(m)] for i in range(n)])
        assert torch.equal(got, want), (name, setting, (got != want).nonzero()[:5].tolist())


def test_longformer_query_before_the_keys_is_not_global():
    """40 x 37, window 2, global token 36: query 2 sits at key position -1; it used to index the
    global flags with -1 (the last key, a global token) and attend to every key."""
    pat = get_pattern("longformer")
    mask = dense_mask(pat, 40, 37, {"window": 2, "global_tokens": [36]})
    assert mask[2].tolist() == [j <= 1 or j == 36 for j in range(37)]
    assert mask[0].tolist() == [j == 36 for j in range(37)]  # position -3: only the global key


def test_bigbird_random_blocks_are_drawn_among_the_other_blocks():
    lay = bigbird_layout(12, 3, 2, 3, 0)
    i = torch.arange(12)
    fixed = ((i[:, None] - i[None, :]).abs() <= 1)
    g = torch.tensor([k in _global_blocks(12, 2) for k in range(12)])
    fixed |= g[None, :] | g[:, None]
    extra = lay & ~fixed
    rows = ~g  # a global query block attends everywhere already
    assert (extra[rows].sum(1) == 3).all()
