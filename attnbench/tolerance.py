"""The one tolerance rule of the suite (FlashAttention's): a kernel's max error against an fp64
reference may be at most twice the error of PyTorch's own materialized computation at the
case's dtype, plus a small per-dtype floor (``atol``, and ``rtol`` times the reference's scale).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    """Absolute floor (and relative part) added to the FlashAttention rule."""

    atol: float
    rtol: float = 0.0


DEFAULT_TOLERANCES = {
    "float64": Tolerance(1e-10),
    "float32": Tolerance(2e-5, rtol=1e-5),
    "float16": Tolerance(2e-3),
    "bfloat16": Tolerance(1.6e-2),
}


def allowed_error(torch_error: float, scale: float, tol: Tolerance) -> float:
    """The largest error a kernel may have: 2x torch's own at the dtype + atol + rtol * scale."""
    return 2.0 * torch_error + tol.atol + tol.rtol * scale
