"""The one log-log fit of the suite: how time or memory grows with n.

Used by ``run`` (scaling.csv), ``report`` (exponent tables, with their 95% confidence interval)
and the tests. Only positive, finite values enter the fit.

:func:`fit_loglog` is the least-squares slope and its standard error; :func:`fit_loglog_ci`
adds the slope's 95% confidence interval, the wider of

* the least-squares interval from the fit's residuals (Student t with k - 2 degrees of
  freedom: three points give t = 12.7, an honest width for a slope fitted to three medians), and
* the interval the points' own uncertainty gives: each median's 95% interval (``ci_rel``, its
  half-width over the median, e.g. a row's ``time_ci_rel``) propagated through the fit, so
  points that happen to lie on a line do not claim an exponent more precise than they are.

Two points and no ``ci_rel`` leave the interval unknown (nan).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

LEVEL = 0.95  # confidence level of every interval the report states


@dataclass(frozen=True)
class SlopeFit:
    slope: float  # nan: fewer than two distinct n
    se: float  # the slope's standard error (the larger of the two sources; nan when unknown)
    points: int
    lo: float  # the slope's LEVEL confidence interval (nan when unknown)
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def _usable(n, y) -> np.ndarray:
    n = np.asarray(n, dtype=float)
    y = np.asarray(y, dtype=float)
    return np.isfinite(n) & np.isfinite(y) & (y > 0) & (n > 0)


def fit_loglog(n: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """Least-squares slope of log y on log n, its standard error (nan with 2 points), points."""
    n = np.asarray(n, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = _usable(n, y)
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


def fit_loglog_ci(n: Sequence[float], y: Sequence[float], ci_rel: Sequence[float] | None = None,
                  level: float = LEVEL) -> SlopeFit:
    """:func:`fit_loglog` with the slope's ``level`` confidence interval (see the module text);
    ``ci_rel[i]``: half-width of ``y[i]``'s own ``level`` interval over ``y[i]`` (nan: unknown)."""
    from scipy import stats

    slope, se_fit, k = fit_loglog(n, y)
    if not math.isfinite(slope):
        return SlopeFit(slope, float("nan"), k, float("nan"), float("nan"))
    z = float(stats.norm.ppf(0.5 + level / 2))
    half_fit = float(stats.t.ppf(0.5 + level / 2, k - 2)) * se_fit if k > 2 else float("nan")
    se_pts = _points_se(n, y, ci_rel, z)
    halves = [h for h in (half_fit, z * se_pts) if math.isfinite(h)]
    if not halves:
        return SlopeFit(slope, float("nan"), k, float("nan"), float("nan"))
    half = max(halves)
    se = max(s for s in (se_fit, se_pts) if math.isfinite(s))
    return SlopeFit(slope, se, k, slope - half, slope + half)


def _points_se(n, y, ci_rel, z: float) -> float:
    """Standard error of the slope from the points' own intervals (nan when any is unknown)."""
    if ci_rel is None:
        return float("nan")
    ok = _usable(n, y)
    x = np.log(np.asarray(n, dtype=float)[ok])
    rel = np.asarray(ci_rel, dtype=float)[ok]
    if not np.isfinite(rel).all() or (rel < 0).any():
        return float("nan")
    w = (x - x.mean()) / float(((x - x.mean()) ** 2).sum())  # slope = sum(w * log y)
    sd = np.log1p(rel) / z  # sd of each log y from its interval's half-width
    return float(math.sqrt(float((w ** 2 * sd ** 2).sum())))
