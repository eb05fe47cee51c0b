"""Spread and noise: which timed numbers a report may call clean, and which differences lie
outside the noise.

A timed cell is marked ``NOISY`` when its row is flagged ``noisy`` (the worker did not get the
CPU it asked for: ``harness/cpuwait.py``), ``UNSTABLE`` when its IQR exceeds
``UNSTABLE_IQR_REL`` of its median; a speed-up is ``WITHIN_NOISE`` when the two medians'
confidence intervals overlap. Tables (:mod:`attnbench.report.tables`), sweeps and figures read
these rules from here.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from attnbench.harness.timing import median_ci
from attnbench.scaling import LEVEL

# Marks after a timed number a reader should not read as clean (see "spread and noise" below).
UNSTABLE_IQR_REL = 0.10  # the one threshold: an IQR above this share of the median marks the cell
NOISY, UNSTABLE, WITHIN_NOISE = "†", "~", "ns"
NOISE_MEANING = {
    NOISY: "noisy: the worker did not get the CPU it asked for in enough timed calls (row field noisy); "
           "the time is not clean",
    UNSTABLE: f"unstable: the interquartile range of the timed calls exceeds {UNSTABLE_IQR_REL:.0%} of the median",
    WITHIN_NOISE: f"within the noise: the {LEVEL:.0%} confidence intervals of the two medians overlap, so "
                  f"neither is faster outside the noise",
}
NOISE_WORD = {NOISY: "noisy", UNSTABLE: "unstable", "": ""}  # the CSV's ``noise`` column


def finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def is_noisy(r: dict | None) -> bool:
    """The row's ``noisy`` flag (schema 3; absent or null in older rows: not flagged)."""
    flag = r.get("noisy") if r is not None else None
    return isinstance(flag, (bool, np.bool_)) and bool(flag)


def is_unstable(r: dict | None) -> bool:
    """An ok row whose IQR exceeds UNSTABLE_IQR_REL of its median."""
    if r is None or not (finite(r.get("time_ms_median")) and finite(r.get("time_ms_iqr"))):
        return False
    med = float(r["time_ms_median"])
    return med > 0 and float(r["time_ms_iqr"]) > UNSTABLE_IQR_REL * med


def noise_mark(*rows: dict | None) -> str:
    """NOISY if any of ``rows`` is noisy, else UNSTABLE if any is unstable, else ""."""
    if any(is_noisy(r) for r in rows):
        return NOISY
    return UNSTABLE if any(is_unstable(r) for r in rows) else ""


def marked(cell: str, *marks: str) -> str:
    """``cell`` followed by the non-empty marks, each after a space (``4.19 [0.61] ~``)."""
    return " ".join([cell, *(m for m in marks if m)])


def _samples(r: dict) -> list[float]:
    s = r.get("samples_ms")
    if isinstance(s, (list, tuple, np.ndarray)):
        return [float(x) for x in s if finite(x)]
    return []


def median_interval(r: dict | None) -> tuple[float, float] | None:
    """The LEVEL confidence interval of an ok row's median time: from ``time_ci_rel`` where the
    row has it, else from its samples (``harness.timing.median_ci``, min..max for 5 or fewer),
    else median ± IQR/2 (wider: conservative); None without any of them."""
    if r is None or r.get("status") != "ok" or not finite(r.get("time_ms_median")):
        return None
    med = float(r["time_ms_median"])
    if finite(r.get("time_ci_rel")):
        c = float(r["time_ci_rel"])
        return med * (1 - c), med * (1 + c)
    s = _samples(r)
    if len(s) >= 2:
        lo, hi = median_ci(s)
        return min(lo, med), max(hi, med)
    if finite(r.get("time_ms_iqr")):
        return med - float(r["time_ms_iqr"]) / 2, med + float(r["time_ms_iqr"]) / 2
    return None


def ci_rel(r: dict | None) -> float:
    """Half-width of the row's median interval over the median (the larger side; nan: unknown)."""
    iv = median_interval(r)
    if iv is None or not float(r["time_ms_median"]) > 0:
        return float("nan")
    med = float(r["time_ms_median"])
    return max(iv[1] / med - 1.0, 1.0 - iv[0] / med)


def quartiles(r: dict | None) -> tuple[float, float] | None:
    """(q1, q3) of an ok row's timed calls: from its samples (4 or more), else median ± IQR/2."""
    if r is None or r.get("status") != "ok" or not finite(r.get("time_ms_median")):
        return None
    s = _samples(r)
    if len(s) >= 4:
        q1, q3 = np.percentile(s, [25, 75])
        return float(q1), float(q3)
    med, iqr = float(r["time_ms_median"]), r.get("time_ms_iqr")
    return (med - float(iqr) / 2, med + float(iqr) / 2) if finite(iqr) and float(iqr) < 2 * med else None


def faster(v: dict | None, b: dict | None) -> int:
    """+1: the variant row ``v`` is faster than ``b`` outside the noise (its median's interval lies
    wholly below b's); -1: slower outside the noise; 0: the intervals overlap, one is unknown, or
    either row is noisy (a disturbed time is never a clean difference)."""
    if is_noisy(v) or is_noisy(b):
        return 0
    iv, ib = median_interval(v), median_interval(b)
    if iv is None or ib is None:
        return 0
    if iv[1] < ib[0]:
        return 1
    return -1 if iv[0] > ib[1] else 0


def noise_fields(r: dict) -> dict:
    """The CSV columns every timed table carries: its mark in words and the row's noise fields."""
    return {"noise": NOISE_WORD[noise_mark(r)], "time_ci_rel": r.get("time_ci_rel"), "noisy": r.get("noisy"),
            "wait_share": r.get("wait_share"), "disturbed_samples": r.get("disturbed_samples")}


NOISE_COLUMNS = ("noise", "time_ci_rel", "noisy", "wait_share", "disturbed_samples")
