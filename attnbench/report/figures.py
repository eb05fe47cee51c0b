"""Figures from stored result rows (matplotlib Agg through ``Figure`` objects, seaborn styling).

Line figures over n (time, memory, speed-up, throughput) hold at most ``LINE_CAP`` lines per
panel: one panel when the group fits, else one per family, split by pattern, kernel and even
chunks of settings where needed (:func:`panels_for`), in two columns beyond
``ONE_COLUMN_UP_TO`` panels. The baseline is drawn near black in every panel; the other lines
of a panel each get their own colour (a dark-to-light ramp by value when the panel holds one
variant's settings), the kernel's marker and the pattern's dash, a spare marker where those
would repeat (:func:`panel_styles`). Time and throughput lines carry a band over the
interquartile range of the timed calls; white-filled markers are points not to read as clean
(a noisy time, a speed-up within the noise: ``noise.is_noisy`` / ``noise.faster``).
Cases that did not run are drawn, never dropped: a hollow marker per failure kind in a strip at
the top edge of the axes at the n that failed, with a legend entry; variants that never ran
(unsupported everywhere) are named in a note under the figure. Legends sit outside the axes on
the right. The bubble chart and the sweep figures use :class:`Style`: one colour per family,
shaded and dashed per pattern, one marker per kernel, settings dark to light by value.

Output is deterministic: no pyplot state, fixed rcParams (``svg.hashsalt``), sorted iteration,
PDF without a creation date. The figures of parameter sweeps are in
:mod:`attnbench.report.sweep_figures`.
"""
from __future__ import annotations

import colorsys
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from attnbench.report.noise import faster, finite, is_noisy, quartiles
from attnbench.report.sweeps import settings_of
from attnbench.report.tables import FAMILY_ORDER, MIB, family_rank, param_sort_key, row_order
from attnbench.scaling import LEVEL

DPI = 150
LINE_CAP = 8  # at most this many lines of variants per panel, the baseline's included
ONE_COLUMN_UP_TO = 3  # panels in one column up to this many, in two beyond
PANEL_PALETTE = "tab10"  # colours of the lines of one panel, in order (its grey left out)
SETTINGS_CMAP = "viridis"  # a panel of one variant's settings: dark (smallest value) to light
BASELINE_COLOR = "0.1"
BAND_ALPHA = 0.15  # the interquartile band around a time or throughput line
HOLLOW_MEANING = {False: "white-filled marker: noisy (worker lacked CPU)",
                  True: f"white-filled marker: within the noise ({LEVEL:.0%} intervals overlap)"}
KERNEL_MARKERS = {
    "sdpa": "o", "naive": "s", "flash": "^", "flex": "D", "math": "v", "blocked": "P", "dense": "h",
    "sdpa_mask": "p", "xformers": "<", "efficient": ">", "cudnn": "8", "favor": "H", "lsh": "d",
}
SPARE_MARKERS = ["o", "s", "^", "D", "v", "P", "h", "p", "<", ">", "8", "H", "d", "*"]
PATTERN_DASHES = ["-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1))]
# Failure kinds: hollow markers in the top strip.
FAIL_STYLE = {
    "oom": ("x", "OOM"), "timeout": ("+", "timeout"), "skipped": ("1", "skipped (not attempted)"),
    "crash": ("*", "crash"), "error": ("*", "error"), "incorrect": ("d", "incorrect"),
    "unsupported": ("_", "unsupported at this n"),
}
NO_BASE_STYLE = ("|", "baseline did not run")
REF_STYLE = dict(color="0.55", lw=1.0, ls=(0, (4, 3)), zorder=1)
SETTING_LIGHTNESS = (0.22, 0.70)  # darkest and lightest line of one variant's settings


def rc_params() -> dict:
    import seaborn as sns

    rc = dict(sns.axes_style("whitegrid"))
    rc.update({
        "svg.hashsalt": "attnbench-report", "pdf.fonttype": 42, "ps.fonttype": 42,
        "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
        "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.dpi": DPI, "savefig.dpi": DPI,
        "path.simplify": False, "axes.grid.which": "major", "grid.color": "0.9",
        "axes.edgecolor": "0.4", "lines.linewidth": 1.4, "lines.markersize": 5,
    })
    return rc


# --------------------------------------------------------------------------------------------
# style: colour per family (shade per pattern), marker per kernel
# --------------------------------------------------------------------------------------------
@dataclass
class Style:
    family_color: dict[str, tuple]
    pattern_shade: dict[str, tuple]  # pattern -> rgb
    pattern_dash: dict[str, object]
    kernel_marker: dict[str, str]
    # (variant, params_key) -> rgb, only for variants run at several settings: their lines would
    # otherwise be identical (same pattern and kernel)
    setting_color: dict[tuple[str, str], tuple] = field(default_factory=dict)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> "Style":
        import seaborn as sns

        tab10 = sns.color_palette("tab10", 10)
        fams = sorted(set(df["family"].dropna().astype(str)), key=lambda f: (family_rank(f), f))
        fam_color = {}
        for f in fams:
            i = FAMILY_ORDER.index(f) if f in FAMILY_ORDER else len(FAMILY_ORDER) + fams.index(f)
            fam_color[f] = tuple(tab10[i % 10])
        shade, dash = {}, {}
        pf = df[["pattern", "family"]].dropna().drop_duplicates()
        for f in fams:
            pats = sorted(set(pf[pf["family"] == f]["pattern"].astype(str)))
            h, l, s = colorsys.rgb_to_hls(*fam_color[f])
            for j, p in enumerate(pats):
                # lightness steps around the family colour: dark to light
                k = len(pats)
                lj = l if k == 1 else min(0.78, max(0.22, l - 0.16 + 0.32 * j / (k - 1)))
                shade.setdefault(p, colorsys.hls_to_rgb(h, lj, s))
                dash.setdefault(p, PATTERN_DASHES[j % len(PATTERN_DASHES)])
        kernels = sorted(set(df["kernel"].dropna().astype(str)))
        spare = [m for m in SPARE_MARKERS if m not in KERNEL_MARKERS.values()] + SPARE_MARKERS
        markers, u = {}, 0
        for k in kernels:
            if k in KERNEL_MARKERS:
                markers[k] = KERNEL_MARKERS[k]
            else:
                markers[k] = spare[u % len(spare)]
                u += 1
        return cls(fam_color, shade, dash, markers, _setting_colors(df, shade, fam_color))

    def line_kw(self, pattern: str, kernel: str, family: str) -> dict:
        return dict(color=self.pattern_shade.get(pattern, self.family_color.get(family, (0.3, 0.3, 0.3))),
                    marker=self.kernel_marker.get(kernel, "o"), ls=self.pattern_dash.get(pattern, "-"))

    def kw(self, first: dict) -> dict:
        """``line_kw`` of a label from its first row; a setting of a variant run at several settings
        gets its own lightness."""
        kw = self.line_kw(str(first["pattern"]), str(first["kernel"]), str(first["family"]))
        c = self.setting_color.get((str(first.get("variant")), str(first.get("params_key"))))
        if c is not None:
            kw["color"] = c
        return kw


def _setting_colors(df: pd.DataFrame, shade: dict, fam_color: dict) -> dict[tuple[str, str], tuple]:
    """A lightness ramp (dark = smallest value) over the settings of each variant run at several,
    in the hue of its pattern, ordered by the parameter values (tables.param_sort_key)."""
    out: dict[tuple[str, str], tuple] = {}
    if "params_key" not in df.columns:
        return out
    for variant, v in df.groupby("variant", sort=True):
        settings = settings_of(v)
        if len(settings) < 2:
            continue
        order = sorted(settings, key=lambda pk: (param_sort_key(settings[pk]), pk))
        r = v.iloc[0]
        h, _l, s = colorsys.rgb_to_hls(*shade.get(str(r["pattern"]), fam_color.get(str(r["family"]), (0.3, 0.3, 0.3))))
        s = max(s, 0.45)  # a grey-ish pattern colour would leave only lightness to tell settings apart
        for j, pk in enumerate(order):
            out[(str(variant), pk)] = colorsys.hls_to_rgb(h, SETTING_LIGHTNESS[0] + (SETTING_LIGHTNESS[1] -
                                                          SETTING_LIGHTNESS[0]) * j / (len(order) - 1), s)
    return out


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def fmt_n_tick(n: int) -> str:
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)


def _columns(panels: int) -> int:
    return 1 if panels <= ONE_COLUMN_UP_TO else 2


def _new_figure(panels: int, width: float = 9.0, panel_h: float = 3.3):
    """``panels`` axes, one column (two beyond ONE_COLUMN_UP_TO), filled row by row; an empty
    last cell is left blank."""
    from matplotlib.figure import Figure

    cols = _columns(panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, panel_h * rows + 0.5), dpi=DPI, layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False)
    axes = [grid[i // cols, i % cols] for i in range(panels)]
    for i in range(panels, rows * cols):
        grid[i // cols, i % cols].set_axis_off()
    return fig, axes


def _bottom_axes(axes: list, cols: int) -> list:
    """The lowest panel of each column (they carry the x label)."""
    return [ax for i, ax in enumerate(axes) if i + cols >= len(axes)]


def _set_n_axis(ax, ns: Sequence[int]) -> None:
    from matplotlib.ticker import FixedLocator, FixedFormatter, NullLocator

    ax.set_xscale("log")
    ns = sorted(ns)
    ax.xaxis.set_major_locator(FixedLocator(ns))
    ax.xaxis.set_major_formatter(FixedFormatter([fmt_n_tick(n) for n in ns]))
    ax.xaxis.set_minor_locator(NullLocator())
    lo, hi = ns[0], ns[-1]
    pad = 1.25 if hi > lo else 2.0
    ax.set_xlim(lo / pad, hi * pad)


def set_log_y(ax, ys: Sequence[float], headroom: bool) -> tuple[float, float]:
    """Log y axis over the positive finite ``ys`` (1-10 when none), 8% of the span as margin;
    32% above with ``headroom`` (the failure strip at the top edge). Returns (bottom, top)."""
    ys = [y for y in ys if y > 0 and math.isfinite(y)]
    if not ys:
        lo, hi = 1.0, 10.0
    else:
        lo, hi = min(ys), max(ys)
    a, b = math.log10(lo), math.log10(hi)
    span = max(b - a, 0.6)
    bottom, top = a - 0.08 * span, b + (0.32 if headroom else 0.08) * span
    ax.set_yscale("log")
    ax.set_ylim(10 ** bottom, 10 ** top)
    return 10 ** bottom, 10 ** top


def legend_outside(ax) -> None:
    """The axes' legend outside the axes on the right, top-aligned (none without entries)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  frameon=False, handlelength=2.6)


def save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    fig.savefig(png, dpi=DPI, bbox_inches="tight", pad_inches=0.1, metadata={"Software": None})
    fig.savefig(pdf, bbox_inches="tight", pad_inches=0.1,
                metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None})
    return [png, pdf]


# --------------------------------------------------------------------------------------------
# line figures over n
# --------------------------------------------------------------------------------------------
@dataclass
class Metric:
    key: str  # file prefix
    title: str
    ylabel: str
    ref_slopes: bool = False
    speedup: bool = False


METRICS = {
    "time": Metric("time", "Median time per call", "median time per call (ms)", ref_slopes=True),
    "memory": Metric("memory", "Peak memory above the inputs", "peak memory above inputs (MiB)", ref_slopes=True),
    "speedup": Metric("speedup", "Speed-up", "speed-up (×, log scale)", speedup=True),
    "throughput": Metric("throughput", "Throughput", "throughput (tokens/s)"),
}


def metric_value(metric: str, r: dict, base: dict | None) -> float | None:
    if r.get("status") != "ok":
        return None
    t = r.get("time_ms_median")
    if metric == "time":
        return float(t) if finite(t) else None
    if metric == "memory":
        b = r.get("peak_mem_bytes")
        return float(b) / MIB if finite(b) and float(b) > 0 else None
    if metric == "throughput":
        q = r.get("q_len") if finite(r.get("q_len")) else r.get("seq_len")
        return float(r["batch"]) * float(q) * 1e3 / float(t) if finite(t) and float(t) > 0 else None
    if metric == "speedup":
        if base is None or base.get("status") != "ok" or not finite(base.get("time_ms_median")) or not finite(t):
            return None
        return float(base["time_ms_median"]) / float(t)
    raise ValueError(metric)


def metric_band(metric: str, r: dict) -> tuple[float, float] | None:
    """The interquartile range of the timed calls in the metric's unit (time, throughput)."""
    q = quartiles(r) if metric in ("time", "throughput") else None
    if q is None or not q[0] > 0:
        return None
    if metric == "time":
        return q
    t = float(r["time_ms_median"])
    thr = metric_value("throughput", r, None)
    return thr * t / q[1], thr * t / q[0]  # tokens/s ∝ 1 / time: the quartiles swap


def hollow(metric: str, r: dict, base: dict | None) -> bool:
    """A point not to read as clean: a noisy time, or a speed-up within the noise."""
    if metric == "speedup":
        return faster(r, base) == 0
    return metric in ("time", "throughput") and is_noisy(r)


# --------------------------------------------------------------------------------------------
# panels: at most LINE_CAP lines each, every line its own colour
# --------------------------------------------------------------------------------------------
def panels_for(g: pd.DataFrame, baseline: str) -> list[tuple[str, list[str]]]:
    """[(panel title, labels)] of the labels that ran at some n (the baseline apart: every panel
    draws it). One panel when all fit LINE_CAP lines; else one per family, a family split by
    pattern, a pattern by kernel, a kernel's settings into even chunks, neighbours packed back
    together while they fit. A family none of whose variants ran gets no panel."""
    st = g.groupby("label")["status"].agg(lambda x: set(x))
    labels = [lab for lab in row_order(g, baseline) if lab != baseline and not st[lab] <= {"unsupported"}]
    room = LINE_CAP - (1 if baseline in st.index else 0)
    if len(labels) <= room:
        return [("", labels)]
    first = g.groupby("label", sort=True)[["family", "pattern", "kernel"]].first()
    ran = set(g.loc[g["status"] == "ok", "label"])
    fams = sorted({first.loc[lab, "family"] for lab in labels if lab in ran}, key=lambda f: (family_rank(f), f))
    out = []
    for f in fams:
        out += _split([lab for lab in labels if first.loc[lab, "family"] == f], first, room, f"family: {f}",
                      ("pattern", "kernel"))
    return out


def _split(labels: list[str], first: pd.DataFrame, room: int, title: str,
           keys: Sequence[str]) -> list[tuple[str, list[str]]]:
    if len(labels) <= room:
        return [(title, labels)]
    if not keys:  # one kernel of one pattern at many settings: even chunks in value order
        k = math.ceil(len(labels) / room)
        size = math.ceil(len(labels) / k)
        return [(f"{title} (settings {i * size + 1}–{min(len(labels), (i + 1) * size)} of {len(labels)})",
                 labels[i * size:(i + 1) * size]) for i in range(k)]
    parts: dict[str, list[str]] = {}
    for lab in labels:
        parts.setdefault(str(first.loc[lab, keys[0]]), []).append(lab)
    if len(parts) == 1:
        return _split(labels, first, room, title, keys[1:])
    out = []
    for names, labs in _packed(parts, room):
        out += _split(labs, first, room, f"{title} · {keys[0]} {names}", keys[1:])
    return out


def _packed(parts: dict[str, list[str]], room: int) -> list[tuple[str, list[str]]]:
    """Neighbouring parts joined while their labels fit ``room`` (a part too big stays alone)."""
    out: list[tuple[list[str], list[str]]] = []
    for name, labs in parts.items():
        if out and len(out[-1][1]) + len(labs) <= room:
            out[-1][0].append(name)
            out[-1][1].extend(labs)
        else:
            out.append(([name], list(labs)))
    return [(", ".join(names), labs) for names, labs in out]


def panel_styles(labels: list[str], first: dict, style: Style) -> dict[str, dict]:
    """Line style per label of one panel: its own colour (PANEL_PALETTE in panel order; a ramp
    SETTINGS_CMAP dark to light by value when the panel holds settings of one variant only), the
    kernel's marker and the pattern's dash, or the next spare marker where another line of the
    panel has that pair already."""
    import matplotlib
    import seaborn as sns

    if len(labels) > 1 and len({first[lab]["variant"] for lab in labels}) == 1:
        cmap = matplotlib.colormaps[SETTINGS_CMAP]
        colors = [tuple(cmap(0.85 * i / (len(labels) - 1))[:3]) for i in range(len(labels))]
    else:
        pal = [c for i, c in enumerate(sns.color_palette(PANEL_PALETTE, 10)) if i != 7]  # 7: grey
        colors = [tuple(pal[i % len(pal)]) for i in range(len(labels))]
    out, used = {}, set()
    for lab, c in zip(labels, colors):
        kw = {**style.kw(first[lab]), "color": c}
        if (kw["marker"], kw["ls"]) in used:
            kw["marker"] = next((m for m in SPARE_MARKERS if (m, kw["ls"]) not in used), kw["marker"])
        used.add((kw["marker"], kw["ls"]))
        out[lab] = kw
    return out


def baseline_kw(first: dict, style: Style) -> dict:
    """The baseline in every panel: near black, solid, its kernel's marker."""
    return {**style.kw(first), "color": BASELINE_COLOR, "ls": "-"}


# --------------------------------------------------------------------------------------------
# line figures
# --------------------------------------------------------------------------------------------
@dataclass
class _Lines:
    """What every panel of one line figure reads: the group's rows by (label, n) and the first
    row per label (family, pattern, kernel, params for the line style)."""

    g: pd.DataFrame
    metric: str
    baseline: str
    style: Style
    ns: list[int]  # every n of the group, ascending
    rec: dict[tuple[str, int], dict]
    first: dict[str, dict]

    @property
    def m(self) -> Metric:
        return METRICS[self.metric]


@dataclass
class _Panel:
    """What drawing one panel's lines left for its axes and for the figure's notes."""

    kw: dict[str, dict]  # line style per label (the baseline's too)
    ys: list[float] = field(default_factory=list)  # every drawn value and band edge (y limits)
    fails: dict[int, list[tuple[str, str]]] = field(default_factory=dict)  # n -> (label, status): top strip
    drawn: int = 0
    zero_mem: int = 0  # ok memory points of 0 bytes: not drawable on a log axis
    spread: set = field(default_factory=set)  # "band" (2+ points) / "bar" (a lone point) drawn
    hollowed: bool = False


def line_figure(g: pd.DataFrame, metric: str, baseline: str, style: Style, title_desc: str):
    """time / memory / speedup / throughput vs n for one group; returns a matplotlib Figure."""
    d = _Lines(g, metric, baseline, style, ns=sorted(int(n) for n in g["seq_len"].unique()),
               rec={(r["label"], int(r["seq_len"])): r for r in g.to_dict("records")},
               first=g.groupby("label", sort=True).first().to_dict("index"))
    panels = panels_for(g, baseline)
    fig, axes = _new_figure(len(panels))
    zero_mem = 0
    for ax, (ptitle, labels) in zip(axes, panels):
        kw = panel_styles(labels, d.first, style)
        if baseline in d.first:
            kw[baseline] = baseline_kw(d.first[baseline], style)
        p = _draw_lines(ax, d, labels, _Panel(kw))
        _finish_panel(ax, d, labels, ptitle, p)
        zero_mem += p.zero_mem
    for ax in _bottom_axes(axes, _columns(len(panels))):
        ax.set_xlabel("sequence length n (tokens" + (" in the KV cache)" if "decode" in title_desc else ")"))
    extra = f"vs {baseline}" if d.m.speedup else ""
    fig.suptitle(f"{d.m.title} {extra}".strip() + f"\n{title_desc}", fontsize=10)
    _line_notes(fig, g, metric, title_desc, zero_mem)
    return fig


def _points(d: _Lines, lab: str) -> tuple[list[int], list[float], list[tuple[int, str]], int]:
    """One label's points: xs (n) and ys where the metric has a value; (n, status) where it has
    none ("no_base" where the label ran and the baseline did not); the count of ok memory
    points of 0 bytes."""
    xs, ys, missing, zero_mem = [], [], [], 0
    for n in d.ns:
        r = d.rec.get((lab, n))
        if r is None:
            continue
        y = metric_value(d.metric, r, d.rec.get((d.baseline, n)))
        if y is not None:
            xs.append(n)
            ys.append(y)
        elif r["status"] != "ok":
            missing.append((n, r["status"]))
        elif d.m.speedup:
            missing.append((n, "no_base"))
        elif d.metric == "memory" and finite(r.get("peak_mem_bytes")):
            zero_mem += 1
    return xs, ys, missing, zero_mem


def _draw_lines(ax, d: _Lines, labels: list[str], p: _Panel) -> _Panel:
    """The baseline (where the panel is read against it) and one line per label, each with its
    IQR band and hollow markers where not clean; failures go to the top strip."""
    show = list(labels)
    if d.baseline in d.first and not d.m.speedup:
        show = [d.baseline] + show  # the bar every panel is read against
    if d.m.speedup:
        ax.axhline(1.0, color=BASELINE_COLOR, lw=1.0, zorder=2, label=f"{d.baseline} (= 1)")
        p.ys.append(1.0)
    for lab in show:
        xs, ys, missing, zero_mem = _points(d, lab)
        p.zero_mem += zero_mem
        for n, st in missing:
            p.fails.setdefault(n, []).append((lab, st))
        kw = p.kw[lab]
        if not xs:
            ax.plot([], [], label=f"{lab} (no point drawn)", **kw)  # its colour for the strip
            continue
        name = f"{lab} (baseline)" if lab == d.baseline else lab
        lw = 1.1 if lab == d.baseline else None
        ax.plot(xs, ys, label=name, markersize=4.5, zorder=3, **kw, **({"lw": lw} if lw else {}))
        _band_and_hollows(ax, d, lab, xs, kw, p)
        p.ys.extend(ys)
        p.drawn += 1
    return p


def _band_and_hollows(ax, d: _Lines, lab: str, xs: list[int], kw: dict, p: _Panel) -> None:
    """The label's interquartile band (time, throughput) and white-filled markers on its points
    that are not clean (noisy; a speed-up within the noise)."""
    rows = [d.rec[(lab, n)] for n in xs]
    bands = [(n, metric_band(d.metric, r)) for n, r in zip(xs, rows)]
    bands = [(n, b) for n, b in bands if b is not None]
    ys = {n: y for n, y in zip(xs, (metric_value(d.metric, r, None) for r in rows))}
    if len(bands) == 1:  # a band needs two n: a bar at a lone point
        (n, (lo, hi)), = bands
        ax.errorbar([n], [ys[n]], yerr=[[ys[n] - lo], [hi - ys[n]]], color=kw["color"], lw=1.0, capsize=3,
                    ls="none", zorder=2)
        p.spread.add("bar")
    elif bands:
        ax.fill_between([n for n, _ in bands], [b[0] for _, b in bands], [b[1] for _, b in bands],
                        color=kw["color"], alpha=BAND_ALPHA, lw=0, zorder=2)
        p.spread.add("band")
    p.ys.extend(v for _, b in bands for v in b)
    hx = [(n, metric_value(d.metric, r, d.rec.get((d.baseline, n)))) for n, r in zip(xs, rows)
          if hollow(d.metric, r, d.rec.get((d.baseline, n)))]
    if hx:
        ax.plot([n for n, _ in hx], [y for _, y in hx], ls="none", marker=kw["marker"], markersize=4.5,
                mfc="white", mec=kw["color"], zorder=4)
        p.hollowed = True


def _finish_panel(ax, d: _Lines, labels: list[str], ptitle: str, p: _Panel) -> None:
    """Axes of one panel: log y (room at the top for the failure strip), n ticks, reference
    slopes, failure strip, labels and legend (with what bands and hollow markers mean)."""
    lo, hi = set_log_y(ax, p.ys, headroom=bool(p.fails))
    _set_n_axis(ax, d.ns)
    if d.m.ref_slopes and p.ys:
        _reference_slopes(ax, d.g, labels, d.rec, d.metric, d.ns, hi)
    _failure_strip(ax, p.fails, p.kw)
    ax.set_ylabel(d.m.ylabel)
    if d.metric == "speedup":
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    if ptitle:
        ax.set_title(ptitle, loc="left", fontsize=9)
    if not p.drawn and not p.fails:
        ax.text(0.5, 0.5, "nothing ran in this panel", transform=ax.transAxes, ha="center", color="0.4")
    if p.spread:
        what = " / ".join(k for k in ("band", "bar") if k in p.spread)
        ax.fill_between([], [], [], color="0.3", alpha=2 * BAND_ALPHA, lw=0,
                        label=f"{what}: interquartile range of the calls")
    if p.hollowed:
        ax.plot([], [], ls="none", marker="o", mfc="white", mec="0.2", label=HOLLOW_MEANING[d.m.speedup])
    legend_outside(ax)


def _line_notes(fig, g: pd.DataFrame, metric: str, title_desc: str, zero_mem: int) -> None:
    """Lines under the figure: variants that never ran, undrawn zero-memory points, how
    throughput is counted."""
    notes = []
    st = g.groupby("label")["status"].agg(lambda x: set(x))
    never = sorted(lab for lab, s in st.items() if s <= {"unsupported"})
    if never:
        notes.append("Not run (unsupported at every n here): " + ", ".join(never) + ".")
    if zero_mem:
        notes.append(f"{zero_mem} ok point(s) with 0 bytes above the inputs are not drawn (log axis).")
    if metric == "throughput":
        notes.append("Throughput = batch × query tokens / median time" +
                     (" (one new token per step in decode)." if "decode" in title_desc else "."))
    if notes:
        fig.text(0.01, 0.0, "\n".join(textwrap.fill(n, 150) for n in notes), ha="left", va="top",
                 fontsize=7, color="0.3")


def _reference_slopes(ax, g, labels, rec, metric, ns, ytop) -> None:
    """Dashed grey ∝ n and ∝ n² lines from the geometric mean of the panel's values at its smallest n."""
    pts = [(n, metric_value(metric, rec[(lab, n)], None)) for lab in labels for n in ns if (lab, n) in rec]
    pts = [(n, y) for n, y in pts if y is not None and y > 0]
    if not pts:
        return
    n0 = min(n for n, _ in pts)
    y0 = float(np.exp(np.mean([math.log(y) for n, y in pts if n == n0])))
    n_max = max(ns)
    if n_max <= n0:
        return
    for k, lab in ((1, "∝ n"), (2, "∝ n²")):
        xs = np.geomspace(n0, n_max, 32)
        ax.plot(xs, y0 * (xs / n0) ** k, **REF_STYLE, label="_nolegend_")
        # label at the last point inside the axes
        n_end = min(n_max, n0 * (ytop / y0 * 0.8) ** (1.0 / k))
        ax.annotate(lab, (n_end, y0 * (n_end / n0) ** k), xytext=(3, -2), textcoords="offset points",
                    fontsize=8, color="0.4", ha="left", va="top")
    ax.plot([], [], **REF_STYLE, label="reference slopes ∝ n, ∝ n²")


def _failure_strip(ax, fails: dict[int, list[tuple[str, str]]], kw: dict[str, dict]) -> None:
    """Hollow markers at the top edge (axes y near 1) at each n where a line of the panel did not run."""
    from matplotlib.transforms import blended_transform_factory

    if not any(fails.values()):
        return
    tr = blended_transform_factory(ax.transData, ax.transAxes)
    kinds = set()
    for n in sorted(fails):
        items = sorted(fails[n])
        for j, (lab, st) in enumerate(items):
            mk = (NO_BASE_STYLE if st == "no_base" else FAIL_STYLE.get(st, ("x", st)))[0]
            y = 0.95 - j * min(0.05, 0.2 / max(len(items), 1))
            ax.plot([n], [y], transform=tr, marker=mk, markersize=7, mew=1.6, mfc="none", mec=kw[lab]["color"],
                    ls="none", clip_on=False, zorder=5)
            kinds.add(st)
    for st in sorted(kinds, key=lambda s: list(FAIL_STYLE).index(s) if s in FAIL_STYLE else 99):
        mk, text = NO_BASE_STYLE if st == "no_base" else FAIL_STYLE.get(st, ("x", st))
        ax.plot([], [], marker=mk, markersize=7, mew=1.6, mfc="none", mec="0.2", ls="none",
                label=f"{text} (top edge)")


# --------------------------------------------------------------------------------------------
# accuracy - speed - memory bubble chart (only when rows carry an `accuracy`)
# --------------------------------------------------------------------------------------------
def bubble_figure(g: pd.DataFrame, baseline: str, style: Style, title_desc: str):
    acc = g[g["accuracy"].map(finite)] if "accuracy" in g.columns else g.iloc[:0]
    if acc.empty:
        return None
    ok = g[(g["status"] == "ok") & g["time_ms_median"].map(finite)]
    labs = sorted(set(acc["label"]))
    common = None
    for lab in labs:
        s = set(ok[ok["label"] == lab]["seq_len"].astype(int))
        common = s if common is None else common & s
    fig, axes = _new_figure(1, width=8.0, panel_h=4.5)
    ax = axes[0]
    if common:
        n_star = max(common)
        xlabel = f"median time at n = {n_star} (ms, log)"
    else:
        n_star = None
        xlabel = "median time at each variant's largest ok n (ms, log)"
    first = g.groupby("label", sort=True).first().to_dict("index")
    mems = []
    pts = []
    for lab in labs:
        v = ok[ok["label"] == lab]
        if v.empty:
            continue
        r = (v[v["seq_len"] == n_star] if n_star is not None else v[v["seq_len"] == v["seq_len"].max()]).iloc[0]
        a = float(acc[acc["label"] == lab]["accuracy"].astype(float).mean())
        mem = float(r["peak_mem_bytes"]) / MIB if finite(r.get("peak_mem_bytes")) else 0.0
        pts.append((lab, float(r["time_ms_median"]), a, mem))
        mems.append(mem)
    mmax = max(mems) if mems and max(mems) > 0 else 1.0

    def area(mem: float) -> float:
        return 60 + 1400 * (mem / mmax)

    for lab, t, a, mem in pts:
        f = first[lab]
        kw = style.kw(f)
        ax.scatter([t], [a], s=area(mem), color=kw["color"], alpha=0.35, edgecolors=kw["color"], linewidths=1.2,
                   zorder=3)
        ax.scatter([t], [a], s=22, marker=kw["marker"], color=kw["color"], zorder=4, label=f"{lab} ({mem:.0f} MiB)")
        ax.annotate(lab, (t, a), xytext=(7, 7), textcoords="offset points", fontsize=7, color="0.2", zorder=5)
    ax.margins(x=0.18, y=0.22)
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _pos: f"{x:g}" if str(f"{x:g}")[0] in "25" else ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title("bubble area ∝ peak memory above inputs", loc="left", fontsize=8, color="0.3")
    fig.suptitle(f"Accuracy vs speed vs memory\n{title_desc}", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False,
              title="variant (peak memory)", title_fontsize=8)
    return fig
