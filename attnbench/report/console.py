"""The table a person reads at the end of ``run``: one line per variant, n as columns.

Per (mode, dtype, device, causal): the median time at each n (a failure's mark where there is
none), the fitted time / memory slopes, the speed-up vs the baseline and the peak memory at the
largest n. Variants that cannot run here at all are left out of the tables and summarised in one
line with their reasons; every other failure gets one line per variant and status, shortened at a
word, never mid-word.
"""
from __future__ import annotations

import textwrap
from collections import defaultdict

from attnbench.vocab import status_mark

REASON_CHARS = 160  # a failure's first reason in the notes under the table, cut at a word


def make_console(stderr: bool = False, width: int = 200):
    """A rich Console; when output is a file or a pipe (CI logs, tee) it is ``width`` wide."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else width)


def fmt_ms(ms: float) -> str:
    return f"{ms:.3g} ms" if ms < 1000 else f"{ms / 1e3:.3g} s"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    if b >= 2**30:
        return f"{b / 2**30:.3g} GB"
    return f"{b / 2**20:.0f} MB" if b >= 2**20 else f"{b / 2**10:.0f} KB"


def cell(row: dict | None) -> str:
    """Median time of an ok row, else its status mark ('' for no row)."""
    if row is None:
        return ""
    return fmt_ms(row["time_ms_median"]) if row["status"] == "ok" else status_mark(row["status"])


def row_label(r: dict) -> str:
    """``variant`` or ``variant[k=v,...]`` with the row's non-default parameters."""
    return f"{r['variant']}[{r['param_label']}]" if r.get("param_label") else str(r["variant"])


def natural(text: str) -> list:
    """Sort key with numbers compared as numbers (window=64 before window=128)."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def plain(text: str):
    """``text`` as a rich Text: brackets in labels are not markup."""
    from rich.text import Text

    return Text(text)


def shorten(text: str, chars: int = REASON_CHARS) -> str:
    """``text`` on one line, cut at a word boundary when longer than ``chars``."""
    return textwrap.shorten(" ".join(str(text).split()), chars, placeholder=" ...")


def _slopes(scaling, label: str, mode: str, dtype: str) -> str:
    if scaling is None or not len(scaling):
        return ""
    labels = scaling["variant"] + scaling["param_label"].map(lambda p: f"[{p}]" if p else "")
    m = scaling[(labels == label) & (scaling["mode"] == mode) & (scaling["dtype"] == dtype)]
    if not len(m):
        return ""
    ts, ms = m.iloc[0]["time_slope"], m.iloc[0]["mem_slope"]
    return "/".join("-" if x is None or x != x else f"{x:.2f}" for x in (ts, ms))


def _speedup(row: dict | None, base: dict | None) -> str:
    if not row or not base or row["status"] != "ok" or base["status"] != "ok":
        return "-"
    return f"x{base['time_ms_median'] / row['time_ms_median']:.3g}"


def _table(group: tuple, by_var: dict[str, dict[int, dict]], baseline: str, scaling):
    """One line per variant: median time per n, slopes, speed-up and memory at the largest n."""
    from rich import box
    from rich.table import Table

    mode, dtype, device, causal = group
    ns = sorted({n for d in by_var.values() for n in d})
    top = ns[-1]
    t = Table(box=box.SIMPLE_HEAD)
    t.add_column("variant", no_wrap=True)
    for n in ns:
        t.add_column(f"n={n}", justify="right", no_wrap=True)
    t.add_column("slope t/mem", justify="right", no_wrap=True)
    t.add_column(f"vs {baseline} n={top}", justify="right", no_wrap=True)
    t.add_column(f"mem n={top}", justify="right", no_wrap=True)
    base = by_var.get(baseline, {})
    for v in sorted(by_var, key=natural):
        d = by_var[v]
        at_top = d.get(top)
        mem = fmt_bytes(at_top.get("peak_mem_bytes")) if at_top and at_top["status"] == "ok" else "-"
        t.add_row(plain(v), *[cell(d.get(n)) for n in ns], _slopes(scaling, v, mode, dtype),
                  _speedup(at_top, base.get(top)), mem)
    return t


def _notes(rows: list[dict], cannot: set[str]) -> list[str]:
    """One line per (variant, status) that did not give a number, with its first reason."""
    seen, out = set(), []
    for r in sorted(rows, key=lambda r: (natural(row_label(r)), r["status"], r["seq_len"])):
        key = (row_label(r), r["status"])
        if r["status"] == "ok" or key in seen or key[0] in cannot or not r.get("reasons"):
            continue
        seen.add(key)
        out.append(f"  {key[0]}: {status_mark(r['status'])}: {shorten(r['reasons'][0])}")
    return out


def _cannot_run(by_label: dict[str, list[dict]]) -> dict[str, str]:
    """label -> its reasons, for every variant none of whose rows could run here."""
    return {v: "; ".join(rs[0].get("reasons") or ["unsupported"]) for v, rs in by_label.items()
            if all(r["status"] == "unsupported" for r in rs)}


def cannot_run_line(cannot: dict[str, str], where: str) -> str:
    """All of them in one line: 'cannot run on cpu: a, b: reason; c: other reason'."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for v in sorted(cannot, key=natural):
        by_reason[cannot[v]].append(v)
    return f"cannot run on {where}: " + "; ".join(f"{', '.join(vs)}: {' '.join(r.split())}" for r, vs in by_reason.items())


def print_summary(rows: list[dict], scaling, *, baseline: str = "full@sdpa", console=None) -> None:
    """A table per (mode, dtype, device, causal), the failures' reasons, and what cannot run here."""
    console = console or make_console()
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_label[row_label(r)].append(r)
    cannot = _cannot_run(by_label)
    groups: dict[tuple, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if row_label(r) not in cannot:
            groups[(r["mode"], r["dtype"], r["device"], r["causal"])][row_label(r)][r["seq_len"]] = r
    for (mode, dtype, device, causal), by_var in groups.items():
        console.print(plain(f"{mode} | {dtype} | {device}{' | causal' if causal else ''}: median time per n "
                            "(marks: failures, explained below)"), style="bold")
        console.print(_table((mode, dtype, device, causal), by_var, baseline, scaling))
    notes = _notes(rows, set(cannot))
    if notes:
        console.print("why some cases have no time (first reason per variant and status):", style="dim")
        for line in notes:
            console.print(plain(line), style="dim", overflow="fold")
    if cannot:
        where = ", ".join(sorted({f"{r['device']} {r['dtype']}" for r in rows}))
        console.print(plain(cannot_run_line(cannot, where)), style="dim")
