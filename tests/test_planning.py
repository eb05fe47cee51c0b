"""Planning a case stays cheap at any n: the cost functions the parent calls (FLOPs, predicted
memory, reasons) never build an [N, M] mask, an [n / b, n / b] layout or a block-sparse plan.

The cheap counts are checked against what they replace: pattern pair counts against the mask,
per-row block statistics against the layout, plan sizes against built plans (every block-sparse
@blocked kernel, causal and not, odd sizes, N < M, the engine's knobs), then every registered
variant is planned at n = 10^8 in well under a second.
"""
from __future__ import annotations

import itertools
import resource
import time

import pytest
import torch

from attnbench.case import Case, Shape
from attnbench.catalog import all_specs, get
from attnbench.case import attended_pairs
from attnbench.engines import blocksparse
from attnbench.patterns import PATTERNS, Pattern, base, blocks, count_pairs, dense_mask
from attnbench.patterns.counts import rows_from_layout
from attnbench.variants import sparse, xl
from attnbench.vocab import MODES

CROSS = [(1, 1), (1, 37), (37, 1), (45, 45), (97, 130), (130, 97), (200, 200), (64, 256), (256, 64)]


def _settings(p: Pattern) -> list[dict]:
    return [dict(p.defaults), *({**p.defaults, **e} for e in p.examples)]


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_pairs_match_the_mask(name):
    """The closed-form pair count of every pattern equals the mask's, N < M and N > M, causal
    and not (a grid pattern: N = M, not causal)."""
    p = PATTERNS[name]
    assert p.pairs is not None, f"{name} has no pairs formula: its @flex FLOPs would cost O(N M)"
    for params, (n, m), causal in itertools.product(_settings(p), CROSS, (False, True)):
        if p.grid and (n != m or causal) or p.shape_reasons and p.shape_reasons(n, m, params):
            continue
        want = int(dense_mask(p, n, m, params, causal=causal).sum())
        assert p.pairs(n, m, causal, params) == want, (name, params, n, m, causal)


def test_dense_pairs_by_formula():
    for n, m, causal in itertools.product(range(7), range(7), (False, True)):
        assert attended_pairs(n, m, causal) == Shape(1, 1, 1, n, m, 4, causal=causal).attended_pairs()


def test_count_pairs_without_a_formula(monkeypatch):
    """A plugin pattern without ``pairs``: the mask evaluated, and the dense count (an upper
    bound) once N M passes PAIR_EVAL_LIMIT."""
    p = Pattern(name="every_other", family="window", make_mask=lambda n, m, params, device: (
        lambda b, h, q, k: (q + k) % 2 == 0))
    assert count_pairs(p, 9, 7, False, {}) == 32
    monkeypatch.setattr(base, "PAIR_EVAL_LIMIT", 50)
    assert count_pairs(p, 9, 8, True, {}) == attended_pairs(9, 8, True)


@pytest.fixture
def fresh_bigbird_caches():
    """Layouts, plans and counts cached under a patched threshold must not outlive the test."""
    def clear():
        for fn in (blocks.bigbird_random, blocks.bigbird_layout, sparse._cached_plan, sparse._cached_sizes,
                   base._count_pairs):
            fn.cache_clear()

    clear()
    yield
    clear()


@pytest.mark.parametrize("matrix_blocks", [blocks.BIGBIRD_MATRIX_BLOCKS, 3])
def test_block_rows_match_the_layout(matrix_blocks, monkeypatch, fresh_bigbird_caches):
    """BigBird's and the presets' per-row statistics by formula equal the layout's, rows of
    negative query blocks included; BigBird beyond BIGBIRD_MATRIX_BLOCKS too (row-wise draws)."""
    monkeypatch.setattr(blocks, "BIGBIRD_MATRIX_BLOCKS", matrix_blocks)
    bb = [{"window_blocks": w, "global_blocks": g, "random_blocks": r, "seed": 1}
          for w, g, r in [(3, 2, 3), (1, 0, 2), (5, 1, 1), (3, 3, 9)]]
    bs = [{"layout": lay, "stride": s, "summary": c} for lay, s, c in
          [("strided", "auto", 1), ("strided", 3, 0), ("fixed", 2, 1), ("fixed", "auto", 3), ("fixed", 4, 9)]]
    cases = [(blocks.bigbird_row_stats, blocks.bigbird_rows, p) for p in bb]
    cases += [(blocks.block_sparse_row_stats, blocks.block_sparse_rows, p) for p in bs]
    for (stats, rows, params), nbk, qb0 in itertools.product(cases, (1, 7, 30), (-3, 1)):
        qb0 = min(qb0, nbk - 1)
        got, want = stats(qb0, nbk, params), rows_from_layout(rows(qb0, nbk, params), qb0)
        for field in ("count", "count_le", "has_diag", "has_last"):
            assert torch.equal(getattr(got, field), getattr(want, field)), (field, params, nbk, qb0)
        for field, live in (("first", want.count > 0), ("last", want.count > 0), ("last_le", want.count_le > 0)):
            assert torch.equal(getattr(got, field)[live], getattr(want, field)[live]), (field, params, nbk, qb0)


def _blocked_patterns() -> list[str]:
    """The block-sparse engine's @blocked kernels: those that take its ``dense`` knob."""
    return sorted(s.pattern for s in all_specs() if s.kernel == "blocked" and "dense" in s.params)


SIZES = [(1, 1), (1, 301), (45, 45), (97, 301), (257, 257), (200, 513)]
KNOBS = [{}, {"dense": "all"}, {"dense": "never", "band": False}, {"score_bytes": 20000}]


@pytest.mark.parametrize("name", _blocked_patterns())
def test_plan_sizes_equal_built_plans(name):
    """The chunk sizes the cost model reads, from counts alone, equal the built plan's: shapes
    (odd, N < M, decode), causal and not, the pattern's settings and the engine's knobs."""
    p = PATTERNS[name]
    spec = get(f"{name}@blocked")
    grid = list(itertools.product(_settings(p), KNOBS))
    for i, ((params, knobs), causal) in enumerate(itertools.product(grid, (False, True))):
        kw = {**{k: v for k, v in params.items() if k in spec.params}, **knobs}
        for n, m in SIZES[i % 3::3]:  # every setting meets some of the shapes
            built = sparse.plan(name, n, m, causal, kw).sizes()
            assert sparse.sizes(name, n, m, causal, kw) == built, (name, kw, n, m, causal)
    with pytest.raises(ValueError):
        sparse.sizes(name, 301, 97, False, {})  # N > M: @blocked refuses it, as its plan does


def test_costs_read_the_plan_sizes():
    """flops and predicted bytes equal those of the built plan in every mode."""
    for name, mode, causal in itertools.product(_blocked_patterns(), ("fwd", "fwd+bwd"), (False, True)):
        spec = get(f"{name}@blocked")
        s = Shape(batch=2, heads=4, kv_heads=2, seq_len=300, kv_len=700, head_dim=16, causal=causal, mode=mode)
        built = sparse.plan(name, 300, 700, causal, {}).sizes()
        assert spec.flops(s) == blocksparse.flops(built, 2, 4, 16) * MODES[mode]
        assert spec.predicted_peak_bytes(s) == blocksparse.peak_bytes(built, 2, 4, 2, 16, 4, grad=mode != "fwd")


def test_bigbird_beyond_the_matrix_threshold(monkeypatch, fresh_bigbird_caches):
    """Beyond BIGBIRD_MATRIX_BLOCKS the random blocks are drawn row by row; the kernel's plan
    and the cost model still agree."""
    monkeypatch.setattr(blocks, "BIGBIRD_MATRIX_BLOCKS", 4)
    for (n, m), causal in itertools.product([(200, 200), (97, 300)], (False, True)):
        kw = {"block": 8, "random_blocks": 2, "global_blocks": 1}
        assert sparse.sizes("bigbird", n, m, causal, kw) == sparse.plan("bigbird", n, m, causal, kw).sizes()


def test_xl_chunk_counts_are_the_plan():
    """Transformer-XL's cost model counts equal chunks instead of listing O(n / L) of them."""
    def shape(ch):
        return ch.s1 - ch.s0, ch.r0, ch.r1, ch.pm

    for n, m, L, P, row_bytes in [(1, 5000, 64, 300, 32), (5000, 5000, 16, 64, 4 << 10), (513, 9000, 100, 0, 8)]:
        counted = [shape(ch) for ch, k in xl.chunk_counts(n, m, L, P, 0, row_bytes) for _ in range(k)]
        assert counted == [shape(ch) for ch in xl.plan(n, m, L, P, 0, row_bytes)]


HUGE = 10 ** 8


def _plan_case(spec, n: int, causal: bool) -> None:
    """What the parent does for a case (``bench.costs`` after ``Case.reasons``), and the cost
    functions even where a reason stops the run."""
    case = Case.make(spec, Shape(batch=1, heads=8, kv_heads=8, seq_len=n, kv_len=n, head_dim=64,
                                 causal=causal), {})
    case.reasons()
    case.flops()
    case.predicted_peak_bytes()


def test_every_variant_plans_cheaply_at_huge_n():
    """n = 10^8: no MemoryError, no [N, M] or [n / b, n / b] step, and little time per variant
    (imports and first-call work are paid at a small n first). About 0.3 s at most on a 2-core
    VM with a benchmark running beside; the limit only has to catch an O(n^2) step (hours)."""
    specs = all_specs()
    for spec in specs:
        _plan_case(spec, 4096, False)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    slow = {}
    for spec, causal in itertools.product(specs, (False, True)):
        t = time.perf_counter()
        _plan_case(spec, HUGE, causal)
        slow[(spec.name, causal)] = time.perf_counter() - t
    assert max(slow.values()) < 3.0, sorted(slow.items(), key=lambda kv: -kv[1])[:5]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 512 * 1024  # KiB: under 0.5 GB
