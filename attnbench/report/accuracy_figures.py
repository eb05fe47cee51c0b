"""Figures of training runs: validation curves per task, and LRA's accuracy–speed–memory bubbles.

Validation curves: one figure per task, the validation metric against the optimizer step, one
colour per variant (full attention near black, the others ``tab10`` in table order); each seed a
thin line, the mean over the seeds at the steps they share a thick one. Jobs without a curve
(refused, diverged before the first evaluation) are named under the figure.

The bubble chart (Long Range Arena, fig. 3) puts training next to kernel timings, and only from
the same machine (:func:`same_machine`): a kernel run and the training runs match when their
``run.json`` record the same hostname and CPU model (a training run's under ``environment``) and
the kernel rows' device is the training rows' device. Among those kernel rows, fwd mode, the
group (dtype, causal, B, H, D) that times the most of the trained variants is used. Per trained
variant (:func:`bubble_points`):

- x: speed relative to full attention, ``time(baseline) / time(variant)`` of the median times at
  the largest n where both have ok rows in that group (its own n per variant); the variant timed
  is the one the training rows used, at their parameters (else its defaults, else the pattern's
  default kernel: said in the table);
- y: the mean test accuracy over the training tasks, by ``accuracy.AVERAGE_RULE``;
- bubble area ∝ the variant's peak memory above the inputs at that n.

Deterministic like :mod:`attnbench.report.figures` (same rcParams and ``save``).
"""
from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np
import pandas as pd

from attnbench.report import accuracy as A
from attnbench.report.figures import BASELINE_COLOR, REF_STYLE, legend_outside
from attnbench.report.noise import finite
from attnbench.report.tables import MIB, Table, fmt_num
from attnbench.schema import params_key

SEED_ALPHA = 0.35  # thin line of one seed under the variant's mean line
LABEL_PALETTE = "tab10"
CYCLE_LINESTYLES = ("-", "--", ":", "-.")  # labels 1-10 solid, 11-20 dashed, ...: no two lines alike
BUBBLE_MAX_AREA = 2400.0  # points², the largest memory's bubble; area is proportional to memory
GROUP_COLS = ("dtype", "causal", "batch", "heads", "head_dim")


def label_colors(labels: list[str]) -> dict[str, tuple]:
    """The first full-attention label near black, every other label its own ``tab10`` colour in
    the given order."""
    import seaborn as sns

    pal = sns.color_palette(LABEL_PALETTE, 10)
    out, i = {}, 0
    for lab in labels:
        if lab.split("[")[0].split("@")[0] == "full" and BASELINE_COLOR not in out.values():
            out[lab] = BASELINE_COLOR
        else:
            out[lab] = tuple(pal[i % 10])
            i += 1
    return out


def label_linestyles(colors: dict[str, tuple]) -> dict[str, str]:
    """A line style per label of :func:`label_colors`: the n-th ``tab10`` cycle of colours gets
    the n-th style, so labels beyond ten stay distinguishable."""
    out, i = {}, 0
    for lab, col in colors.items():
        if col == BASELINE_COLOR:
            out[lab] = "-"
        else:
            out[lab] = CYCLE_LINESTYLES[(i // 10) % len(CYCLE_LINESTYLES)]
            i += 1
    return out


def _notes_under(fig, notes: list[str]) -> None:
    if notes:
        fig.text(0.01, 0.0, "\n".join(textwrap.fill(n, 130) for n in notes), ha="left", va="top",
                 fontsize=7, color="0.3")


# --------------------------------------------------------------------------------------------
# validation curves
# --------------------------------------------------------------------------------------------
def curve_figure(df: pd.DataFrame, task: str, colors: dict[str, tuple]):
    """Validation metric vs step of one task: thin line per seed, thick mean per variant."""
    from matplotlib.figure import Figure

    g = df[df["task_label"] == task]
    metric = str(g["metric"].iloc[0])
    scale = 100.0 if metric == "accuracy" else 1.0
    fig = Figure(figsize=(8.0, 4.2), layout="constrained")
    ax = fig.subplots()
    missing, styles = [], label_linestyles(colors)
    for lab in [x for x in colors if x in set(g["label"])]:
        seeds = g[g["label"] == lab].sort_values("seed")
        curves = {}
        for seed, status, curve in zip(seeds["seed"], seeds["status"], seeds["curve"]):
            if not isinstance(curve, list) or not curve:
                missing.append(f"{lab} s{int(seed)} ({status})")
                continue
            curves[int(seed)] = {int(c[0]): float(c[2]) * scale for c in curve if c[2] is not None}
            steps = sorted(curves[int(seed)])
            ax.plot(steps, [curves[int(seed)][s] for s in steps], color=colors[lab], ls=styles[lab], lw=0.8,
                    alpha=SEED_ALPHA)
        if not curves:
            continue
        shared = sorted(set.intersection(*(set(c) for c in curves.values())))
        mean = [float(np.mean([c[s] for c in curves.values()])) for s in shared]
        ax.plot(shared, mean, color=colors[lab], ls=styles[lab], lw=1.8, label=f"{lab} ({len(curves)} seed{'s' * (len(curves) > 1)})")
    _majority_line(ax, g, scale)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation accuracy (%)" if metric == "accuracy" else f"validation {metric.replace('_', ' ')}")
    fig.suptitle(f"Validation {metric.replace('_', ' ')} vs step: {task}", fontsize=10)
    ax.set_title("thin: one seed; thick: mean over the seeds at the steps they share", loc="left", fontsize=8,
                 color="0.3")
    legend_outside(ax)
    _notes_under(fig, ["No curve (no evaluation recorded): " + ", ".join(missing) + "."] if missing else [])
    return fig


def _majority_line(ax, g: pd.DataFrame, scale: float) -> None:
    extras = [e for e in g["extra_metrics"] if isinstance(e, dict) and e.get("majority") is not None]
    if extras:
        y = float(extras[0]["majority"]) * scale
        ax.axhline(y, **REF_STYLE, label=f"majority class of test ({y:.1f})")


# --------------------------------------------------------------------------------------------
# the bubble chart: which kernel rows, and the points
# --------------------------------------------------------------------------------------------
def _machine(info: dict[str, Any]) -> tuple[str | None, str | None]:
    """(hostname, cpu_model) of a run.json: a training run's under ``environment``."""
    env = info.get("environment") if isinstance(info.get("environment"), dict) else info
    return env.get("hostname"), env.get("cpu_model")


def same_machine(kernel: pd.DataFrame | None, train_infos: list[dict], device: str) -> tuple[pd.DataFrame | None, str]:
    """The fwd kernel rows measured on the training machine, and a sentence naming that machine
    (or saying why there are none)."""
    machines = sorted({_machine(i) for i in train_infos}, key=str)
    if len(machines) != 1:
        return None, f"the training runs come from {len(machines)} machines ({machines}); the chart needs one"
    host, cpu = machines[0]
    if host is None and cpu is None:
        return None, "the training runs' run.json record neither hostname nor CPU model"
    where = f"{cpu or 'unknown CPU'} on host {host or '?'}, device {device}"
    if kernel is None or kernel.empty:
        return None, f"the report holds no kernel rows (training machine: {where})"
    k = kernel[(kernel["hostname"].map(str) == str(host)) & (kernel["cpu_model"].map(str) == str(cpu)) &
               (kernel["device"].astype(str) == device) & (kernel["mode"] == "fwd")]
    if k.empty:
        return None, f"the report holds no fwd kernel rows from the training machine ({where})"
    return k, where


def _timed(k: pd.DataFrame, variant: str, pkey: str) -> tuple[pd.DataFrame, str]:
    """Kernel rows of ``variant`` at the training parameters, else at its defaults; and which."""
    v = k[k["variant"] == variant]
    exact = v[v["params_key"] == pkey]
    if len(exact):
        return exact, "the trained settings"
    dflt = v[v["param_label"] == ""]
    return dflt, "its default settings"


def _ok_times(rows: pd.DataFrame) -> dict[int, dict]:
    ok = rows[(rows["status"] == "ok") & rows["time_ms_median"].map(finite)]
    return {int(n): r for n, r in zip(ok["seq_len"], ok.to_dict("records"))}


def _candidates(c: pd.DataFrame, df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(label, trained variant, params_key) per label of ``cells``."""
    first = df.groupby("label", sort=False).first()
    return [(lab, str(first.loc[lab, "variant"]), params_key(first.loc[lab, "params"]))
            for lab in dict.fromkeys(c["label"])]


def _default_kernel(pattern: str) -> str | None:
    try:
        from attnbench.catalog import all_specs
        from attnbench.registry import default_kernel

        all_specs()
        return default_kernel(pattern)
    except Exception:  # a report must not depend on every kernel importing
        return None


def _point(k: pd.DataFrame, base: dict[int, dict], label: str, variant: str, pkey: str) -> dict | str:
    """One bubble's numbers, or why the variant has none."""
    rows, which = _timed(k, variant, pkey)
    timed = variant
    if rows.empty:
        alt = _default_kernel(variant.split("@")[0])
        if alt and alt != variant:
            rows, which = _timed(k, alt, pkey)
            timed = alt
    mine = _ok_times(rows)
    common = sorted(set(mine) & set(base))
    if not common:
        return f"{label}: no n where {timed} and the baseline both have ok fwd rows"
    n = common[-1]
    r, b = mine[n], base[n]
    mem = float(r["peak_mem_bytes"]) / MIB if finite(r.get("peak_mem_bytes")) else np.nan
    return {"label": label, "trained_variant": variant, "timed_variant": timed, "timed_at": which, "n": n,
            "time_ms": float(r["time_ms_median"]), "baseline_time_ms": float(b["time_ms_median"]),
            "speed_vs_baseline": float(b["time_ms_median"]) / float(r["time_ms_median"]), "peak_mem_mib": mem}


def _group(k: pd.DataFrame, cands: list[tuple[str, str, str]], baseline: str) -> tuple[pd.DataFrame | None, dict]:
    """The kernel group (GROUP_COLS) with ok baseline rows that times the most trained variants
    (then float32, then not causal, then the first in sort order)."""
    best, key = None, None
    for vals, g in k.groupby(list(GROUP_COLS), sort=True, dropna=False):
        if not _ok_times(g[g["variant"] == baseline]):
            continue
        have = sum(bool(_ok_times(g[g["variant"] == v])) for _, v, _ in cands)
        kk = (have, str(vals[0]) == "float32", not bool(vals[1]))
        if key is None or kk > key:
            best, key = (g, dict(zip(GROUP_COLS, vals))), kk
    return best if best is not None else (None, {})


def bubble_points(df: pd.DataFrame, kernel: pd.DataFrame | None, train_infos: list[dict],
                  baseline: str = "full@sdpa") -> tuple[pd.DataFrame | None, list[str]]:
    """The bubbles (one row per trained variant with a speed, an average and a memory) and the
    notes: the machine, the kernel group, variants left out and why; None and the reason when the
    chart cannot be drawn."""
    device = str(df["device"].dropna().iloc[0]) if df["device"].notna().any() else "cpu"
    k, where = same_machine(kernel, train_infos, device)
    if k is None:
        return None, [f"No accuracy–speed–memory bubble chart: {where}."]
    c = A.cells(df)
    cands = _candidates(c, df)
    g, group = _group(k, cands, baseline)
    if g is None:
        return None, [f"No accuracy–speed–memory bubble chart: the fwd kernel rows of the training machine ({where}) "
                      f"have no ok {baseline} row."]
    avg = A.averages(c)
    base = _ok_times(g[g["variant"] == baseline])
    pts, notes = [], []
    for lab, variant, pkey in cands:
        p = _point(g, base, lab, variant, pkey)
        if isinstance(p, str):
            notes.append(p)
        elif not np.isfinite(avg.get(lab, np.nan)):
            notes.append(f"{lab}: no bubble, no average accuracy (no ok seed on some accuracy task)")
        else:
            pts.append({**p, "accuracy": float(avg[lab]), "tasks": len(A.accuracy_tasks(c))})
    desc = (f"kernel rows: {where}; fwd, {group['dtype']}, B={int(group['batch'])}, H={int(group['heads'])}, "
            f"D={int(group['head_dim'])}{', causal' if group['causal'] else ''}")
    return (pd.DataFrame(pts) if pts else None), [desc, *notes]


CAPTION = ("x: speed relative to {baseline}: its median fwd time over the variant's, at the largest n where both "
           "have ok rows (n per variant in the table); y: mean test accuracy over the accuracy tasks ("
           + A.AVERAGE_RULE + "); bubble area ∝ peak memory above the inputs at that n. Same machine: the kernel "
           "run's run.json records the training runs' hostname and CPU model, and the same device.")


def bubble_table(pts: pd.DataFrame, notes: list[str], baseline: str, name: str = "accuracy_speed_memory") -> Table:
    """The bubbles' coordinates: one row per variant."""
    rows = [[r["label"], r["timed_variant"] + ("" if r["timed_at"] == "the trained settings" else " (defaults)"),
             str(int(r["n"])), fmt_num(r["time_ms"]), fmt_num(r["baseline_time_ms"]),
             f"{r['speed_vs_baseline']:.2f}×", f"{r['accuracy'] * 100:.2f}", fmt_num(r["peak_mem_mib"])]
            for r in pts.to_dict("records")]
    header = ["variant", "timed kernel", "n", "time (ms)", f"{baseline} (ms)", "speed (x)", "accuracy (%, y)",
              "peak memory (MiB, area)"]
    return Table(name=name, title="Accuracy vs speed vs memory (the bubble chart's coordinates)", header=header,
                 rows=rows, csv=pts, align="llrrrrrr", notes=[CAPTION.format(baseline=baseline), *notes])


def bubble_figure(pts: pd.DataFrame, notes: list[str], colors: dict[str, tuple], baseline: str):
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.subplots()
    mems = pts["peak_mem_mib"].astype(float)
    mmax = float(mems.max()) if mems.notna().any() and mems.max() > 0 else 1.0
    for r in pts.to_dict("records"):
        col = colors.get(r["label"], BASELINE_COLOR)
        x, y = r["speed_vs_baseline"], r["accuracy"] * 100
        if finite(r["peak_mem_mib"]):
            ax.scatter([x], [y], s=BUBBLE_MAX_AREA * r["peak_mem_mib"] / mmax, color=col, alpha=0.35,
                       edgecolors=col, linewidths=1.2, zorder=3)
        ax.scatter([x], [y], s=14, color=col, zorder=4)
        mem = f"{r['peak_mem_mib']:.3g} MiB" if finite(r["peak_mem_mib"]) else "memory n/r"
        ax.annotate(f"{r['label']} ({mem})", (x, y), xytext=(6, 6), textcoords="offset points", fontsize=8, color="0.15",
                    zorder=5)
    ax.axvline(1.0, **REF_STYLE)
    xs = pts["speed_vs_baseline"].astype(float)
    lo, hi = math.log10(min(xs.min(), 1.0)), math.log10(max(xs.max(), 1.0))
    pad = max(0.25, 0.2 * (hi - lo))
    ax.set_xscale("log")
    ax.set_xlim(10 ** (lo - pad), 10 ** (hi + pad))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}×"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: f"{v:g}×" if f"{v:g}"[0] in "25" else ""))
    ys = pts["accuracy"].astype(float) * 100
    span = max(float(ys.max() - ys.min()), 2.0)
    ax.set_ylim(float(ys.min()) - 0.3 * span, float(ys.max()) + 0.3 * span)
    ax.set_xlabel(f"speed relative to {baseline} (×, log; median fwd time at the largest shared n)")
    ax.set_ylabel("mean test accuracy over the tasks (%)")
    fig.suptitle("Accuracy vs speed vs memory (bubble area ∝ peak memory)", fontsize=10)
    ax.set_title(notes[0], loc="left", fontsize=7, color="0.3")
    _notes_under(fig, [CAPTION.format(baseline=baseline), *notes[1:]])
    return fig
