"""The table a person reads at the end of ``run``: variants x n, with failures marked."""
from __future__ import annotations

from collections import defaultdict

from attnbench.vocab import status_mark


def make_console(stderr: bool = False):
    """A rich Console that stays wide when output is a file or a pipe (CI logs, tee)."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 200)


def fmt_ms(ms: float) -> str:
    return f"{ms:.3g} ms" if ms < 1000 else f"{ms / 1e3:.3g} s"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    return f"{b / 2**20:.0f} MB" if b >= 2**20 else f"{b / 2**10:.0f} KB"


def cell(row: dict, base: dict | None) -> str:
    if row["status"] != "ok":
        return status_mark(row["status"])
    parts = [fmt_ms(row["time_ms_median"]), fmt_bytes(row.get("peak_mem_bytes"))]
    if base and base.get("status") == "ok" and base is not row:
        parts.append(f"x{base['time_ms_median'] / row['time_ms_median']:.2f}")
    return "\n".join(parts)


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


def print_summary(rows: list[dict], scaling, *, baseline: str = "full@sdpa", console=None) -> None:
    """Rich table per (mode, dtype, device, causal): median time, peak memory, speed-up vs baseline."""
    from rich.table import Table

    console = console or make_console()
    groups: dict[tuple, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        groups[(r["mode"], r["dtype"], r["device"], r["causal"])][row_label(r)][r["seq_len"]] = r
    for (mode, dtype, device, causal), by_var in groups.items():
        ns = sorted({n for d in by_var.values() for n in d})
        t = Table(title=f"{mode} | {dtype} | {device}{' | causal' if causal else ''} — median time / peak memory above inputs / speed-up vs {baseline}",
                  show_lines=True)
        t.add_column("variant", style="bold")
        for n in ns:
            t.add_column(f"n={n}", justify="right")
        t.add_column("slope t/mem", justify="right")
        base = by_var.get(baseline, {})
        for v in sorted(by_var, key=natural):
            sl = ""
            if scaling is not None and len(scaling):
                labels = scaling["variant"] + scaling["param_label"].map(lambda p: f"[{p}]" if p else "")
                m = scaling[(labels == v) & (scaling["mode"] == mode) & (scaling["dtype"] == dtype)]
                if len(m):
                    ts, ms = m.iloc[0]["time_slope"], m.iloc[0]["mem_slope"]
                    sl = f"{ts:.2f} / {ms:.2f}" if ts == ts and ms == ms and ts is not None and ms is not None else ""
            t.add_row(plain(v), *[cell(by_var[v][n], base.get(n)) if n in by_var[v] else "" for n in ns], sl)
        console.print(t)
    notes = sorted({f"{row_label(r)}: {status_mark(r['status'])} — {r['reasons'][0][:160]}"
                    for r in rows if r["status"] != "ok" and r.get("reasons")})
    if notes:
        console.print("[dim]why cases did not run (first reason per variant and status):[/dim]")
        seen = set()
        for line in notes:
            k = line.split(" — ")[0]
            if k not in seen:
                seen.add(k)
                console.print(plain(f"  {line}"), style="dim")
