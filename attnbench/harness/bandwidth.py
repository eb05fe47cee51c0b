"""The machine's measured memory bandwidth: the roofline's diagonal ceiling beside the GEMM peak.

A STREAM-like triad ``a = b + s * c`` on three arrays far larger than the caches, timed like a
case (``timing.measure``: median of the calls, calls that waited for a CPU re-measured). It runs
once per run, in the worker, right after the GEMM probe (:mod:`attnbench.harness.flops`).

Bytes per call are STREAM's count, 3 x the array bytes (read b and c, write a); a CPU's
write-allocate traffic on ``a`` is not counted, as STREAM does not count it.
"""
from __future__ import annotations

MIB = 1 << 20
# Bytes of each of the three arrays: far beyond a last-level cache (tens of MiB on CPUs; 50-60 MiB
# of L2 on H100 / H200), so every call streams from DRAM / HBM.
ARRAY_BYTES = {"cpu": 64 * MIB, "cuda": 512 * MIB}
BUDGET_S = 0.25  # seconds of timed triads: ~50 calls of ~5 ms on CPU, enough for a median (runs once per run)
TRIAD_SCALAR = 3.0


def memory_bandwidth_gbs(device: str = "cpu", dtype: str = "float32", budget_s: float = BUDGET_S) -> dict:
    """Sustained GB/s (10^9 bytes/s) of the triad ``torch.add(b, c, alpha=s, out=a)``: median rate.

    Returns ``mem_bw_gbs``, ``mem_bw_bytes`` (bytes of one array) and ``mem_bw_noisy`` (CPU: the
    probe could not get clean calls; None on CUDA), like ``gemm_peak_gflops``'s fields.
    """
    import torch

    from attnbench.harness.timing import measure
    from attnbench.registry import DTYPES

    dt = DTYPES[dtype]
    itemsize = torch.empty((), dtype=dt).element_size()
    numel = ARRAY_BYTES["cuda" if device.startswith("cuda") else "cpu"] // itemsize
    a = torch.empty(numel, device=device, dtype=dt)  # [numel]
    b = torch.ones(numel, device=device, dtype=dt)  # [numel], pages touched before timing
    c = torch.full((numel,), 2.0, device=device, dtype=dt)  # [numel]
    threads = torch.get_num_threads() if device == "cpu" else None
    st = measure(lambda: torch.add(b, c, alpha=TRIAD_SCALAR, out=a), device=device, budget_s=budget_s,
                 warmup_s=1e-9, ci_min=1 << 30, threads=threads)
    moved = 3 * numel * itemsize  # bytes per call: read b, c; write a
    gbs = moved / (st.median_ms / 1e3) / 1e9
    return {"mem_bw_gbs": gbs, "mem_bw_bytes": numel * itemsize,
            "mem_bw_noisy": st.noisy if st.wait_share is not None else None}
