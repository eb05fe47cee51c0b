"""The machine's measured matmul peak, against which achieved FLOP/s is expressed.

A variant's own work is ``VariantSpec.flops(shape)``; this module measures what the device
can do: the best rate of square GEMMs of a few sizes in the benchmark's dtype. It runs at the
start of a run, in a worker (the parent never touches CUDA), and once more after the cases
(``gemm_peak_end_gflops``, ``gemm_drift`` in run.json).
"""
from __future__ import annotations

# A change of the GEMM peak between a run's two probes larger than this (either way) is
# reported (run summary, report inputs): on a shared VM the machine's speed can drift by 2x
# within minutes, invisibly to the run-queue waits that flag noisy cases, and every GEMM
# fraction of the run divides by the first probe.
GEMM_DRIFT_WARN = 0.10


def gemm_peak_gflops(device: str = "cpu", dtype: str = "float32", budget_s: float = 2.0) -> dict:
    """Sustained GFLOP/s of ``a @ b``: the best size's median rate (2 n^3 FLOPs per call).

    The median, not the single fastest call, so that a short turbo burst does not set a bar
    that no sustained kernel could reach. On CPU the calls are timed like a case's
    (``timing.measure`` with the worker's threads): calls that waited for a CPU are re-measured,
    and a probe that could not get clean calls says so (``gemm_noisy``) — every
    ``peak_fraction`` of the run depends on it.
    """
    import torch

    from attnbench.registry import DTYPES

    dt = DTYPES[dtype]
    best = {"gemm_peak_gflops": 0.0, "gemm_peak_size": 0, "gemm_dtype": dtype}
    sizes = (512, 1024, 2048, 4096) if device.startswith("cuda") else (512, 1024, 2048)
    wait, noisy = [], False
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dt)
        b = torch.randn(n, n, device=device).to(dt)
        out = torch.empty(n, n, device=device, dtype=dt)
        st = _probe_timing(lambda: torch.matmul(a, b, out=out), device, budget_s / len(sizes))
        rate = 2.0 * n**3 / (st.median_ms / 1e3) / 1e9
        if st.wait_share is not None:
            wait.append(st.wait_share)
        noisy = noisy or st.noisy
        if rate > best["gemm_peak_gflops"]:
            best.update(gemm_peak_gflops=rate, gemm_peak_size=n)
    best.update(gemm_wait_share=max(wait) if wait else None, gemm_noisy=noisy if wait else None)
    return best


def _probe_timing(call, device: str, budget_s: float):
    """A probe's calls timed like a case's (``timing.measure`` on the worker's threads), for
    the whole budget: no warm-up beyond the first call, no early stop on a tight interval."""
    import torch

    from attnbench.harness.timing import measure

    threads = torch.get_num_threads() if device == "cpu" else None
    return measure(call, device=device, budget_s=budget_s, warmup_s=1e-9, ci_min=1 << 30, threads=threads)


BLOCK = 64  # the block shape of block_local and swin (64 x 64 x 64 products, D = 64)
BLOCK_BATCH = 256  # one head's blocks at n = 16384: what one band-engine GEMM call does


def block_gemm_gflops(device: str = "cpu", dtype: str = "float32", budget_s: float = 0.7) -> dict:
    """Sustained GFLOP/s of the batched small GEMM the small-window kernels are made of:
    ``torch.bmm`` of [256, 64, 64] x [256, 64, 64] (all in cache), timed like
    :func:`gemm_peak_gflops`. The roofline draws it as a second compute ceiling: a kernel made
    of such products cannot run faster than it (block_local@blocked, swin@blocked at their
    defaults), however close to the square-GEMM peak the machine's large GEMMs run."""
    import torch

    from attnbench.registry import DTYPES

    dt = DTYPES[dtype]
    a, b = (torch.randn(BLOCK_BATCH, BLOCK, BLOCK, device=device).to(dt) for _ in range(2))
    out = torch.empty(BLOCK_BATCH, BLOCK, BLOCK, device=device, dtype=dt)
    st = _probe_timing(lambda: torch.bmm(a, b, out=out), device, budget_s)
    rate = 2.0 * BLOCK_BATCH * BLOCK**3 / (st.median_ms / 1e3) / 1e9
    return {"gemm_block_gflops": rate, "gemm_block_shape": f"{BLOCK_BATCH}x{BLOCK}x{BLOCK}x{BLOCK}"}


def achieved(flops: float, median_ms: float | None, peak_gflops: float | None) -> tuple[float | None, float | None]:
    """(GFLOP/s, fraction of peak) for ``flops`` done in ``median_ms``."""
    if not median_ms or median_ms <= 0 or not flops:
        return None, None
    g = flops / (median_ms / 1e3) / 1e9
    return g, (g / peak_gflops if peak_gflops else None)
