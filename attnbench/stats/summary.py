"""The one table ``stats`` prints: per input, variant setting and n, the mean over layers and
heads of the headline figures; then each case that could not be computed, with why."""
from __future__ import annotations

from typing import Any

COLUMNS = (("entropy", "entropy_norm", "H/ln k"), ("distance", "distance", "dist"),
           ("concentration", "keys_90", "keys90"), ("spectrum", "effective_rank", "eff.rank"),
           ("error", "rel_err", "rel_err"), ("divergence", "kl", "KL"), ("divergence", "tv", "TV"),
           ("coverage", "coverage", "coverage"), ("implied", "kernel_rel_err", "kernel≡implied"))
CASE = ("source", "input", "model_variant", "variant", "param_label", "seq_len")


def table(rows: list[dict[str, Any]]):
    """(pandas frame: one line per case, the COLUMNS' means; failures [(case text, reason)])."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty or "value" not in df:
        return pd.DataFrame(), []
    ok = df[(df["status"] == "ok") & df["value"].notna()].copy()
    ok["param_label"] = ok["param_label"].fillna("")
    wide = []
    for stat, col, title in COLUMNS:
        part = ok[(ok["stat"] == stat) & (ok["column"] == col)]
        if len(part):
            wide.append(part.groupby(list(CASE), dropna=False)["value"].mean().rename(title))
    frame = pd.concat(wide, axis=1).reset_index() if wide else pd.DataFrame()
    bad = df[df["status"] != "ok"]
    fails = sorted({(f"{r.variant} n={r.seq_len} {r.stat or ''}".strip(), "; ".join(r.reasons or []))
                    for r in bad.itertuples()})
    return frame, fails


def print_summary(rows: list[dict[str, Any]], console) -> None:
    from rich.table import Table

    frame, fails = table(rows)
    if len(frame):
        t = Table(title="attention statistics (mean over layers and heads)")
        for c in frame.columns:
            t.add_column(str(c), justify="left" if c in CASE[:5] else "right")
        for r in frame.itertuples(index=False):
            t.add_row(*[_cell(v) for v in r])
        console.print(t)
    for case, why in fails[:40]:
        console.print(f"not computed: {case}: {why}", markup=False, highlight=False)
    if len(fails) > 40:
        console.print(f"... and {len(fails) - 40} more (status and reasons in the rows)", markup=False)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"
    return "" if v is None else str(v)
