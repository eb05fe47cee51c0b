"""Sparse patterns (Longformer, BigBird, block-sparse): every kernel against the pattern's definition.

* ``P@blocked`` (the block-sparse engine, ``attnbench.blocked``), ``P@dense`` and ``P@sdpa_mask``
  through ``check_case`` (outputs and gradients against the fp64 masked reference): causal or
  not, sizes that are not multiples of the block, N != M, MHA / GQA / MQA, fp32 and fp64, and
  several parameter settings. ``@blocked`` runs two executions of one plan: the autograd one
  (``grads=True``) and the inference one (inputs without grad, worker threads, ``out=`` ops);
  both are checked.
* Degenerate settings equal full attention (checked against ``reference.attention``).
* BigBird's random layout is reproducible per seed.
* The engine itself: forced paths (all dense / no dense / no strided views), worker threads,
  arbitrary layouts with extra keys and heavy rows, decode cost O(w), FLOPs = computed pairs.
* ``P@flex`` compiles per shape (~10 s each): a few fp32 cases, marked ``slow``.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from attnbench import reference
from attnbench.engines import blocksparse as blocked
from attnbench.check import check_case
from attnbench.harness.inputs import make_inputs
from attnbench.patterns import dense_mask, get_pattern
from attnbench import Shape, get
from attnbench.variants import sparse
from attnbench.patterns.sparse import bigbird_layout, block_sparse_layout, global_positions

HEADS = 8
KV = (HEADS, HEADS // 4, 1)  # MHA, GQA, MQA
DTYPES = ("float64", "float32")
# square odd sizes (one block, several blocks with a partial last one), cross, decode-like
SIZES = [(7, 7), (100, 100), (257, 257), (37, 91), (1, 300)]

# (pattern, params): small blocks, global token lists (also at the end, beyond m, repeated),
# random blocks 0..5, seeds, both block layout presets and an explicit matrix (see _matrix).
BLOCKED_CASES = [
    ("longformer", dict(window=5, global_tokens=[0, 3, 50])),
    ("longformer", dict(window=16, global_tokens=2, block=8)),
    ("longformer", dict(window=9, global_tokens=[0, 99, 256, 299, 299, 1000], block=4)),
    ("longformer", dict(window=40, global_tokens=0, block=16)),
    ("bigbird", dict(block=4, random_blocks=0)),
    ("bigbird", dict(block=8, random_blocks=3, seed=3)),
    ("bigbird", dict(block=16, window_blocks=5, global_blocks=3, random_blocks=5, seed=1)),
    ("bigbird", dict(block=8, global_blocks=0, random_blocks=1, seed=7)),
    ("block_sparse", dict(block=4)),
    ("block_sparse", dict(block=8, layout="fixed", stride=3, summary=1)),
    ("block_sparse", dict(block=16, layout="strided", stride=2)),
    ("block_sparse", dict(block=8, layout="fixed", stride=4, summary=2)),
]


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """Many small ops: on a shared machine intra-op threads only add fork/join stalls (seconds
    per test). The engine's own worker threads are exercised explicitly below."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _shape(n, m, causal, kv, dtype, batch=2, head_dim=8) -> Shape:
    return Shape(batch=batch, heads=HEADS, kv_heads=kv, seq_len=n, kv_len=m, head_dim=head_dim,
                 dtype=dtype, causal=causal)


def _assert_ok(r, what=""):
    assert r.status == "ok", f"{r.variant} {what} {r.shape}: {r.status}: {r.reasons}"


def _case_id(case):
    name, params = case
    return name + "-" + "-".join(f"{k}{v}" for k, v in params.items()).replace(" ", "")


# ---------------------------------------------------------------------------------------------
# @blocked against the pattern definition


@pytest.mark.parametrize("case", BLOCKED_CASES, ids=_case_id)
@pytest.mark.parametrize("causal", [False, True], ids=["nomask", "causal"])
def test_blocked_matches_pattern(case, causal):
    """Outputs and gradients (autograd path) and outputs of the inference path, every size;
    K/V heads and dtype rotate over the sizes so each appears for every setting."""
    name, params = case
    spec = get(f"{name}@blocked")
    offset = BLOCKED_CASES.index(case) + causal
    for i, (n, m) in enumerate(SIZES):
        kv = KV[(i + offset) % 3]
        dt = DTYPES[(i + offset) % 2]
        shape = _shape(n, m, causal, kv, dt, batch=1 if n > 200 else 2)
        _assert_ok(check_case(spec, shape, params=params), "autograd")
        _assert_ok(check_case(spec, shape, grads=False, params=params), "inference")


@pytest.mark.parametrize("name", ["longformer", "bigbird", "block_sparse"])
@pytest.mark.parametrize("kv", KV)
@pytest.mark.parametrize("dtype", DTYPES)
def test_blocked_defaults_grid(name, kv, dtype):
    """The registered defaults (block 64: one partial block at these sizes) and a small block,
    on the cheap sizes, every K/V-head count and dtype, causal or not."""
    spec = get(f"{name}@blocked")
    small = {"longformer": dict(window=6, global_tokens=[1, 90]), "bigbird": dict(block=8),
             "block_sparse": dict(block=8)}[name]
    for (n, m), causal, params in itertools.product([(7, 7), (37, 91), (1, 300)], (False, True), ({}, small)):
        shape = _shape(n, m, causal, kv, dtype)
        _assert_ok(check_case(spec, shape, params=params), "autograd")
        _assert_ok(check_case(spec, shape, grads=False, params=params), "inference")


def _matrix(nbk: int, seed: int) -> list[list[bool]]:
    g = torch.Generator().manual_seed(seed)
    lay = torch.rand(nbk, nbk, generator=g) < 0.3
    lay[:, 0] = True
    lay[3 % nbk] = False  # a query block with no key at all: its rows output zeros
    return lay.tolist()


@pytest.mark.parametrize("causal", [False, True], ids=["nomask", "causal"])
@pytest.mark.parametrize("n,m", [(100, 100), (37, 91)])
def test_block_sparse_explicit_layout(n, m, causal):
    spec = get("block_sparse@blocked")
    b = 8
    params = dict(block=b, layout=_matrix(-(-m // b), seed=n))
    for kv, dt in [(HEADS, "float64"), (1, "float32")]:
        shape = _shape(n, m, causal, kv, dt)
        _assert_ok(check_case(spec, shape, params=params), "autograd")
        _assert_ok(check_case(spec, shape, grads=False, params=params), "inference")


@pytest.mark.parametrize("knobs", [dict(dense="never"), dict(dense="all"), dict(band=False),
                                   dict(score_bytes=4096)],
                         ids=["no-dense", "all-dense", "no-band", "one-block-chunks"])
@pytest.mark.parametrize("case", [BLOCKED_CASES[0], BLOCKED_CASES[2], BLOCKED_CASES[6], BLOCKED_CASES[9]],
                         ids=_case_id)
def test_blocked_forced_paths(case, knobs):
    """Each execution path on its own: every row dense, no dense rows but the global ones, no
    strided band views (everything gathered), chunks of a single query block."""
    name, params = case
    spec = get(f"{name}@blocked")
    for (n, m), causal, kv in [((257, 257), True, 2), ((100, 100), False, HEADS), ((37, 91), True, 1)]:
        shape = _shape(n, m, causal, kv, "float64", batch=1)
        _assert_ok(check_case(spec, shape, params={**params, **knobs}), f"autograd {knobs}")
        _assert_ok(check_case(spec, shape, grads=False, params={**params, **knobs}), f"inference {knobs}")


def test_blocked_worker_threads_agree(monkeypatch):
    """The inference path gives the same result with 1, 2 and 3 worker threads (and equals
    the autograd path), and restores torch's own thread setting."""
    threads = torch.get_num_threads()
    shape = _shape(300, 300, True, 2, "float64", batch=2)
    q, k, v = make_inputs(shape)
    for name, params in [BLOCKED_CASES[0], BLOCKED_CASES[5], BLOCKED_CASES[8]]:
        spec = get(f"{name}@blocked")
        outs = []
        for t in (1, 2, 3):
            monkeypatch.setattr(blocked.tuning, "THREADS", t)
            with torch.inference_mode():
                outs.append(spec(q, k, v, causal=True, **params).out.clone())
        qg = q.clone().requires_grad_()
        outs.append(spec(qg, k, v, causal=True, **params).out.detach())
        for o in outs[1:]:
            torch.testing.assert_close(o, outs[0], rtol=0, atol=1e-12)
    assert torch.get_num_threads() == threads


# ---------------------------------------------------------------------------------------------
# generic kernels of these patterns


@pytest.mark.parametrize("kernel", ["dense", "sdpa_mask"])
@pytest.mark.parametrize("name,params", [("longformer", dict(window=5, global_tokens=[0, 36])),
                                         ("bigbird", dict(block=8, random_blocks=2, seed=5)),
                                         ("block_sparse", dict(block=4, layout="fixed", stride=3))])
def test_generic_kernels_match_pattern(kernel, name, params):
    spec = get(f"{name}@{kernel}")
    for i, ((n, m), causal) in enumerate(itertools.product([(7, 7), (100, 100), (37, 91), (1, 300)], (False, True))):
        shape = _shape(n, m, causal, KV[i % 3], DTYPES[i % 2])
        _assert_ok(check_case(spec, shape, params=params))


@pytest.mark.slow
@pytest.mark.parametrize("name,params", [("longformer", dict(window=5, global_tokens=[0, 36])),
                                         ("bigbird", dict(block=16, random_blocks=2)),
                                         ("block_sparse", dict(block=16))])
@pytest.mark.parametrize("n,m,causal,kv", [(100, 100, True, 2), (37, 91, False, HEADS)])
def test_flex_matches_pattern(name, params, n, m, causal, kv):
    spec = get(f"{name}@flex")
    shape = _shape(n, m, causal, kv, "float32")
    reasons = spec.not_supported_reasons(shape)
    if reasons:
        pytest.skip("; ".join(reasons))
    _assert_ok(check_case(spec, shape, params=params))


# ---------------------------------------------------------------------------------------------
# degenerate settings are full attention


def _nbk(m, b):
    return -(-m // b)


DEGENERATE = [
    ("longformer", lambda n, m: dict(window=2, global_tokens=m)),  # every token global
    ("longformer", lambda n, m: dict(window=3, global_tokens=list(range(m - 1, -1, -1)), block=8)),
    ("longformer", lambda n, m: dict(window=m, global_tokens=0, block=16)),  # window covers all
    ("bigbird", lambda n, m: dict(block=8, random_blocks=_nbk(m, 8), seed=2)),  # random covers all
    ("bigbird", lambda n, m: dict(block=16, window_blocks=1, global_blocks=0, random_blocks=100)),
    ("block_sparse", lambda n, m: dict(block=8, layout=[[True] * _nbk(m, 8)] * _nbk(m, 8))),
    ("block_sparse", lambda n, m: dict(block=16, layout="fixed", stride=1)),  # one block per stride
]


@pytest.mark.parametrize("kernel", ["blocked", "dense"])
@pytest.mark.parametrize("idx", range(len(DEGENERATE)), ids=[f"{d[0]}{i}" for i, d in enumerate(DEGENERATE)])
def test_degenerate_equals_full_attention(kernel, idx):
    name, make = DEGENERATE[idx]
    spec = get(f"{name}@{kernel}")
    for (n, m), causal, kv, knobs in [((100, 100), False, 2, {}), ((100, 100), True, HEADS, {}),
                                      ((37, 91), True, 1, {}), ((65, 65), False, 1, dict(dense="never")),
                                      ((1, 300), False, 2, {})]:
        if kernel == "dense":
            knobs = {}
        # engine knobs (longformer's block) are the @blocked kernel's own: @dense refuses them
        params = {k: v for k, v in {**make(n, m), **knobs}.items() if k in spec.params}
        shape = _shape(n, m, causal, kv, "float64")
        pattern = get_pattern(name)
        assert bool(dense_mask(pattern, n, m, {**pattern.defaults, **params}).all()), "not degenerate"
        q, k, v = (t.requires_grad_() for t in make_inputs(shape))
        out = spec(q, k, v, causal=causal, **params).out
        ref = reference.attention(q, k, v, causal=causal).out
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, (q, k, v), g)
        want = torch.autograd.grad(ref, (q, k, v), g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
        with torch.inference_mode():
            fast = spec(q.detach(), k.detach(), v.detach(), causal=causal, **params).out
        torch.testing.assert_close(fast, ref.detach(), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# BigBird's random blocks


def test_bigbird_layout_reproducible():
    nbk = 64
    a = bigbird_layout(nbk, 3, 2, 3, 0)
    bigbird_layout.cache_clear()
    assert torch.equal(a, bigbird_layout(nbk, 3, 2, 3, 0))
    assert not torch.equal(a, bigbird_layout(nbk, 3, 2, 3, 1))
    # window + global + r random per query block away from the global blocks, all distinct
    inner = a[2:-2].sum(1)
    assert bool((inner == 3 + 2 + 3).all()), inner
    assert torch.equal(bigbird_layout(nbk, 3, 2, 0, 5), bigbird_layout(nbk, 3, 2, 0, 6))  # no random part


def test_bigbird_blocked_seed_changes_output():
    shape = _shape(512, 512, False, 2, "float64", batch=1)
    q, k, v = make_inputs(shape)
    spec = get("bigbird@blocked")
    with torch.inference_mode():
        a = spec(q, k, v, block=16, seed=0).out
        b = spec(q, k, v, block=16, seed=0).out
        c = spec(q, k, v, block=16, seed=1).out
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


# ---------------------------------------------------------------------------------------------
# the engine


def test_engine_random_layouts():
    """Arbitrary layouts, extra keys (some inside the row's blocks) and heavy rows, against
    the dense definition, both executions."""
    for seed, (n, m, b) in enumerate([(61, 61, 4), (45, 77, 8), (130, 130, 16), (1, 50, 4)]):
        g = torch.Generator().manual_seed(seed)
        nbk, off = -(-m // b), m - n
        layout = torch.rand(nbk - off // b, nbk, generator=g) < 0.35
        extras = torch.randint(0, m, (5,), generator=g)
        heavy = torch.randint(0, n, (2,), generator=g)
        for causal in (False, True):
            full = torch.zeros(n, m, dtype=torch.bool)  # the pattern: blocks, extras, heavy rows
            qp = torch.arange(n) + off
            full |= layout[qp // b - off // b][:, torch.arange(m) // b]
            full[:, extras] = True
            full[heavy] = True
            pattern = full.clone()

            def mask_fn(qpos, kpos, pattern=pattern, off=off):
                return pattern[qpos - off, kpos]

            plan = blocked.build_plan(n, m, b, layout, mask_fn, causal=causal, extra_keys=extras,
                                      heavy_rows=heavy)
            sh = _shape(n, m, causal, 2, "float64")
            q, k, v = (t.requires_grad_() for t in make_inputs(sh, seed))
            allowed = full & (torch.arange(m)[None] <= qp[:, None]) if causal else full
            ref = reference.attention(q, k, v, mask=allowed).out
            out = blocked.attention(q, k, v, plan)
            torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
            gr = torch.randn_like(out)
            for a, c in zip(torch.autograd.grad(out, (q, k, v), gr), torch.autograd.grad(ref, (q, k, v), gr)):
                torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-9)
            with torch.inference_mode():
                fast = blocked.attention(q.detach(), k.detach(), v.detach(), plan)
            torch.testing.assert_close(fast, ref.detach(), rtol=1e-10, atol=1e-10)


def test_plan_paths_at_benchmark_shape():
    """At n = 4096 with the defaults: Longformer's interior is read through strided views and its
    global queries are dense rows; BigBird's global blocks are dense rows and every other query
    block reads exactly its 8 blocks."""
    n = 4096
    lf = sparse.plan("longformer", n, n, False, {})
    d = lf.describe()
    assert d["band_blocks"] >= n // 64 - 8 and d["dense_rows"] >= 16
    assert d["pairs_per_query"] < 2 * 256 + 64 + 16 + 64  # band + extras + a little waste
    bb = sparse.plan("bigbird", n, n, False, {})
    d = bb.describe()
    assert d["dense_rows"] == 2 * 64 and d["max_slots"] == 8
    assert all(c.cols == 8 * 64 for c in bb.light)
    # exact blocks: nothing masked but the padding slot of the two blocks beside the global ones
    assert sum(bool(c.regions) for c in bb.light) == 1


def test_decode_touches_only_its_window():
    """One query against n keys reads O(w) keys, whatever n (unless the query is global)."""
    costs = []
    for n in (1024, 4096, 16384):
        plan = sparse.plan("longformer", 1, n, True, {})
        assert not plan.dense and len(plan.light) == 1
        keys = plan.light[0].kidx.flatten()
        window = keys[keys >= 16]
        assert int(window.min()) >= n - 1 - 256 - 64  # within one block of the window
        costs.append(plan.pairs)
    assert costs[0] == costs[1] == costs[2] <= 5 * 64 + 16
    plan = sparse.plan("longformer", 1, 4096, True, dict(global_tokens=[4095]))
    assert plan.pairs == 4096  # a global query attends everywhere: one dense row


def test_flops_are_computed_pairs_and_linear():
    for name in ("longformer", "bigbird"):
        spec = get(f"{name}@blocked")
        f = []
        for n in (2048, 4096, 8192):
            s = Shape(batch=1, heads=8, kv_heads=8, seq_len=n, kv_len=n, head_dim=64)
            plan = sparse.plan(name, n, n, False, {})
            assert spec.flops(s) == 4.0 * 64 * 8 * plan.pairs
            assert plan.pairs <= n * 2 * 640 + 128 * n  # O(n w) (+ BigBird's global rows)
            assert spec.predicted_peak_bytes(s) < 40 * n * 8 * 64 * 4  # O(n d)
            f.append(spec.flops(s))
        if name == "longformer":
            assert 1.9 < f[2] / f[1] < 2.1 and 1.9 < f[1] / f[0] < 2.1


def test_registry_entries():
    for name, pattern in [("longformer", sparse.LONGFORMER), ("bigbird", sparse.BIGBIRD),
                          ("block_sparse", sparse.BLOCK_SPARSE)]:
        spec = get(f"{name}@blocked")
        assert get(name) is spec  # the pattern's default kernel
        assert spec.family == "sparse" and spec.exact and spec.reference == name
        # the pattern's parameters with its defaults, plus the engine's knobs
        assert {k: spec.defaults[k] for k in pattern.defaults} == pattern.defaults
        assert set(spec.defaults) - set(pattern.defaults) <= {"dense", "band", "score_bytes", "block"}
        assert spec.not_supported_reasons(_shape(91, 37, False, 1, "float32"))  # N > M: a reason
        assert not spec.not_supported_reasons(_shape(37, 91, True, 1, "float32"))
        s = Shape(batch=1, heads=8, kv_heads=8, seq_len=1, kv_len=4096, head_dim=64, mode="decode")
        assert spec.flops(s) > 0 and spec.predicted_peak_bytes(s) > 0


def test_global_positions():
    assert global_positions(10, 3).tolist() == [0, 1, 2]
    assert global_positions(10, [9, 3, 3, 12, -1]).tolist() == [3, 9]
    assert global_positions(2, 5).tolist() == [0, 1]
    assert block_sparse_layout(4, 4, dict(layout="strided", stride=2)).sum() > 0


@pytest.mark.parametrize("nbk, want", [(1, 1), (4, 2), (32, 6), (256, 16)])
def test_auto_stride_is_sqrt_of_key_blocks(nbk, want):
    from attnbench.patterns.sparse import block_stride

    assert block_stride("auto", nbk) == want
    lay = block_sparse_layout(nbk, nbk, dict(layout="strided", stride="auto"))
    # each query block: < 2s local blocks plus about nbk / s strided ones -> O(sqrt(nbk)) blocks per row
    assert lay.sum(1).max() <= 2 * want - 1 + nbk // want + 1


@pytest.mark.parametrize("bad", [0, -2, "sqrt", 1.5, True])
def test_bad_stride_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="stride .*allowed: an int >= 1 or 'auto'"):
        block_sparse_layout(4, 4, dict(layout="strided", stride=bad))


@pytest.mark.parametrize("name", ["longformer", "bigbird", "block_sparse"])
def test_k_and_v_as_views_of_one_fused_tensor(name):
    """K and V sliced from one [2, B, Hkv, M, D] tensor sit at different storage offsets of the
    same storage: the inference path's strided band views must start from each one's own offset
    (V once read K's memory: an error of 3.2 for Longformer at n=1024, window 32)."""
    spec = get(f"{name}@blocked")
    params = {"window": 32} if name == "longformer" else {}
    q = torch.randn(1, 4, 1024, 16)
    kv = torch.randn(2, 1, 4, 1024, 16)
    k, v = kv[0], kv[1]
    with torch.inference_mode():
        fast = spec(q, k, v, **params).out
    ref = get(f"{name}@dense")(q, k, v, **{p: x for p, x in params.items()}).out
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)
