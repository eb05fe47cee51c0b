"""The longest sequence a pattern can train under a memory budget: a search over n.

A probe (``probe = "max_n"``) is a first and a second training step of the task's skeleton at
n, in its own process under the largest budget's cap (:mod:`attnbench.modelbench.child` says
what "out of memory at budget B" means). Its measured peak answers every smaller budget too: at
budget B a probe *fits* when it is ok and its peak is at most B. Per pattern and budget:

1. double n from the first ``--seq-lens`` value while probes fit, up to ``--n-cap`` (the cap
   itself is probed when doubling would pass it);
2. bisect between the last n that fit and the first that did not, on multiples of ``GRAIN``,
   until the gap is at most ``resolution(lo)`` = max(GRAIN, lo / 8): the answer is within an
   eighth of itself (256 tokens at least) below the first n that failed.

The limit says why the search stopped: ``memory`` (a peak above B, or an allocation refused
under the cap), ``time`` (a step slower than ``--step-timeout``, or the probe's wall-clock
limit), ``n cap``, or the status of a probe that failed otherwise (error, crash, unsupported).
Probes go through the caller's ``probe(n)``, which caches them, so the budgets of one pattern
share every probe they have in common; the report replays the same search over the stored rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

GRAIN = 256  # bisection works on multiples of this many tokens
MEMORY, TIME, N_CAP = "memory", "time", "n cap"


class NotProbed(KeyError):
    """A replay needs an n that the stored rows lack (an interrupted search)."""


@dataclass
class Search:
    budget: float  # bytes
    max_n: int | None  # the largest n that fit; None: not even the first
    limit: str  # memory | time | n cap | a failed probe's status
    first_failed: int | None = None  # the smallest n probed that did not fit
    probed: list[int] = field(default_factory=list)


def verdict(row: dict[str, Any], budget: float) -> str | None:
    """None when the probe ``row`` fits ``budget``; else why not (memory, time, or its status)."""
    status = row.get("status")
    if status == "ok":
        peak = row.get("peak_mem_bytes")
        return None if peak is not None and peak <= budget else MEMORY
    return {"oom": MEMORY, "timeout": TIME}.get(status, str(status))


def resolution(lo: int, grain: int = GRAIN) -> int:
    return max(grain, (lo // 8) // grain * grain)


def search(probe: Callable[[int], dict[str, Any]], budget: float, start: int, n_cap: int,
           grain: int = GRAIN) -> Search:
    """The largest n in [start, n_cap] whose probe fits ``budget`` (module docstring)."""
    s = Search(budget, None, N_CAP)
    n = min(start, n_cap)
    while True:
        s.probed.append(n)
        why = verdict(probe(n), budget)
        if why is not None:
            s.limit, s.first_failed = why, n
            break
        s.max_n = n
        if n >= n_cap:
            return s
        n = min(2 * n, n_cap)
    if s.max_n is None:
        return s
    lo, hi = s.max_n, s.first_failed
    while hi - lo > resolution(lo, grain):
        mid = max((lo + hi) // 2 // grain * grain, lo + grain)
        if mid >= hi:
            break
        s.probed.append(mid)
        why = verdict(probe(mid), budget)
        if why is None:
            lo = mid
        else:
            hi, s.limit = mid, why
    s.max_n, s.first_failed = lo, hi
    return s


def replay(rows: list[dict[str, Any]], budget: float, start: int, n_cap: int, grain: int = GRAIN) -> Search:
    """The search over stored probe rows of one pattern (latest row per n); NotProbed if one is missing."""
    by_n = {int(r["seq_len"]): r for r in rows}

    def probe(n: int) -> dict[str, Any]:
        if n not in by_n:
            raise NotProbed(n)
        return by_n[n]

    return search(probe, budget, start, n_cap, grain)


def cell(s: Search) -> str:
    """'12288 (memory)', '≥ 16384 (n cap)', '< 1024 (memory)'."""
    if s.max_n is None:
        return f"< {s.first_failed} ({s.limit})"
    if s.limit == N_CAP:
        return f"≥ {s.max_n} (n cap)"
    return f"{s.max_n} ({s.limit})"
