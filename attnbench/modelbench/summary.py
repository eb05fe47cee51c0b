"""The tables a person reads at the end of ``run --level model``: the report's own tables
(:mod:`attnbench.report.model_level`), printed to the console, one set per group."""
from __future__ import annotations

from typing import Any

from attnbench.report import model_level as M


def _print(t, console) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    rt = Table(title=t.title, box=box.SIMPLE_HEAD, title_justify="left")
    for i, h in enumerate(t.header):
        rt.add_column(h, justify="left" if i == 0 else "right")
    for r in t.rows:
        rt.add_row(*[Text(str(c)) for c in r])
    console.print(rt)
    for n in t.notes:
        console.print(Text(n), style="dim")


def print_summary(rows: list[dict[str, Any]], console, baseline: str = "full@sdpa") -> None:
    rows, _ = M.latest(rows)
    measure, probes = M.frame(rows, "measure"), M.frame(rows, "max_n")
    for group, g in M.groups(measure) if not measure.empty else []:
        desc = M.describe(group, g)
        base = M.base_label(g, baseline)
        for t in (M.steps_table(g, base, "steps", desc), M.memory_table(g, base, "memory", desc),
                  M.share_table(g, base, "share", desc), M.gain_table(g, base, "gain", desc)):
            if t is not None:
                _print(t, console)
        failed = g[g["status"] != "ok"]
        for r in failed.itertuples():
            console.print(f"{r.label} n={r.seq_len}: {r.status}: {(r.reasons or [''])[0][:200]}", markup=False,
                          highlight=False)
    for group, p in M.groups(probes) if not probes.empty else []:
        t = M.maxn_table(p, "maxn", M.describe(group, p), None)
        if t is not None:
            _print(t, console)
