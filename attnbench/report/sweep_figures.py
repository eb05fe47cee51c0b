"""Figures of parameter sweeps (:mod:`attnbench.report.sweeps`): time and memory vs the swept
parameter at the sweep's fixed n, and for approximate variants the speed/error trade-off.

Same conventions as :mod:`attnbench.report.figures`: ``Figure`` objects without pyplot state,
the variant's colour and marker from the report's :class:`~attnbench.report.figures.Style`,
the baseline as a dark dashed reference line, files written by ``figures.save``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from attnbench.report.figures import DPI, Style, legend_outside, rc_params, save, set_log_y
from attnbench.report.sweeps import Sweep, is_approx, sweep_records

BASE_REF_STYLE = dict(color="0.15", lw=1.0, ls=(0, (6, 3)), zorder=2)  # the baseline in sweep figures
# (record key, what the inputs were, marker, line style) per error series of the trade-off figure
ERR_SERIES = (("rel_err", "gaussian inputs", "o", "-"), ("rel_err_sharp", "sharp inputs", "s", "--"))


# --------------------------------------------------------------------------------------------
# axes
# --------------------------------------------------------------------------------------------
def _spans_decade(vals: Sequence[float]) -> bool:
    """Log axis when every value is positive and they span more than 10x."""
    vals = [float(v) for v in vals if v is not None]
    return bool(vals) and min(vals) > 0 and max(vals) > 10 * min(vals)


def _plain_log_ticks(axis, vals: Sequence[float]) -> None:
    """Ticks of a log axis as plain numbers (0.1, 2, 50), at 1-2-5 steps over short spans."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    vals = [v for v in vals if v is not None and v > 0]
    decades = math.log10(max(vals) / min(vals)) if vals else 0.0
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _sweep_x(ax, s: Sweep, param_doc: str) -> list[float]:
    """x positions of the settings: the values (log when they span > 10x), or 0..k-1 for text."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    log = s.numeric and _spans_decade(s.values)
    xs = [float(v) for v in s.values] if s.numeric else [float(i) for i in range(len(s.values))]
    if log:
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 1.4, max(xs) * 1.4)
    else:
        pad = 0.08 * (max(xs) - min(xs)) if s.numeric and max(xs) > min(xs) else 0.5  # categories: half a slot
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_major_formatter(FixedFormatter([s.value_text(i) for i in range(len(xs))]))
    ax.xaxis.set_minor_locator(NullLocator())
    doc = f" — {param_doc}" if param_doc else ""
    ax.set_xlabel(f"{s.param}{doc}" + (" (log scale)" if log else ""))
    return xs


def _sweep_y(ax, vals: Sequence[float]) -> None:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if _spans_decade(vals):
        set_log_y(ax, vals, headroom=False)
        _plain_log_ticks(ax.yaxis, vals)
    elif vals:
        ax.set_ylim(0, max(vals) * 1.15)


# --------------------------------------------------------------------------------------------
# the figures
# --------------------------------------------------------------------------------------------
def _sweep_panel(ax, s: Sweep, recs: list[dict], key: str, base_key: str, kw: dict, what: str,
                 param_doc: str, baseline: str) -> None:
    xs = _sweep_x(ax, s, param_doc)
    pts = [(x, r[key], r["time_ms_iqr"] if key == "time_ms_median" else None) for x, r in zip(xs, recs)
           if r[key] is not None]
    base = recs[0][base_key] if recs else None
    if pts:
        err = [e / 2 if e is not None else 0.0 for _, _, e in pts] if key == "time_ms_median" else None
        # a text parameter's settings are categories: no line between them
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=err, color=kw["color"], marker=kw["marker"],
                    ls="-" if s.numeric else "none", capsize=3, markersize=5, zorder=3, label=f"{s.variant}")
    else:
        ax.text(0.5, 0.5, f"{what} not recorded", transform=ax.transAxes, ha="center", color="0.4")
    if base is not None:
        ax.axhline(base, **BASE_REF_STYLE, label=f"{baseline} at n = {s.n}")
    _sweep_y(ax, [p[1] for p in pts] + ([base] if base is not None else []))


def sweep_figure(s: Sweep, recs: list[dict], baseline: str, style: Style, first: dict, title_desc: str,
                 param_doc: str = ""):
    """Median time (bars: IQR) and peak memory vs the swept parameter at the sweep's n."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.8), dpi=DPI, layout="constrained")
    ax_t, ax_m = fig.subplots(1, 2)
    kw = style.line_kw(str(first["pattern"]), str(first["kernel"]), str(first["family"]))
    _sweep_panel(ax_t, s, recs, "time_ms_median", "baseline_time_ms", kw, "time", param_doc, baseline)
    _sweep_panel(ax_m, s, recs, "peak_mem_mib", "baseline_peak_mem_mib", kw, "memory", param_doc, baseline)
    ax_t.set_ylabel("median time per call (ms)")
    ax_m.set_ylabel("peak memory above inputs (MiB)")
    failed = [f"{r['value_text']} ({r['mark']})" for r in recs if r["mark"]]
    ax_t.set_title("time (error bar: interquartile range)" + (f"; not ok: {', '.join(failed)}" if failed else ""),
                   loc="left", fontsize=9)
    ax_m.set_title("peak memory", loc="left", fontsize=9)
    handles, labels = ax_t.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle(f"Sweep of {s.param} for {s.variant} at n = {s.n} ({s.n_rule})\n{title_desc}", fontsize=10)
    return fig


def tradeoff_figure(s: Sweep, recs: list[dict], baseline: str, style: Style, first: dict, title_desc: str):
    """rel_err and rel_err_sharp vs median time at the sweep's n, one point per setting annotated
    with its value: the speed/error trade-off. None when fewer than two settings have both."""
    from matplotlib.figure import Figure

    pts = [r for r in recs if r["time_ms_median"] is not None and
           any(r[k] is not None for k, *_ in ERR_SERIES)]
    if len(pts) < 2:
        return None
    fig = Figure(figsize=(8.0, 4.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    color = style.line_kw(str(first["pattern"]), str(first["kernel"]), str(first["family"]))["color"]
    ys_all = []
    for key, what, marker, ls in ERR_SERIES:
        p = [(r["time_ms_median"], r[key], r["value_text"]) for r in pts if r[key] is not None]
        if not p:
            continue
        ax.plot([x for x, _, _ in p], [y for _, y, _ in p], color=color if key == "rel_err" else "0.35",
                marker=marker, ls=ls, zorder=3, label=f"rel_err, {what}")
        for x, y, text in p:
            ax.annotate(text, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=7, color="0.2")
        ys_all += [y for _, y, _ in p]
    xs_all = [r["time_ms_median"] for r in pts]
    bt = recs[0]["baseline_time_ms"]
    if bt is not None:
        ax.axvline(bt, **BASE_REF_STYLE, label=f"{baseline} time (exact)")
        xs_all.append(bt)
    for axis, vals, setter in ((ax.xaxis, xs_all, ax.set_xscale), (ax.yaxis, ys_all, ax.set_yscale)):
        if _spans_decade(vals):
            setter("log")
            _plain_log_ticks(axis, vals)
    ax.margins(x=0.12, y=0.15)
    ax.set_xlabel(f"median time per call at n = {s.n} (ms)")
    ax.set_ylabel("relative error vs exact attention\n‖out − exact‖_F / ‖exact‖_F")
    ax.set_title(f"one point per setting, annotated with {s.param}; errors measured at n = 1024",
                 loc="left", fontsize=8, color="0.3")
    fig.suptitle(f"Speed / error trade-off of {s.variant} over {s.param}\n{title_desc}", fontsize=10)
    legend_outside(ax)
    return fig


# --------------------------------------------------------------------------------------------
# one group's sweep figures, written
# --------------------------------------------------------------------------------------------
def write_sweep_figures(g: pd.DataFrame, group: dict, sweeps: Sequence[Sweep], baseline: str, style: Style,
                        fig_dir: Path, desc: str, declared: dict) -> list[tuple[str, str]]:
    """Per sweep: time and memory vs the parameter; for approximate variants the trade-off too.
    Writes ``<stem>.png`` and ``<stem>.pdf`` into ``fig_dir``; returns (README line, stem) each."""
    import matplotlib

    made = []
    subjects = [s.subject for s in sweeps]
    with matplotlib.rc_context(rc_params()):
        for s in sweeps:
            recs = sweep_records(g, s, baseline)
            first = g[g["variant"] == s.variant].iloc[0].to_dict()
            doc = declared.get(s.variant, {}).get("params", {}).get(s.param, {}).get("doc", "")
            stem = f"sweep_{s.stem}_{group['slug']}"
            save(sweep_figure(s, recs, baseline, style, first, desc, doc), fig_dir / stem)
            made.append((f"Sweep of {s.param} for {s.variant}: median time (IQR bars) and peak memory vs "
                         f"{s.param} at n = {s.n} ({s.n_rule})", stem))
            fig = tradeoff_figure(s, recs, baseline, style, first, desc) if is_approx(g, s) else None
            if fig is not None:
                # two sweeps of one variant (two parameters) would share the name: the parameter tells them apart
                sub = s.subject if subjects.count(s.subject) == 1 else s.stem
                stem = f"tradeoff_{sub}_{group['slug']}"
                save(fig, fig_dir / stem)
                made.append((f"Speed/error trade-off of {s.variant} over {s.param}: rel_err and rel_err_sharp "
                             f"vs median time at n = {s.n}, one point per setting", stem))
    return made
