"""The one log-log fit of the suite: how time or memory grows with n.

Used by ``run`` (scaling.csv), ``report`` (exponent tables, with their standard error) and the
tests. Only positive, finite values enter the fit.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def fit_loglog(n: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """Least-squares slope of log y on log n, its standard error (nan with 2 points), points."""
    n = np.asarray(n, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(n) & np.isfinite(y) & (y > 0) & (n > 0)
    x, ly = np.log(n[ok]), np.log(y[ok])
    k = int(ok.sum())
    if k < 2 or len(set(x.tolist())) < 2:
        return float("nan"), float("nan"), k
    xm = x.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (ly - ly.mean())).sum() / sxx)
    if k < 3:
        return slope, float("nan"), k
    resid = ly - (ly.mean() + slope * (x - xm))
    se = math.sqrt(float((resid ** 2).sum()) / (k - 2) / sxx)
    return slope, se, k
