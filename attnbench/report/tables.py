"""Paper-ready tables from stored result rows: Markdown, LaTeX (booktabs) and CSV.

Every table is built once as a :class:`Table` (header, string cells, legend, and a tidy
numeric frame for the CSV) and rendered three ways, so the three files always agree. A case
that did not produce a number shows its status mark (``OOM``, ``T/O``, ``skip``, ...), never a
zero or a blank; the Markdown file carries the legend of the marks it uses under the table.

Nothing here measures anything: the input is the DataFrame :mod:`attnbench.report.build`
loaded from ``results.jsonl`` files. The tables of parameter sweeps are in
:mod:`attnbench.report.sweeps`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from attnbench.params import format_value
from attnbench.report.noise import (NOISE_COLUMNS, NOISE_MEANING, NOISE_WORD, NOISY, UNSTABLE, WITHIN_NOISE, ci_rel,
                                    faster, finite, marked, noise_fields, noise_mark)
from attnbench.scaling import LEVEL, SlopeFit, fit_loglog_ci
from attnbench.vocab import BASE_FAILED, FAMILIES, MODES, STATUSES, VARIANT_FAILED

# Short marks for rows that did not produce a number, and what they mean (vocab.STATUSES).
STATUS_MARK = {st: mark for st, (mark, _) in STATUSES.items() if st != "ok"}
STATUS_MEANING = {mark: meaning for st, (mark, meaning) in STATUSES.items() if st != "ok"}
NOT_MEASURED = "—"  # no row for this (variant, n): outside that run's grid
NO_BASE = "no base"  # the variant ran but the baseline did not at this n
NOT_RECORDED = "n/r"  # an ok row without this quantity (e.g. memory pass off)
EXTRA_MEANING = {
    NOT_MEASURED: "not measured (this n was not in that variant's run grid)",
    NO_BASE: "the variant ran, the baseline did not at this n",
    NOT_RECORDED: "ran, but this quantity was not recorded",
}
# Groups of rows: one set of tables and figures per combination of these.
GROUP_FIELDS = ("device_name", "device", "mode", "dtype", "causal", "batch", "heads", "head_dim")
MODE_ORDER = tuple(MODES)
FAMILY_ORDER = tuple(FAMILIES)
MIB = 2.0 ** 20


# --------------------------------------------------------------------------------------------
# number formatting
# --------------------------------------------------------------------------------------------
def _decimals(x: float, sig: int = 3) -> int:
    if x == 0 or not math.isfinite(x):
        return 0
    return max(0, sig - 1 - int(math.floor(math.log10(abs(x)))))


def fmt_num(x: float | None, sig: int = 3) -> str:
    """3 significant digits without exponent (2699, 38.9, 0.0904); integers stay whole."""
    if x is None or not math.isfinite(float(x)):
        return NOT_RECORDED
    x = float(x)
    return f"{x:.{_decimals(x, sig)}f}"


def fmt_with_spread(x: float, spread: float | None, sig: int = 3) -> str:
    """``12.3 [0.4]``: the spread printed to the same decimals as the value."""
    d = _decimals(float(x), sig)
    s = f"{float(x):.{d}f}"
    if spread is not None and math.isfinite(float(spread)):
        # at least one significant digit of the spread, at most two decimals more than the value
        ds = min(max(d, _decimals(float(spread), 1)), d + 2) if spread else d
        s += f" [{float(spread):.{ds}f}]"
    return s


def fmt_ratio(r: float) -> str:
    if not math.isfinite(r):
        return NOT_RECORDED
    return f"{r:.2f}×" if r < 10 else (f"{r:.1f}×" if r < 100 else f"{r:.0f}×")


def fmt_sci(x: float | None) -> str:
    if x is None or not math.isfinite(float(x)):
        return NOT_RECORDED
    return f"{float(x):.2e}"


def fmt_n(n: float) -> str:
    return f"{int(n)}"




# --------------------------------------------------------------------------------------------
# the table object and its three renderings
# --------------------------------------------------------------------------------------------
@dataclass
class Table:
    name: str  # file stem, e.g. time_fwd_float32_cpu
    title: str  # one line: what the numbers are
    header: list[str]
    rows: list[list[str]]
    csv: pd.DataFrame  # tidy numeric frame written as the CSV
    align: str = ""  # one char per column: l or r (default: first col l, rest r)
    notes: list[str] = field(default_factory=list)  # lines under the table (method, units)

    def marks_used(self) -> list[str]:
        used = {c for r in self.rows for c in r}
        marks = [m for m in STATUS_MEANING if m in used]
        marks += [m for m in EXTRA_MEANING if m in used]
        tokens = {t for r in self.rows for c in r for t in str(c).split()}  # marks after a number
        marks += [m for m in NOISE_MEANING if m in tokens]
        return marks

    def legend_lines(self) -> list[str]:
        return [f"`{m}` {STATUS_MEANING.get(m) or EXTRA_MEANING.get(m) or NOISE_MEANING[m]}"
                for m in self.marks_used()]

    def _align(self) -> str:
        return self.align or ("l" + "r" * (len(self.header) - 1))


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(t: Table) -> str:
    al = t._align()
    lines = [f"**{t.title}**", ""]
    lines.append("| " + " | ".join(_md_cell(h) for h in t.header) + " |")
    lines.append("|" + "|".join(" --- " if a == "l" else " ---: " for a in al) + "|")
    for r in t.rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in r) + " |")
    lines.append("")
    for n in t.notes:
        lines.append(n)
        lines.append("")
    leg = t.legend_lines()
    if leg:
        lines.append("Legend: " + "; ".join(leg) + ".")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


_TEX_SUBS = [
    ("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
    ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}"),
]
_TEX_SYMBOLS = {"×": r"$\times$", "±": r"$\pm$", "≥": r"$\geq$", "≤": r"$\leq$", "≈": r"$\approx$",
                "—": "---", "–": "--", "²": r"$^2$", "∝": r"$\propto$", "·": r"$\cdot$", "µ": r"$\mu$",
                "†": r"\dag{}"}


def tex_escape(s: str) -> str:
    s = str(s)
    out = []
    for ch in s:
        for a, b in _TEX_SUBS:
            if ch == a:
                out.append(b)
                break
        else:
            out.append(_TEX_SYMBOLS.get(ch, ch))
    return "".join(out)


def to_latex(t: Table) -> str:
    """A booktabs ``tabular`` only (``\\input``-ready); title and legend as % comments."""
    lines = [f"% {t.title}"]
    for n in t.notes:
        lines.append(f"% {n}".replace("`", ""))
    leg = t.legend_lines()
    if leg:
        lines.append("% Legend: " + "; ".join(leg).replace("`", ""))
    lines.append("% needs \\usepackage{booktabs}")
    lines.append(f"\\begin{{tabular}}{{{t._align()}}}")
    lines.append("\\toprule")
    lines.append(" & ".join(tex_escape(h) for h in t.header) + " \\\\")
    lines.append("\\midrule")
    for r in t.rows:
        lines.append(" & ".join(tex_escape(c) for c in r) + " \\\\")
    lines.append("\\bottomrule")
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


def to_csv(t: Table) -> str:
    return t.csv.to_csv(index=False, float_format="%.6g", lineterminator="\n")


def write_table(t: Table, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, render in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
        p = out_dir / f"{t.name}.{ext}"
        p.write_text(render(t), encoding="utf-8", newline="\n")
        paths.append(p)
    return paths


# --------------------------------------------------------------------------------------------
# helpers over one group's rows
# --------------------------------------------------------------------------------------------
def family_rank(family: str) -> int:
    return FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)


def value_sort_key(v: Any) -> tuple:
    """Parameter values in order: none, then numbers by size, then the rest by their text."""
    if v is None:
        return (0, 0.0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (1, float(v), "")
    return (2, 0.0, format_value(v))


def param_sort_key(params: Any) -> tuple:
    """Settings of one variant ordered by their values key by key (window=32 before window=128)."""
    if not isinstance(params, dict):
        return ()
    return tuple((k, value_sort_key(params[k])) for k in sorted(params))


def row_order(g: pd.DataFrame, baseline: str) -> list[str]:
    """Labels in table order: the baseline first, then by family (registry order), then name, the
    settings of one variant by their parameter values. A label is ``variant[k=v] [kv=h]``; for
    labels without parameters this is the plain name order (the variant's characters sort above
    the space before ``[kv=h]``)."""
    first = g.groupby("label", sort=True)[["family", "variant", "params"]].first().to_dict("index")

    def key(lab: str) -> tuple:
        r = first[lab]
        return (lab.split(" ")[0] != baseline, family_rank(r["family"]), str(r["variant"]),
                param_sort_key(r["params"]), lab)

    return sorted(first, key=key)


def seq_lens(g: pd.DataFrame) -> list[int]:
    return sorted(int(n) for n in g["seq_len"].unique())


def cell_map(g: pd.DataFrame) -> dict[tuple[str, int], dict]:
    return {(r["label"], int(r["seq_len"])): r for r in g.to_dict("records")}


def mark(row: dict | None) -> str | None:
    """The status mark of a row that has no number, or None for an ok row."""
    if row is None:
        return NOT_MEASURED
    st = row.get("status")
    if st == "ok":
        return None
    return STATUS_MARK.get(st, str(st))


def group_columns(group: dict) -> dict:
    return {k: group[k] for k in GROUP_FIELDS}


def csv_frame(records: list[dict], group: dict, columns: Sequence[str]) -> pd.DataFrame:
    """A table's CSV: the group's fields (GROUP_FIELDS) then ``columns``, one row per record."""
    gc = group_columns(group)
    df = pd.DataFrame([{**gc, **r} for r in records], columns=[*gc.keys(), *columns])
    return df


def _kv_column(g: pd.DataFrame) -> bool:
    return g["kv_heads"].nunique(dropna=True) > 1


def _front(label: str, g_first: dict, with_kv: bool) -> list[str]:
    front = [label, str(g_first["family"])]
    if with_kv:
        front.append(str(int(g_first["kv_heads"])))
    return front


def _front_header(with_kv: bool) -> list[str]:
    return ["variant", "family", *(["K/V heads"] if with_kv else [])]


def _grid_table(g: pd.DataFrame, group: dict, baseline: str, *, name: str, title: str,
                value: Callable[[dict, dict | None], tuple[str, dict]], csv_cols: Sequence[str],
                notes: Sequence[str] = ()) -> Table:
    """variants x n; ``value(row, base_row) -> (cell, csv fields)`` for ok rows."""
    ns = seq_lens(g)
    cells = cell_map(g)
    with_kv = _kv_column(g)
    firsts = g.groupby("label", sort=True).first().to_dict("index")
    rows, records = [], []
    for lab in row_order(g, baseline):
        out = _front(lab, firsts[lab], with_kv)
        for n in ns:
            r = cells.get((lab, n))
            m = mark(r)
            rec = {"variant": lab, "family": firsts[lab]["family"], "kernel": firsts[lab]["kernel"],
                   "kv_heads": firsts[lab]["kv_heads"], "seq_len": n,
                   "status": r["status"] if r is not None else "not_measured", "mark": m or ""}
            if m is None:
                c, extra = value(r, cells.get((baseline, n)))
                rec.update(extra)
                out.append(c)
                rec["mark"] = c if c in EXTRA_MEANING else ""
            else:
                out.append(m)
            records.append(rec)
        rows.append(out)
    header = [*_front_header(with_kv), *[f"n={n}" for n in ns]]
    csv = csv_frame(records, group, ["variant", "family", "kernel", "kv_heads", "seq_len", "status", "mark",
                                      *csv_cols])
    return Table(name=name, title=title, header=header, rows=rows, csv=csv,
                 align="l" * (len(header) - len(ns)) + "r" * len(ns), notes=list(notes))


# --------------------------------------------------------------------------------------------
# (1)-(4): grids of variants x n
# --------------------------------------------------------------------------------------------
def time_table(g, group, baseline, slug, desc) -> Table:
    def value(r, _b):
        med, iqr = r.get("time_ms_median"), r.get("time_ms_iqr")
        if not finite(med):
            return NOT_RECORDED, {}
        return marked(fmt_with_spread(med, iqr if finite(iqr) else None), noise_mark(r)), {
            "time_ms_median": med, "time_ms_iqr": iqr if finite(iqr) else None,
            "time_ms_min": r.get("time_ms_min"), "repeats": r.get("repeats"), "run": r.get("run"), **noise_fields(r)}

    return _grid_table(g, group, baseline, name=f"time_{slug}", value=value,
                       title=f"Median time per call (ms), interquartile range of the timed repeats in brackets — {desc}",
                       csv_cols=["time_ms_median", "time_ms_iqr", "time_ms_min", "repeats", "run", *NOISE_COLUMNS],
                       notes=_reasons_notes(g))


def speedup_table(g, group, baseline, slug, desc) -> Table:
    def value(r, b):
        if b is None or b.get("status") != "ok" or not finite(b.get("time_ms_median")):
            return NO_BASE, {}
        s = float(b["time_ms_median"]) / float(r["time_ms_median"])
        side = faster(r, b) if r is not b else 1  # the baseline's own row: 1.00×, no claim to qualify
        return marked(fmt_ratio(s), "" if side else WITHIN_NOISE, noise_mark(r, b)), {
            "speedup": s, "baseline_time_ms": b["time_ms_median"], "outside_noise": bool(side),
            "noise": NOISE_WORD[noise_mark(r, b)]}

    return _grid_table(g, group, baseline, name=f"speedup_{slug}", value=value,
                       title=f"Speed-up vs {baseline} (baseline median time / variant median time; >1 is faster) — {desc}",
                       csv_cols=["speedup", "baseline_time_ms", "outside_noise", "noise"],
                       notes=[f"A speed-up without `{WITHIN_NOISE}` is outside the noise: the {LEVEL:.0%} confidence "
                              f"intervals of the two medians do not overlap. `{NOISY}` / `{UNSTABLE}`: either row's "
                              f"time is noisy / unstable."])


def memory_table(g, group, baseline, slug, desc) -> Table:
    def value(r, _b):
        b = r.get("peak_mem_bytes")
        if not finite(b):
            return NOT_RECORDED, {}
        return fmt_num(float(b) / MIB), {"peak_mem_mib": float(b) / MIB, "peak_mem_bytes": b,
                                         "io_bytes": r.get("io_bytes")}

    return _grid_table(g, group, baseline, name=f"memory_{slug}", value=value,
                       title=f"Peak memory above the inputs (MiB; q, k, v and output not counted) — {desc}",
                       csv_cols=["peak_mem_mib", "peak_mem_bytes", "io_bytes"])


def gflops_table(g, group, baseline, slug, desc) -> Table:
    peaks = sorted({round(float(p), 1) for p in g.get("gemm_peak_gflops", pd.Series(dtype=float)).dropna()})
    peak_txt = (f"{fmt_num(peaks[0])} GFLOP/s" if len(peaks) == 1 else
                f"{fmt_num(peaks[0])}–{fmt_num(peaks[-1])} GFLOP/s (each run its own)") if peaks else "not recorded"

    def value(r, _b):
        gf, frac = r.get("gflops_per_s"), r.get("peak_fraction")
        if not finite(gf):
            return NOT_RECORDED, {}
        c = fmt_num(gf) + (f" ({100 * float(frac):.0f}%)" if finite(frac) else "")
        return marked(c, noise_mark(r)), {"gflops_per_s": gf, "peak_fraction": frac if finite(frac) else None,
                                          "noise": NOISE_WORD[noise_mark(r)]}

    return _grid_table(g, group, baseline, name=f"gflops_{slug}", value=value,
                       title=f"Achieved GFLOP/s (fraction of the measured GEMM peak in parentheses) — {desc}",
                       csv_cols=["gflops_per_s", "peak_fraction", "noise"],
                       notes=[f"FLOPs count the work the variant is meant to do (its own flops(shape)); "
                              f"GEMM peak measured by the run: {peak_txt}."])


def _reasons_notes(g: pd.DataFrame) -> list[str]:
    """First reason per (variant, status) for rows that did not run."""
    seen: dict[tuple[str, str], str] = {}
    for r in g.sort_values(["label", "seq_len"]).to_dict("records"):
        if r.get("status") == "ok":
            continue
        reasons = r.get("reasons")
        if isinstance(reasons, (list, tuple)) and reasons:
            key = (r["label"], STATUS_MARK.get(r["status"], r["status"]))
            if key not in seen:
                text = " ".join(str(reasons[0]).split())
                seen[key] = text[:157] + "..." if len(text) > 160 else text
    if not seen:
        return []
    items = [f"{v} `{m}`: {why}" for (v, m), why in sorted(seen.items())]
    return ["Why cases did not run (first reason per variant and mark): " + "; ".join(items) + "."]


# --------------------------------------------------------------------------------------------
# (5) scaling exponents
# --------------------------------------------------------------------------------------------
def fit_points(v: pd.DataFrame, col: str, min_n: int) -> tuple[pd.DataFrame, str]:
    """ok rows with a positive value; n >= min_n when two distinct such n exist, else all."""
    ok = v[(v["status"] == "ok") & v[col].map(finite)]
    ok = ok[ok[col].astype(float) > 0]
    big = ok[ok["seq_len"] >= min_n]
    if big["seq_len"].nunique() >= 2:
        return big, f"n ≥ {min_n}"
    return ok, "all ok n"


def fmt_slope(f: SlopeFit) -> str:
    """``1.02 ± 0.05`` (± the half-width of the LEVEL interval); an exponent without an interval
    says why."""
    if not math.isfinite(f.slope):
        return "too few points"
    if not math.isfinite(f.half_width):
        return f"{f.slope:.2f} (no interval: {f.points} points)"
    return f"{f.slope:.2f} ± {f.half_width:.2f}"


def _fit(pts: pd.DataFrame, col: str) -> SlopeFit:
    """The exponent of ``col`` over ``pts``; times carry their medians' own intervals."""
    if not len(pts):
        return fit_loglog_ci([], [])
    rel = [ci_rel(r) for r in pts.to_dict("records")] if col == "time_ms_median" else None
    return fit_loglog_ci(pts["seq_len"], pts[col].astype(float), rel)


def scaling_rows(g: pd.DataFrame, baseline: str, min_n: int, declared: dict[str, dict]) -> list[dict]:
    out = []
    for lab in row_order(g, baseline):
        v = g[g["label"] == lab]
        rec: dict[str, Any] = {"variant": lab, "family": v["family"].iloc[0]}
        for col, key in (("time_ms_median", "time"), ("peak_mem_bytes", "mem")):
            pts, rule = fit_points(v, col, min_n)
            f = _fit(pts, col)
            k = f.points
            rec.update({f"{key}_exponent": f.slope, f"{key}_exponent_se": f.se, f"{key}_exponent_lo": f.lo,
                        f"{key}_exponent_hi": f.hi, f"{key}_points": k, f"{key}_text": fmt_slope(f),
                        f"{key}_n_min": int(pts["seq_len"].min()) if k else None,
                        f"{key}_n_max": int(pts["seq_len"].max()) if k else None, f"{key}_fit": rule})
        d = declared.get(str(v["variant"].iloc[0]), {})
        rec["declared_time"] = d.get("time", "")
        rec["declared_memory"] = d.get("memory", "")
        out.append(rec)
    return out


SCALING_NOTE = (
    "Exponent k of time ∝ n^k (median times) and of peak memory above the inputs ∝ n^k, by least squares on "
    "log–log over the ok points with n ≥ {min_n} (all ok points when fewer than two such n exist). ± is the "
    "half-width of the slope's {level:.0%} confidence interval: the wider of the interval from the fit's "
    "residuals (Student t, points − 2 degrees of freedom) and, for time, the one the medians' own "
    "{level:.0%} intervals give when propagated through the fit (attnbench.scaling.fit_loglog_ci). Two "
    "points without such intervals give no interval. Memory points of 0 bytes are left out of the fit. "
    "Declared: the registry's complexity.")


def scaling_table(g, group, baseline, slug, desc, *, min_n: int, declared: dict[str, dict]) -> Table:
    recs = scaling_rows(g, baseline, min_n, declared)
    rows = []
    for r in recs:
        def rng(key):
            return (f"{r[f'{key}_n_min']}–{r[f'{key}_n_max']} ({r[f'{key}_points']})" if r[f"{key}_points"]
                    else "no ok points")

        rows.append([r["variant"], str(r["family"]), r["time_text"], rng("time"), r["mem_text"], rng("mem"),
                     r["declared_time"] or NOT_MEASURED, r["declared_memory"] or NOT_MEASURED])
    header = ["variant", "family", "time exponent", "fit n (points)", "memory exponent", "fit n (points)",
              "declared time", "declared memory"]
    cols = ["variant", "family", *(f"{key}_{c}" for key in ("time", "mem") for c in (
        "exponent", "exponent_se", "exponent_lo", "exponent_hi", "points", "n_min", "n_max", "fit")),
        "declared_time", "declared_memory"]
    return Table(name=f"scaling_{slug}", title=f"Fitted log–log scaling exponents — {desc}", header=header,
                 rows=rows, csv=csv_frame(recs, group, cols), align="llrlrlll",
                 notes=[SCALING_NOTE.format(min_n=min_n, level=LEVEL)])


# --------------------------------------------------------------------------------------------
# (6) crossover vs the baseline
# --------------------------------------------------------------------------------------------
NO_CROSSOVER = "no crossover outside the noise"


def crossover(points: list[tuple[int, str, float | None]]) -> dict[str, Any]:
    """Where a variant becomes faster than the baseline outside the noise and stays so.

    ``points``: ascending (n, outcome, ratio); outcome "win" (faster outside the noise, or the
    baseline failed), "loss" (slower outside the noise, or the variant failed) or "tie" (the two
    medians' intervals overlap); ratio = baseline time / variant time where both ran, else None.
    A crossover needs a loss before a run of wins that lasts to the largest n: "crossover" with
    the n interpolated on log–log when that loss is the n just before the first win, else only
    the bracket (last_slower_n, first_faster_n) with ties between. Otherwise "always" (wins at
    every n), "never in range" (a loss at the largest n), NO_CROSSOVER (a tie at the largest n),
    "faster from" (ties, then wins: never slower outside the noise) or "no common n".
    """
    none = {"crossover_n": None, "first_faster_n": None, "last_slower_n": None}
    if not points:
        return {"verdict": "no common n", **none}
    out = [o for _, o, _ in points]
    i = len(points)
    while i > 0 and out[i - 1] == "win":
        i -= 1
    if i == 0:
        return {"verdict": "always", **none, "first_faster_n": points[0][0]}
    if i == len(points):
        return {"verdict": "never in range" if out[-1] == "loss" else NO_CROSSOVER, **none}
    losses = [j for j in range(i) if out[j] == "loss"]
    if not losses:
        return {"verdict": "faster from", **none, "first_faster_n": points[i][0]}
    (n0, _, r0), (n1, _, r1) = points[losses[-1]], points[i]
    found = {"verdict": "crossover", "first_faster_n": n1, "last_slower_n": n0}
    if losses[-1] != i - 1:
        return {**found, "crossover_n": None, "how": "bracketed (equal within the noise in between)"}
    if r0 is not None and r1 is not None and r0 > 0 and r1 > 0 and r1 != r0:
        x0, x1, y0, y1 = math.log(n0), math.log(n1), math.log(r0), math.log(r1)
        return {**found, "crossover_n": math.exp(x0 + (0.0 - y0) * (x1 - x0) / (y1 - y0)), "how": "interpolated"}
    return {**found, "crossover_n": float(n1), "how": "measured (no ratio on one side)"}


def crossover_points(v: pd.DataFrame, b: pd.DataFrame) -> list[tuple[int, str, float | None]]:
    vb = {int(r["seq_len"]): r for r in v.to_dict("records")}
    bb = {int(r["seq_len"]): r for r in b.to_dict("records")}
    pts = []
    for n in sorted(set(vb) & set(bb)):
        rv, rb = vb[n], bb[n]
        vok = rv["status"] == "ok" and finite(rv.get("time_ms_median"))
        bok = rb["status"] == "ok" and finite(rb.get("time_ms_median"))
        if vok and bok:
            r = float(rb["time_ms_median"]) / float(rv["time_ms_median"])
            pts.append((n, {1: "win", -1: "loss", 0: "tie"}[faster(rv, rb)], r))
        elif vok and rb["status"] in BASE_FAILED:
            pts.append((n, "win", None))
        elif bok and rv["status"] in VARIANT_FAILED:
            pts.append((n, "loss", None))
    return pts


def _crossover_cells(c: dict, pts: list) -> tuple[str, str]:
    """(crossover n cell, detail) of one variant's verdict."""
    v = c["verdict"]
    if v == "crossover" and c["crossover_n"] is None:
        return (f"{c['last_slower_n']}–{c['first_faster_n']}",
                f"slower outside the noise at n = {c['last_slower_n']}, faster from n = {c['first_faster_n']} on; "
                f"within the noise between")
    if v == "crossover":
        cell = f"≈ {c['crossover_n']:.0f}" if c.get("how") == "interpolated" else f"{c['crossover_n']:.0f}"
        return cell, f"faster outside the noise from measured n = {c['first_faster_n']} on"
    if v == "always":
        return "always", f"faster outside the noise at every common n ({pts[0][0]}–{pts[-1][0]})"
    if v == "never in range":
        return "never in range", f"slower at the largest common n = {pts[-1][0]}"
    if v == "faster from":
        return (f"faster from {c['first_faster_n']}",
                f"equal within the noise below n = {c['first_faster_n']}, faster outside it from there on")
    if v == NO_CROSSOVER:
        return NO_CROSSOVER, f"within the noise at the largest common n = {pts[-1][0]}"
    return "no common n", "no n where both ran (or failed comparably)"


def _last_speedup(last) -> str:
    if last is None:
        return NOT_MEASURED
    n, outcome, ratio = last
    if ratio is None:
        return f"{'baseline failed' if outcome == 'win' else 'variant failed'} at n={n}"
    return f"{marked(fmt_ratio(ratio), WITHIN_NOISE if outcome == 'tie' else '')} at n={n}"


CROSSOVER_NOTE = (
    "Crossover: the smallest n from which the variant is faster than {baseline} outside the noise at every "
    "larger measured n, where it was slower outside the noise before: interpolated on log–log between the "
    "last slower and the first faster measured n (≈) when those are neighbours, else the bracket "
    "“slower at – faster from”. Outside the noise: the {level:.0%} confidence intervals of the two medians "
    "do not overlap (time_ci_rel, else the samples); a noisy row is never outside it. A baseline that failed "
    "(OOM, timeout, skip) where the variant ran counts as the variant being faster; a variant that failed "
    "where the baseline ran counts as slower. “always”: faster outside the noise at every common n; “never "
    "in range”: slower at the largest common n; “{none}”: the two are equal within the noise at the largest "
    "common n; “faster from n”: equal within the noise below n, faster outside it from n on (never slower).")


def crossover_table(g, group, baseline, slug, desc) -> Table:
    b = g[g["label"] == baseline]
    rows, recs = [], []
    for lab in row_order(g, baseline):
        if lab == baseline:
            continue
        v = g[g["label"] == lab]
        pts = crossover_points(v, b)
        c = crossover(pts)
        last = pts[-1] if pts else None
        cell, detail = _crossover_cells(c, pts)
        rows.append([lab, str(v["family"].iloc[0]), cell, detail, _last_speedup(last)])
        recs.append({"variant": lab, "family": v["family"].iloc[0], "verdict": c["verdict"],
                     "crossover_n": c["crossover_n"], "last_slower_n": c["last_slower_n"],
                     "first_faster_n": c["first_faster_n"], "method": c.get("how", ""),
                     "n_common_min": pts[0][0] if pts else None, "n_common_max": pts[-1][0] if pts else None,
                     "speedup_at_n_max": last[2] if last else None,
                     "outside_noise_at_n_max": (last[1] != "tie") if last else None})
    cols = ["variant", "family", "verdict", "crossover_n", "last_slower_n", "first_faster_n", "method",
            "n_common_min", "n_common_max", "speedup_at_n_max", "outside_noise_at_n_max"]
    return Table(name=f"crossover_{slug}", title=f"Crossover n vs {baseline} (time) — {desc}",
                 header=["variant", "family", "crossover n", "detail", "speed-up at largest common n"],
                 rows=rows, csv=csv_frame(recs, group, cols), align="llrll",
                 notes=[CROSSOVER_NOTE.format(baseline=baseline, level=LEVEL, none=NO_CROSSOVER)])


# --------------------------------------------------------------------------------------------
# accuracy and attention statistics (only when the rows carry them)
# --------------------------------------------------------------------------------------------
def has_column(g: pd.DataFrame, col: str) -> bool:
    return col in g.columns and g[col].map(finite).any()


def accuracy_table(g, group, baseline, slug, desc) -> Table | None:
    if not (has_column(g, "rel_err") or has_column(g, "rel_err_sharp")):
        return None
    rows, recs = [], []
    for lab in row_order(g, baseline):
        v = g[g["label"] == lab]
        rec = {"variant": lab, "family": v["family"].iloc[0], "exact": bool(v["exact"].iloc[0])}
        cells = [lab, str(rec["family"]), "yes" if rec["exact"] else "approx"]
        for col in ("rel_err", "rel_err_sharp"):
            vals = v[col].map(lambda x: float(x) if finite(x) else np.nan).dropna() if col in v else pd.Series(dtype=float)
            val = float(vals.median()) if len(vals) else None
            rec[col] = val
            cells.append(fmt_sci(val) if val is not None else (NOT_MEASURED if rec["exact"] else NOT_RECORDED))
        if all(rec[c] is None for c in ("rel_err", "rel_err_sharp")) and rec["exact"]:
            continue  # exact kernels without an error figure add nothing here
        rows.append(cells)
        recs.append(rec)
    if not rows:
        return None
    notes = ["rel_err = ‖out − exact‖_F / ‖exact‖_F against exact softmax attention on gaussian inputs; "
             "rel_err (sharp) on inputs with peaked attention (attnbench.approx, n = 1024); median over the "
             "variant's rows."]
    return Table(name=f"accuracy_{slug}", title=f"Approximation error vs exact softmax attention — {desc}",
                 header=["variant", "family", "exact", "rel_err (gaussian)", "rel_err (sharp)"], rows=rows,
                 csv=csv_frame(recs, group, ["variant", "family", "exact", "rel_err", "rel_err_sharp"]),
                 align="lllrr", notes=notes)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix or "value": d}
    out: dict[str, Any] = {}
    for k in sorted(d, key=str):
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(d[k], dict):
            out.update(_flatten(d[k], key))
        else:
            out[key] = d[k]
    return out


def stats_table(g, group, baseline, slug, desc) -> Table | None:
    if "stats" not in g.columns:
        return None
    recs = []
    for r in g.sort_values(["label", "seq_len"]).to_dict("records"):
        s = r.get("stats")
        if isinstance(s, str):
            try:
                s = json.loads(s)
            except ValueError:
                pass
        if s is None or (isinstance(s, float) and not math.isfinite(s)):
            continue
        recs.append({"variant": r["label"], "seq_len": int(r["seq_len"]), **_flatten(s)})
    if not recs:
        return None
    keys = sorted({k for r in recs for k in r} - {"variant", "seq_len"})
    order = {lab: i for i, lab in enumerate(row_order(g, baseline))}
    recs.sort(key=lambda r: (order.get(r["variant"], 1 << 30), r["variant"], r["seq_len"]))

    def fmt(x):
        if x is None:
            return NOT_RECORDED
        if isinstance(x, bool):
            return "yes" if x else "no"
        if isinstance(x, (int, float, np.number)):
            return fmt_num(float(x)) if (x == 0 or 1e-3 <= abs(float(x)) < 1e6) else fmt_sci(float(x))
        return json.dumps(x, sort_keys=True, default=str)

    rows = [[r["variant"], str(r["seq_len"]), *[fmt(r.get(k)) for k in keys]] for r in recs]
    csv_recs = [{k: (json.dumps(v, sort_keys=True, default=str) if isinstance(v, (list, dict)) else v)
                 for k, v in r.items()} for r in recs]
    return Table(name=f"stats_{slug}", title=f"Attention statistics — {desc}", header=["variant", "n", *keys],
                 rows=rows, csv=csv_frame(csv_recs, group, ["variant", "seq_len", *keys]),
                 align="lr" + "r" * len(keys))
