"""Reformer LSH attention (``lsh@shared_qk``): the chunked kernel against its own dense
definition (outputs and gradients, autograd path and the tiled inference path), the exact
shared-QK attention it approximates, causality, seeds, odd sizes and bad parameters.

``check_case`` runs the kernel with autograd on (one batched pass per round); the harness
times it under ``torch.inference_mode`` (groups of heads, round by round, tiles of blocks
through preallocated buffers, rounds folded into the output): both are checked, the second
with tiles and hashing chunks small enough to cut at every kind of boundary.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import attnbench.variants.lsh as L  # registers lsh@shared_qk
from attnbench.approx import rel_errors
from attnbench.check import check_case
from attnbench.harness.inputs import make_inputs
from attnbench import Shape, Unsupported, get

SPEC = get("lsh@shared_qk")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one torch thread (conftest.one_thread)."""


def _shape(n, *, causal=False, hkv=4, heads=4, batch=2, d=16, dtype="float32"):
    return Shape(batch=batch, heads=heads, kv_heads=hkv, seq_len=n, kv_len=n, head_dim=d,
                 dtype=dtype, causal=causal)


def _qkv(n, *, hkv=4, heads=4, batch=2, d=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n, d, generator=g, dtype=dtype)
    k = torch.randn(batch, hkv, n, d, generator=g, dtype=dtype)
    v = torch.randn(batch, hkv, n, d, generator=g, dtype=dtype)
    return q, k, v


# (N, params): odd N (padding in the last chunk of every round), N a multiple of the chunk,
# one chunk per round (look-back wraps onto the previous round or onto itself), many rounds.
CASES = [
    (100, dict(bucket_size=16, n_hashes=3)),
    (37, dict(bucket_size=8, n_hashes=2)),
    (64, dict(bucket_size=16, n_hashes=1)),
    (37, dict(bucket_size=64, n_hashes=2)),
    (100, dict(bucket_size=4, n_hashes=4, n_buckets=6, seed=3)),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("n,params", CASES, ids=[f"n{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_kernel_equals_its_dense_definition(n, params, causal, dtype):
    """Outputs and gradients (dq, dv; dk = 0 as k is ignored) against reference_fn in fp64."""
    for hkv in (4, 1):
        res = check_case(SPEC, _shape(n, causal=causal, hkv=hkv, dtype=dtype), params=params)
        assert res.status == "ok", (hkv, res.reasons, res.errors)
        assert res.errors["dk"] == 0.0


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("n,params", CASES, ids=[f"n{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_inference_tiles_equal_definition(n, params, causal, monkeypatch):
    """The tiled no-grad path equals the definition and the autograd path, with tiles of 1
    block, of 3 blocks (not a multiple of the chunks per round), of one round of one head, of
    two heads' rounds (8 heads: groups of 2 and, with 3, a short last group) and of all heads
    (one group: a tile spans heads), and hashing in chunks of one row and of 7 rows."""
    q, k, v = _qkv(n, hkv=2)
    ref = L.lsh_shared_qk_reference(q, k, v, causal=causal, **params)
    whole = L.lsh_shared_qk(q.requires_grad_(), k, v, causal=causal, **params).out.detach()
    assert (whole - ref).abs().max().item() < 1e-12
    q = q.detach()
    c, _, nc, nb = L.geometry(n, params["bucket_size"], params.get("n_buckets"))
    block = 8 * (7 * c * 16 + 2 * c * c) + 3 * c * c  # one block's working set (fp64, D = 16)
    row = 8 * params["n_hashes"] * (nb // 2)  # one row's projections and magnitudes (fp32)
    for blocks, hash_rows in ((1, 1), (3, 7), (nc, 1), (2 * nc, 7), (3 * nc, 1000), (1000, 1000)):
        monkeypatch.setattr(L, "TILE_BYTES", blocks * block)
        monkeypatch.setattr(L, "HASH_BYTES", hash_rows * row)
        for mode in (torch.inference_mode, torch.no_grad):
            with mode():
                out = L.lsh_shared_qk(q, k, v, causal=causal, **params).out
            assert (out - ref).abs().max().item() < 1e-12, (blocks, mode)
            assert (out - whole).abs().max().item() < 1e-12, (blocks, mode)


def test_hashing_chunks_equal_one_chunk(monkeypatch):
    """Buckets hashed in chunks of rows (1, 7: a non-divisor, all) are the same buckets."""
    q, _, _ = _qkv(100)
    one = L.lsh_buckets(q, 3, 14, 5)
    for rows in (1, 7):
        monkeypatch.setattr(L, "HASH_BYTES", rows * 8 * 3 * 7)
        assert torch.equal(L.lsh_buckets(q, 3, 14, 5), one), rows


def test_inference_allocates_nothing_of_the_outputs_size_but_the_output(monkeypatch, storages):
    """Without autograd the output is the one float tensor that grows with B H N: no sorted
    copy of every round, no unit keys of every token, no projections of every token (these
    were fresh allocations above glibc's mmap threshold at N = 16384, page-faulted per call).
    The rest: one head's round of outputs and its token-order copy, a tile, a hashing chunk,
    and int64 maps of one int per slot."""
    n, d, params = 512, 16, dict(bucket_size=16, n_hashes=4)
    q, k, v = (t.float() for t in _qkv(n, heads=4, hkv=4, batch=2, d=d))
    c, n_pad, nc, nb = L.geometry(n, params["bucket_size"], None)
    monkeypatch.setattr(L, "TILE_BYTES", 4 * (4 * (7 * c * d + 2 * c * c) + 3 * c * c))  # tiles of 4 blocks
    monkeypatch.setattr(L, "HASH_BYTES", 64 * 8 * params["n_hashes"] * (nb // 2))  # chunks of 64 rows
    with torch.inference_mode(), storages() as rec:
        out = L.lsh_shared_qk(q, k, v, **params).out
    made = [rec.storages[p] for p in set(rec.storages) - {t.untyped_storage().data_ptr() for t in (q, k, v)}]
    floats = sorted(b for b, fp in made if fp)
    assert floats[-1] == out.numel() * 4 == 2 * 4 * n * d * 4
    assert floats[-2] <= 4 * n_pad * d <= floats[-1] // 8, floats[-4:]  # one head's round
    ints = max(b for b, fp in made if not fp)
    assert ints <= 8 * 2 * 4 * params["n_hashes"] * n_pad  # buckets, order, rank: one int64 per slot


def test_reference_rows_are_its_full_rows():
    q, k, v = _qkv(53)
    rows = torch.tensor([0, 7, 52, 30])
    for causal in (False, True):
        full = L.lsh_shared_qk_reference(q, k, v, causal=causal, bucket_size=8, n_hashes=3)
        part = L.lsh_shared_qk_reference(q, k, v, causal=causal, rows=rows, bucket_size=8, n_hashes=3)
        torch.testing.assert_close(part, full[:, :, rows], rtol=0, atol=1e-13)


@pytest.mark.parametrize("n", [1, 2, 3, 37, 65])
@pytest.mark.parametrize("n_hashes", [1, 3])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_one_chunk_is_exact_shared_qk_attention(n, n_hashes, causal):
    """A chunk covering the whole sequence sees every key (twice: it looks back onto itself or
    onto another round's identical chunk), which the softmax cannot tell from once."""
    q, k, v = _qkv(n, hkv=2)
    exact = L.shared_qk_attention(q, k, v, causal=causal)
    out = L.lsh_shared_qk(q, k, v, causal=causal, bucket_size=max(n, 1) + 5, n_hashes=n_hashes).out
    torch.testing.assert_close(out, exact, rtol=0, atol=1e-12)
    assert SPEC.target_fn is L.shared_qk_attention


def test_single_token_and_self_only_rows_are_exact_in_fp32():
    """A row whose only key is itself returns its own value exactly (causal row 0; N = 1),
    also in fp32 where -5e4 + log 2 would round (reformer-pytorch loses ~2e-3 there)."""
    q, k, v = (t.float() for t in _qkv(40))
    out = L.lsh_shared_qk(q, k, v, causal=True, bucket_size=8, n_hashes=4).out
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0], rtol=0, atol=1e-6)
    q1, k1, v1 = (t.float() for t in _qkv(1))
    torch.testing.assert_close(L.lsh_shared_qk(q1, k1, v1).out, v1, rtol=0, atol=1e-6)


def _clustered(n, d, clusters, seed):
    """Shared-QK inputs with structure: each token is one of ``clusters`` random directions
    (scaled to give sharp scores) plus noise, in random order."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, d, generator=g, dtype=torch.float64)
    centers = centers / centers.norm(dim=-1, keepdim=True)
    which = torch.randint(0, clusters, (2, 2, n), generator=g)
    q = 3.0 * math.sqrt(d) * centers[which] + 0.3 * torch.randn(2, 2, n, d, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, n, d, generator=g, dtype=torch.float64)
    return q, None, v


def test_more_hashes_reduce_the_error_on_clustered_inputs():
    errs = {}
    for h in (1, 2, 8):
        e = []
        for seed in range(3):
            q, k, v = _clustered(256, 32, 24, seed)
            exact = L.shared_qk_attention(q, k, v)
            out = L.lsh_shared_qk(q, k, v, bucket_size=16, n_hashes=h, seed=seed).out
            e.append(((out - exact).norm() / exact.norm()).item())
        errs[h] = sum(e) / len(e)
    assert errs[8] < 0.7 * errs[1], errs
    assert errs[8] < errs[2] < errs[1], errs


def test_causal_values_of_the_future_never_leak():
    """Earlier outputs are bit-identical when future values change (with or without a change
    of future queries, which may move tokens between chunks), and when future queries are
    rescaled by 2 (angular hashes and unit keys are scale-invariant, and exact in floating
    point). An arbitrary change of future *queries* may change earlier outputs: it changes
    the sort, hence which earlier keys share a chunk — a property of Reformer's causal LSH
    (trax and reformer-pytorch alike), not a read of a future key."""
    n, t = 96, 50
    params = dict(bucket_size=8, n_hashes=3)
    for dtype in (torch.float32, torch.float64):
        q, k, v = (x.to(dtype) for x in _qkv(n))
        base = L.lsh_shared_qk(q, k, v, causal=True, **params).out
        v2 = v.clone()
        v2[:, :, t:] = 1e3 * torch.randn_like(v2[:, :, t:])
        out = L.lsh_shared_qk(q, k, v2, causal=True, **params).out
        assert torch.equal(out[:, :, :t], base[:, :, :t])
        q2 = q.clone()
        q2[:, :, t:] *= 2.0
        out = L.lsh_shared_qk(q2, k, v, causal=True, **params).out
        assert torch.equal(out[:, :, :t], base[:, :, :t])
        # new future queries: the same run with two different future values
        q3 = q.clone()
        q3[:, :, t:] = torch.randn_like(q3[:, :, t:])
        a = L.lsh_shared_qk(q3, k, v, causal=True, **params).out
        b = L.lsh_shared_qk(q3, k, v2, causal=True, **params).out
        assert torch.equal(a[:, :, :t], b[:, :, :t])


def test_seeded_rotations_are_reproducible():
    q, k, v = _qkv(100)
    a = L.lsh_shared_qk(q, k, v, bucket_size=8, n_hashes=2, seed=5).out
    b = L.lsh_shared_qk(q.clone(), k, v, bucket_size=8, n_hashes=2, seed=5).out
    c = L.lsh_shared_qk(q, k, v, bucket_size=8, n_hashes=2, seed=6).out
    assert torch.equal(a, b)
    assert (a - c).abs().max().item() > 1e-3
    # one draw per (seed, shape): cached, identical across dtypes (buckets from fp32 q)
    assert L._rotations(5, 2, 16, 7, "cpu") is L._rotations(5, 2, 16, 7, "cpu")
    assert torch.equal(L.lsh_buckets(q, 2, 14, 5), L.lsh_buckets(q.float(), 2, 14, 5))
    assert not torch.equal(L.lsh_buckets(q, 2, 14, 5), L.lsh_buckets(q, 2, 14, 6))
    # the buckets are argmax([xR; -xR]) of the seeded rotations
    rot = torch.randn(16, 2, 7, generator=torch.Generator().manual_seed(5))
    xr = q.float() @ rot[:, 1]
    torch.testing.assert_close(L.lsh_buckets(q, 2, 14, 5)[:, :, 1], torch.cat([xr, -xr], -1).argmax(-1))


@pytest.mark.parametrize("kw,word", [
    (dict(bucket_size=0), "bucket_size=0"),
    (dict(bucket_size=-3), "bucket_size=-3"),
    (dict(bucket_size=2.5), "bucket_size=2.5"),
    (dict(n_hashes=0), "n_hashes=0"),
    (dict(n_hashes=-1), "n_hashes=-1"),
    (dict(n_buckets=5), "n_buckets=5"),
    (dict(n_buckets=0), "n_buckets=0"),
    (dict(seed="x"), "seed='x'"),
])
def test_bad_parameters_raise_naming_the_value(kw, word):
    q, k, v = _qkv(10)
    for fn in (L.lsh_shared_qk, L.lsh_shared_qk_reference):
        with pytest.raises(ValueError, match="allowed") as info:
            fn(q, k, v, **kw)
        assert word in str(info.value)


def test_unsupported_cases_are_reported():
    assert SPEC.family == "lsh" and not SPEC.exact and not SPEC.cross and SPEC.default
    q, k, v = _qkv(10)
    with pytest.raises(Unsupported, match="N == M"):
        L.lsh_shared_qk(q, k[:, :, :5], v[:, :, :5])
    cross = Shape(batch=1, heads=4, kv_heads=4, seq_len=10, kv_len=20, head_dim=16)
    assert any("N != M" in r for r in SPEC.not_supported_reasons(cross))
    decode = Shape(batch=1, heads=4, kv_heads=4, seq_len=1, kv_len=20, head_dim=16, mode="decode")
    assert any("decode" in r for r in SPEC.not_supported_reasons(decode))
    assert SPEC.not_supported_reasons(_shape(100, causal=True, hkv=1)) == []


def test_harness_modes_and_cost_model():
    """A backward through all of (q, k, v) works (dk = 0); FLOPs and memory grow ~linearly in
    N at a fixed bucket_size (plus the hashing's N^2 / c)."""
    shape = _shape(100, causal=True, hkv=2)
    q, k, v = make_inputs(shape, requires_grad=True)
    out = SPEC(q, k, v, causal=True, bucket_size=16, n_hashes=2).out
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert torch.count_nonzero(dk) == 0 and torch.count_nonzero(dq) > 0
    small = Shape(batch=1, heads=8, kv_heads=8, seq_len=4096, kv_len=4096, head_dim=64)
    big = Shape(batch=1, heads=8, kv_heads=8, seq_len=8192, kv_len=8192, head_dim=64)
    r = SPEC.flops(big) / SPEC.flops(small)
    assert 2.0 <= r < 2.3, r
    assert 4 * 8 * 4096 * 128 * 64 * 4 < SPEC.flops(small) < 1.2 * 4 * 8 * 4096 * 128 * 64 * 4
    huge = replace(big, seq_len=16384, kv_len=16384)
    grows = [SPEC.predicted_peak_bytes(b) - SPEC.predicted_peak_bytes(a) for a, b in ((small, big), (big, huge))]
    assert 1.9 < grows[1] / grows[0] < 2.2, grows  # linear in N above one tile and one hashing chunk


def test_rel_errors_against_shared_qk_target():
    shape = Shape(batch=1, heads=2, kv_heads=2, seq_len=256, kv_len=256, head_dim=16)
    res = rel_errors(SPEC, shape)
    assert res.get("rel_err") is not None and math.isfinite(res["rel_err"]), res
    assert math.isfinite(res["rel_err_sharp"])
    exact = rel_errors(SPEC, shape, dict(bucket_size=4096, n_hashes=1))
    assert exact["rel_err"] < 1e-5 and exact["rel_err_sharp"] < 1e-5, exact


def test_same_as_reformer_pytorch_given_the_same_buckets():
    """lucidrains' reformer-pytorch LSHAttention (if installed; not a dependency), fed our
    buckets, computes the same thing: same chunks, look-back with wraparound across rounds,
    duplicates, self and causal masks, round combination."""
    rp = pytest.importorskip("reformer_pytorch.reformer_pytorch")

    class FixedBuckets(rp.LSHAttention):
        def __init__(self, buckets, **kw):
            super().__init__(**kw)
            self.fixed = buckets

        def hash_vectors(self, n_buckets, vecs, **kw):
            bh, r, n = self.fixed.shape
            return (self.fixed + (torch.arange(r) * n_buckets).view(1, r, 1)).reshape(bh, r * n)

    B, H, N, D = 2, 3, 128, 16
    q, k, v = _qkv(N, hkv=H, heads=H, batch=B, d=D)
    for causal in (False, True):
        c, n_pad, nc, nb = L.geometry(N, 16, None)
        buckets = L.lsh_buckets(q, 3, nb, 0).reshape(B * H, 3, N)
        theirs = FixedBuckets(buckets, bucket_size=16, n_hashes=3, causal=causal).eval()
        want = theirs(q.reshape(B * H, N, D), v.reshape(B * H, N, D))[0].reshape(B, H, N, D)
        got = L.lsh_shared_qk(q, k, v, causal=causal, bucket_size=16, n_hashes=3).out
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # its own hashing, seeded like ours, draws the same rotations (fp32 on the CPU)
    qf, vf = q.float(), v.float()
    theirs = rp.LSHAttention(bucket_size=16, n_hashes=3).eval()
    torch.manual_seed(7)
    want = theirs(qf.reshape(B * H, N, D), vf.reshape(B * H, N, D))[0].reshape(B, H, N, D)
    got = L.lsh_shared_qk(qf, None, vf, bucket_size=16, n_hashes=3, seed=7).out
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_cuda_kernel_equals_definition_and_cpu(dtype, causal):
    """On CUDA: outputs and gradients against the definition. Rotations are drawn on the CPU,
    so CUDA hashes as the CPU does (up to matmul rounding at near-ties) and, with equal
    buckets, fp32 outputs match the CPU kernel's."""
    for n, params in CASES[:3]:
        shape = replace(_shape(n, causal=causal, hkv=2, dtype=dtype), device="cuda")
        res = check_case(SPEC, shape, params=params)
        assert res.status == "ok", (n, res.reasons, res.errors)
    q, k, v = (t.float() for t in _qkv(100, hkv=2))
    b_cpu, b_gpu = L.lsh_buckets(q, 3, 8, 0), L.lsh_buckets(q.cuda(), 3, 8, 0).cpu()
    assert (b_cpu == b_gpu).float().mean().item() > 0.99
    if torch.equal(b_cpu, b_gpu):
        cpu = L.lsh_shared_qk(q, k, v, causal=causal, bucket_size=16, n_hashes=3).out
        with torch.inference_mode():
            gpu = L.lsh_shared_qk(q.cuda(), k.cuda(), v.cuda(), causal=causal, bucket_size=16,
                                  n_hashes=3).out
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5)


def test_first_argmax_is_argmax_with_ties_to_the_first():
    """first_argmax equals torch.argmax on non-negative int32 (the bits of |x R|): random rows,
    rows with ties (the first index wins), all-zero rows (a zero query: j = 0), the largest
    int32 values, and NaN's bits (which win, as in argmax of the float bits)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2**31 - 1, (64, 3, 37), generator=g, dtype=torch.int32)
    x[:8] = torch.randint(0, 4, (8, 3, 37), generator=g, dtype=torch.int32)  # many ties
    x[8] = 0
    x[9, :, 5] = x[9, :, 20] = 2**31 - 1
    x[10] = torch.rand(3, 37, generator=g).abs().view(torch.int32)
    x[10, :, 7] = torch.tensor(float("nan")).view(torch.int32)
    got = L.first_argmax(x, torch.empty(64, 3, 1, dtype=torch.int32), torch.empty_like(x))
    assert torch.equal(got, x.argmax(-1, keepdim=True))
    assert got[8].eq(0).all() and got[9].eq(5).all() and got[10].eq(7).all()
