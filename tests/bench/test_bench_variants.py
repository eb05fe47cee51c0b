"""pytest-benchmark targets: every registered variant (``attnbench.registry.names('all')``).

One target per (mode, n, variant), id ``fwd-n256-full@sdpa``. The timed call is the one
``attnbench run`` times (``attnbench.harness.execute._calls``: inference mode for fwd/decode,
autograd for bwd), synchronized on CUDA. Before timing, one untimed first call (compile,
autotune, block-mask build) must return finite output, and so must the last benchmarked call.
Unsupported variants are skipped with their reasons; @flex kernels are skipped at the small
size (a ~10-20 s compile each on CPU) unless ``--bench-flex`` or ``--bench-size big``.

Guard a kernel across commits (docs/regression.md):

    pytest tests/bench --benchmark-autosave                        # on the base commit
    pytest tests/bench --benchmark-compare --benchmark-compare-fail=median:10%   # on the new one

Smoke (CI): ``pytest tests/bench --benchmark-disable`` runs each target once, untimed.
"""
from __future__ import annotations

import math
import time

import pytest
import torch

from attnbench.harness.execute import calls as _calls
from attnbench.harness.inputs import make_inputs
from attnbench import Shape, Unsupported, get

pytestmark = pytest.mark.bench


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def assert_finite(out, what: str) -> None:
    ts = _tensors(out)
    assert ts, f"{what}: returned no tensor ({type(out).__name__})"
    for t in ts:
        bad = (~torch.isfinite(t)).sum().item()
        assert bad == 0, f"{what}: {bad} of {t.numel()} output values are not finite"


def bench_shape(settings, variant: str, mode: str, n: int) -> Shape:
    """The shape ``run`` would use (decode: one query against an n-token cache)."""
    s = Shape(batch=settings.batch, heads=settings.heads, kv_heads=settings.heads,
              seq_len=1 if mode == "decode" else n, kv_len=n, head_dim=settings.head_dim,
              dtype=settings.dtype, device=settings.device, causal=settings.causal, mode=mode)
    return get(variant).resolve_shape(s)


@pytest.fixture
def prepared(mode, n, variant, settings):
    """(spec, shape, target) for a case that can run here, else a skip with the reasons."""
    spec = get(variant)
    shape = bench_shape(settings, variant, mode, n)
    if spec.kernel == "flex" and not settings.flex:
        pytest.skip(f"{variant}: FlexAttention compiles per shape (~10-20 s each on CPU); "
                    "include @flex with --bench-flex or --bench-size big")
    reasons = spec.not_supported_reasons(shape)
    if reasons:
        pytest.skip(f"{variant} unsupported here: {'; '.join(reasons)}")
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        torch.manual_seed(0)
        q, k, v = make_inputs(shape, seed=0, requires_grad=shape.needs_grad)
        _, call = _calls(spec, shape, q, k, v, spec.resolve_params())

        def target():
            out = call()
            _sync(shape.device)
            return out

        yield spec, shape, target
    finally:
        torch.set_num_threads(threads)


def test_variant(prepared, request):
    spec, shape, target = prepared
    t0 = time.perf_counter()
    try:
        first = target()  # compile / autotune / block-mask build: timed apart
    except Unsupported as e:
        pytest.skip(f"{spec.name} unsupported here: {e}")
    first_ms = (time.perf_counter() - t0) * 1e3
    assert_finite(first, f"{spec.name} first call")
    del first

    # Requested only now, so that a skipped target never creates (and warns about) a benchmark.
    bm = request.getfixturevalue("attn_benchmark")
    mode, n = shape.mode, shape.kv_len
    bm.group = f"{mode} n={n} {shape.dtype} {shape.device}{' causal' if shape.causal else ''}"
    bm.extra_info.update(
        variant=spec.name, pattern=spec.pattern, kernel=spec.kernel, family=spec.family,
        exact=spec.exact, mode=mode, n=n, q_len=shape.seq_len, kv_len=shape.kv_len,
        batch=shape.batch, heads=shape.heads, kv_heads=shape.kv_heads, head_dim=shape.head_dim,
        dtype=shape.dtype, device=shape.device, causal=shape.causal,
        flops=spec.flops(shape), bytes=spec.bytes(shape), params=dict(spec.defaults),
        first_call_ms=first_ms, threads=torch.get_num_threads(), torch=torch.__version__,
    )
    out = bm(target)
    assert_finite(out, f"{spec.name} benchmarked call")
    stats = getattr(bm, "stats", None)
    if not bm.disabled and stats is not None:
        median_s = stats.stats.median
        if median_s and math.isfinite(median_s):
            bm.extra_info["gflops_per_s"] = spec.flops(shape) / median_s / 1e9
