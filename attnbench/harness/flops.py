"""The machine's measured matmul peak, against which achieved FLOP/s is expressed.

A variant's own work is ``VariantSpec.flops(shape)``; this module measures what the device
can do: the best rate of square GEMMs of a few sizes in the benchmark's dtype. It runs once
per run, in a worker (the parent never touches CUDA).
"""
from __future__ import annotations

import statistics
import time


def gemm_peak_gflops(device: str = "cpu", dtype: str = "float32", budget_s: float = 2.0) -> dict:
    """Sustained GFLOP/s of ``a @ b``: the best size's median rate (2 n^3 FLOPs per call).

    The median, not the single fastest call, so that a short turbo burst does not set a bar
    that no sustained kernel could reach.
    """
    import torch

    from attnbench.harness.timing import time_once
    from attnbench.registry import DTYPES

    dt = DTYPES[dtype]
    best = (0.0, 0)
    sizes = (512, 1024, 2048, 4096) if device.startswith("cuda") else (512, 1024, 2048)
    per_size = budget_s / len(sizes)
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dt)
        b = torch.randn(n, n, device=device).to(dt)
        out = torch.empty(n, n, device=device, dtype=dt)
        time_once(lambda: torch.matmul(a, b, out=out), device)  # warm-up
        t_end = time.perf_counter() + per_size
        rates = []
        while time.perf_counter() < t_end or len(rates) < 3:
            ms = time_once(lambda: torch.matmul(a, b, out=out), device)
            rates.append(2.0 * n**3 / (ms / 1e3) / 1e9)
        rate = statistics.median(rates)
        if rate > best[0]:
            best = (rate, n)
    return {"gemm_peak_gflops": best[0], "gemm_peak_size": best[1], "gemm_dtype": dtype}


def achieved(flops: float, median_ms: float | None, peak_gflops: float | None) -> tuple[float | None, float | None]:
    """(GFLOP/s, fraction of peak) for ``flops`` done in ``median_ms``."""
    if not median_ms or median_ms <= 0 or not flops:
        return None, None
    g = flops / (median_ms / 1e3) / 1e9
    return g, (g / peak_gflops if peak_gflops else None)
