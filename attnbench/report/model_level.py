"""Whole-model efficiency from model-level rows (``row_kind == "model"``): tables and a figure.

Per group (task, size, skeleton config, machine, device, batch), each figure relative to full
attention at the same n (computed here, never stored):

    model_steps_<g>     training steps/s (forward, backward, AdamW step) and its ratio to full
    model_infer_<g>     inference tokens/s and its ratio to full
    model_memory_<g>    peak memory of training (weights, gradients, AdamW state, activations)
    model_share_<g>     the share of step time inside attention: identity swap / kernel alone
    model_gain_<g>      the kernel's speed-up (alone, fwd+bwd, the model's shape) next to the whole
                        model's, and what Amdahl's law makes of the kernel's from full's share
    model_lra_<g>       our steps/s and memory ratios beside the Long Range Arena's (lra.py)
    model_maxn_<g>      the longest trainable n per pattern at each budget, with its limit
    figure model_speedup_<g>: whole-model speed-up vs n next to the kernel's, one panel per pattern

A cell without a number carries its status mark (``OOM``, ``T/O``, ``skip``, ``n/a``); a time
from a probe flagged noisy carries ``†``. Nothing is re-measured; the same rows give the same
bytes.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnbench.modelbench import lra, maxn
from attnbench.modelbench.schema import is_model_row, probe_key
from attnbench.report.noise import NOISY, is_noisy
from attnbench.report.tables import (MIB, NOT_MEASURED, STATUS_MARK, Table, family_rank, fmt_num, fmt_ratio,
                                     param_sort_key, write_table)

GROUP = ("task", "size", "config_hash", "device_name", "device", "batch")
NO_BASE = "no base"
SHARE_RULE = ("attention share = 1 - (training step with every attention call replaced by an identity of the same "
              "shape) / (training step); the second figure: attention calls per step x the kernel alone (fwd+bwd) "
              "/ step")
GAIN_RULE = ("Amdahl = 1 / ((1 - s) + s / k): the whole-model speed-up the kernel's speed-up k would give if "
             "nothing but attention changed, s being full attention's share at that n; kept = log(model) / "
             "log(kernel), the share of the kernel's gain (in log terms) that survives inside the model")
MAXN_RULE = ("max n: the largest n whose probe (two training steps) peaked at most at the budget (GB = 10^9 bytes "
             "above the process's baseline), searched by "
             "doubling from the first n and bisecting to within max(256, n/8); limit: memory (a peak above the "
             "budget, or an allocation refused under the cap), time (a step slower than the step timeout), n cap "
             "(the search's upper end fitted), or the status of a probe that failed otherwise")


# --------------------------------------------------------------------------------------------
# rows -> frames
# --------------------------------------------------------------------------------------------
def latest(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per probe key: the last read wins (a resumed probe follows its earlier row)."""
    last = {probe_key(r): r for r in rows if is_model_row(r)}
    dropped = sum(is_model_row(r) for r in rows) - len(last)
    return list(last.values()), ([f"{dropped} model-level probe(s) had more than one row; the last row read of "
                                  f"each is kept."] if dropped else [])


def frame(rows: list[dict[str, Any]], probe: str = "measure") -> pd.DataFrame:
    """The rows of one probe kind, labelled: the pattern (its variant where a group holds the
    pattern with several kernels) and its non-default parameters."""
    df = pd.DataFrame([r for r in rows if is_model_row(r) and r.get("probe") == probe])
    if df.empty:
        return df
    run_dev = df["run_device_name"] if "run_device_name" in df.columns else pd.Series(None, index=df.index)
    df["device_name"] = df["device_name"].where(df["device_name"].notna(), run_dev).fillna("unknown device")
    df["param_label"] = df["param_label"].fillna("")
    several = df.groupby([*GROUP, "pattern"], dropna=False)["kernel"].transform("nunique") > 1
    name = df["variant"].where(several, df["pattern"])
    df["label"] = [n + (f"[{p}]" if p else "") for n, p in zip(name, df["param_label"])]
    return df


def groups(df: pd.DataFrame) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    out = []
    for k, g in df.groupby(list(GROUP), sort=True, dropna=False):
        out.append((dict(zip(GROUP, k)), g))
    return out


def slug(group: dict[str, Any], many_machines: bool) -> str:
    import re

    s = f"{group['task']}-{group['size']}_{group['device']}_b{int(group['batch'])}"
    if many_machines:
        s += "_" + re.sub(r"[^a-z0-9]+", "-", str(group["device_name"]).lower()).strip("-")[:24]
    return s


def describe(group: dict[str, Any], g: pd.DataFrame) -> str:
    return (f"{group['task']} ({group['size']}): {g['skeleton'].iloc[0]} · {group['device_name']} ({group['device']})"
            f" · batch {int(group['batch'])}")


def base_label(g: pd.DataFrame, baseline: str) -> str | None:
    """Full attention's label: the --baseline variant if the group ran it, else the first full one."""
    full = g[g["pattern"] == "full"]
    if full.empty:
        return None
    hit = full[full["variant"] == baseline]
    return str((hit if len(hit) else full.sort_values("label"))["label"].iloc[0])


def order(g: pd.DataFrame, base: str | None) -> list[str]:
    first = g.groupby("label", sort=True)[["family", "variant", "params"]].first().to_dict("index")
    return sorted(first, key=lambda lab: (lab != base, family_rank(first[lab]["family"]), str(first[lab]["variant"]),
                                          param_sort_key(first[lab]["params"]), lab))


def _cells(g: pd.DataFrame) -> dict[tuple[str, int], dict]:
    return {(r["label"], int(r["seq_len"])): r for r in g.to_dict("records")}


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _mark(r: dict | None) -> str | None:
    if r is None:
        return NOT_MEASURED
    return None if r.get("status") == "ok" else STATUS_MARK.get(r.get("status"), str(r.get("status")))


# --------------------------------------------------------------------------------------------
# tables: variants x n, each value beside its ratio to full
# --------------------------------------------------------------------------------------------
def _ratio_grid(g: pd.DataFrame, base: str | None, *, name: str, title: str, col: str, fmt, invert: bool,
                timed: bool, notes: list[str]) -> Table:
    """label x n: ``value (ratio to full)``; ``invert``: the ratio is full / variant (times)."""
    ns = sorted(int(n) for n in g["seq_len"].unique())
    cells = _cells(g)
    rows, records = [], []
    for lab in order(g, base):
        out = [lab]
        for n in ns:
            r, b = cells.get((lab, n)), cells.get((base, n)) if base else None
            m = _mark(r)
            v = _num(r.get(col)) if m is None else None
            bv = _num(b.get(col)) if b is not None and b.get("status") == "ok" else None
            ratio = (bv / v if invert else v / bv) if v and bv else None
            noisy = timed and is_noisy(r)
            if m is not None:
                text = m
            elif v is None:
                text = "n/r"
            else:
                text = f"{fmt(v)} ({fmt_ratio(ratio) if ratio else NO_BASE})" + (f" {NOISY}" if noisy else "")
            out.append(text)
            records.append({"label": lab, "variant": r.get("variant") if r else None, "seq_len": n,
                            "status": r.get("status") if r else "not_measured", col: v, "full": bv, "ratio": ratio,
                            "noisy": bool(noisy)})
        rows.append(out)
    header = ["pattern", *[f"n={n}" for n in ns]]
    return Table(name=name, title=title, header=header, rows=rows, csv=pd.DataFrame(records), notes=notes)


def steps_table(g, base, name, desc) -> Table:
    return _ratio_grid(g, base, name=name, col="steps_per_s", fmt=fmt_num, invert=False, timed=True,
                       title=f"Training steps/s (×{base or 'full'} at the same n) — {desc}",
                       notes=["A step: zero_grad, forward, loss, backward, gradient clipping, AdamW step; median of "
                              "the timed steps."])


def infer_table(g, base, name, desc) -> Table:
    return _ratio_grid(g, base, name=name, col="tokens_per_s_infer", fmt=fmt_num, invert=False, timed=True,
                       title=f"Inference tokens/s (×{base or 'full'} at the same n) — {desc}",
                       notes=["Forward under inference_mode in eval mode; tokens = batch × n (× 2 for pairs)."])


def memory_table(g, base, name, desc) -> Table:
    return _ratio_grid(g, base, name=name, col="peak_mem_bytes", fmt=lambda b: fmt_num(b / MIB), invert=False,
                       timed=False, title=f"Peak training memory, MiB (×{base or 'full'} at the same n) — {desc}",
                       notes=["Peak of the first two training steps above the process before the model was built: "
                              "weights, gradients, AdamW state, activations (CPU: resident high-water mark; CUDA: "
                              "max allocated)."])


def share_table(g, base, name, desc) -> Table:
    ns = sorted(int(n) for n in g["seq_len"].unique())
    cells = _cells(g)
    rows, records = [], []
    for lab in order(g, base):
        out = [lab]
        for n in ns:
            r = cells.get((lab, n))
            m = _mark(r)
            s, k = (_num(r.get("attn_share")), _num(r.get("attn_share_kernel"))) if m is None else (None, None)
            pct = lambda x: "n/r" if x is None else f"{100 * x:.0f}%"  # noqa: E731
            out.append(m if m is not None else f"{pct(s)} / {pct(k)}" + (f" {NOISY}" if is_noisy(r) else ""))
            records.append({"label": lab, "seq_len": n, "status": r.get("status") if r else "not_measured",
                            "attn_share": s, "attn_share_kernel": k})
        rows.append(out)
    return Table(name=name, title=f"Share of training-step time inside attention: identity swap / kernel alone — {desc}",
                 header=["pattern", *[f"n={n}" for n in ns]], rows=rows, csv=pd.DataFrame(records), notes=[SHARE_RULE])


def gain_points(g: pd.DataFrame, base: str | None) -> pd.DataFrame:
    """Per (label, n) with both ok: kernel speed-up, whole-model speed-up, Amdahl's, kept."""
    cols = ["label", "seq_len", "kernel_speedup", "model_speedup", "amdahl", "kept"]
    if base is None:
        return pd.DataFrame(columns=cols)
    cells, out = _cells(g), []
    for lab in order(g, base):
        if lab == base:
            continue
        for n in sorted(int(x) for x in g["seq_len"].unique()):
            r, b = cells.get((lab, n)), cells.get((base, n))
            if _mark(r) is not None or _mark(b) is not None:
                continue
            k = _div(b.get("kernel_ms"), r.get("kernel_ms"))
            m = _div(b.get("step_ms_median"), r.get("step_ms_median"))
            s = _num(b.get("attn_share"))
            amdahl = 1.0 / ((1 - s) + s / k) if k and s is not None else None
            kept = math.log(m) / math.log(k) if k and m and abs(math.log(k)) > 1e-9 else None
            out.append({"label": lab, "seq_len": n, "kernel_speedup": k, "model_speedup": m, "amdahl": amdahl,
                        "kept": kept})
    return pd.DataFrame(out, columns=cols)


def _div(a: Any, b: Any) -> float | None:
    a, b = _num(a), _num(b)
    return a / b if a and b else None


def gain_table(g, base, name, desc) -> Table | None:
    pts = gain_points(g, base)
    if pts.empty:
        return None
    f = lambda x: fmt_ratio(x) if x is not None and np.isfinite(x) else "n/r"  # noqa: E731
    rows = [[r.label, str(r.seq_len), f(r.kernel_speedup), f(r.model_speedup), f(r.amdahl),
             "n/r" if r.kept is None or not np.isfinite(r.kept) else f"{r.kept:.2f}"] for r in pts.itertuples()]
    return Table(name=name, title=f"Kernel speed-up vs whole-model speed-up over {base} — {desc}",
                 header=["pattern", "n", "kernel alone", "whole model", "Amdahl", "kept"], rows=rows, csv=pts,
                 align="lrrrrr", notes=[GAIN_RULE])


def lra_table(g, base, name, desc) -> Table | None:
    """Our ratios to full beside LRA's published ones, at the n both have."""
    cells, rows, records = _cells(g), [], []
    for lab in order(g, base):
        r0 = g[g["label"] == lab].iloc[0]
        for n in lra.LRA_SEQ_LENS:
            theirs = lra.ratios(str(r0["pattern"]), n)
            r, b = cells.get((lab, n)), cells.get((base, n)) if base else None
            if theirs is None or r is None:
                continue
            ok = _mark(r) is None and _mark(b) is None
            steps = _div(r.get("steps_per_s"), b.get("steps_per_s")) if ok else None
            mem = _div(r.get("peak_mem_bytes"), b.get("peak_mem_bytes")) if ok else None
            mark = _mark(r) or (_mark(b) and NO_BASE)
            f = lambda x: mark or (fmt_ratio(x) if x else "n/r")  # noqa: E731
            rows.append([lab, lra.by_pattern()[str(r0["pattern"])], str(n), f(steps), fmt_ratio(theirs[0]), f(mem),
                         fmt_ratio(theirs[1])])
            records.append({"label": lab, "lra_model": lra.by_pattern()[str(r0["pattern"])], "seq_len": n,
                            "steps_ratio": steps, "lra_steps_ratio": theirs[0], "mem_ratio": mem,
                            "lra_mem_ratio": theirs[1]})
    if not rows:
        return None
    return Table(name=name, title=f"Ours vs the Long Range Arena's published ratios to full attention — {desc}",
                 header=["pattern", "LRA model", "n", "steps/s × (ours)", "steps/s × (LRA)", "memory × (ours)",
                         "memory × (LRA)"], rows=rows, csv=pd.DataFrame(records), align="llrrrrr",
                 notes=[f"LRA: {lra.CITATION}; their Local Attention is our block_local (non-overlapping blocks). "
                        "Theirs: TPU, batch 32; ours: this machine and batch. Only ratios are comparable."])


def maxn_table(rows: pd.DataFrame, name: str, desc: str, base: str | None) -> Table | None:
    """Pattern x budget: the longest trainable n and its limit, replayed from the probe rows."""
    if rows.empty:
        return None
    out, records, budgets = [], [], []
    for lab in order(rows, base):
        v = rows[rows["label"] == lab]
        search = v["search"].iloc[0] or {}
        budgets = list(search.get("budgets") or [])
        line = [lab]
        for b in budgets:
            try:
                s = maxn.replay(v.to_dict("records"), b, int(v["seq_len"].min()), int(search["n_cap"]),
                                int(search.get("grain") or maxn.GRAIN))
                text = maxn.cell(s)
                records.append({"label": lab, "budget_gb": b / 1e9, "max_n": s.max_n, "limit": s.limit,
                                "first_failed": s.first_failed})
            except maxn.NotProbed as e:
                text = f"incomplete (n={e.args[0]} not probed)"
                records.append({"label": lab, "budget_gb": b / 1e9, "max_n": None, "limit": "incomplete",
                                "first_failed": None})
            line.append(text)
        out.append(line)
    header = ["pattern", *[f"{b / 1e9:g} GB" for b in budgets]]
    return Table(name=name, title=f"Longest trainable n at each memory budget — {desc}", header=header, rows=out,
                 csv=pd.DataFrame(records), notes=[MAXN_RULE])


# --------------------------------------------------------------------------------------------
# the figure: whole model vs kernel alone
# --------------------------------------------------------------------------------------------
def speedup_figure(g: pd.DataFrame, base: str, desc: str):
    from matplotlib.figure import Figure

    pts = gain_points(g, base)
    labels = [lab for lab in order(g, base) if lab != base and lab in set(pts["label"])]
    if not labels:
        return None
    cols = 1 if len(labels) <= 3 else 2
    nrows = math.ceil(len(labels) / cols)
    fig = Figure(figsize=(6.0 * cols, 3.0 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax in axes[len(labels):]:
        ax.set_axis_off()
    for ax, lab in zip(axes, labels):
        p = pts[pts["label"] == lab].sort_values("seq_len")
        for col, text, kw in (("kernel_speedup", "kernel alone (fwd+bwd)", dict(color="C1", marker="s", ls="--")),
                              ("model_speedup", "whole model (training step)", dict(color="C0", marker="o", ls="-")),
                              ("amdahl", "Amdahl from full's attention share", dict(color="0.5", marker="", ls=":"))):
            q = p[p[col].notna()]
            if len(q):
                ax.plot(q["seq_len"], q[col].astype(float), label=text, **kw)
        ax.axhline(1.0, color="0.2", lw=0.8)
        _axes(ax, sorted(int(n) for n in p["seq_len"].unique()), p[["kernel_speedup", "model_speedup", "amdahl"]])
        ax.set_title(lab)
        ax.set_xlabel("n")
        ax.set_ylabel(f"speed-up vs {base}")
    handles, texts = axes[0].get_legend_handles_labels()
    fig.legend(handles, texts, loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle(textwrap.fill(f"How much of the kernel's speed-up survives inside the model — {desc}",
                               80 * cols), fontsize=9)
    return fig


def _axes(ax, ns: list[int], values: pd.DataFrame) -> None:
    """Log-log axes: n ticks at the measured n, speed-ups as 0.5×, 1×, 2×, ... ."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    from attnbench.report.figures import fmt_n_tick

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ns))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: fmt_n_tick(int(round(x)))))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(ns[0] / 1.3, ns[-1] * 1.3)
    ys = [float(y) for y in values.to_numpy().ravel() if y is not None and np.isfinite(float(y)) and y > 0] + [1.0]
    lo, hi = min(ys) / 1.25, max(ys) * 1.25
    ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if lo <= t <= hi]
    ax.set_ylim(lo, hi)
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}×"))
    ax.yaxis.set_minor_locator(NullLocator())


def _select(d: pd.DataFrame, group: dict[str, Any]) -> pd.DataFrame:
    """The rows of ``d`` in ``group``."""
    if d.empty:
        return d
    keep = np.ones(len(d), dtype=bool)
    for k, v in group.items():
        keep &= (d[k] == v).to_numpy()
    return d[keep]


# --------------------------------------------------------------------------------------------
# the report section
# --------------------------------------------------------------------------------------------
def section(rows: list[dict[str, Any]], out: Path, baseline: str, figures: bool) -> tuple[list[Path], str]:
    """Tables and figures of the model-level rows in ``out``; (files written, README section)."""
    import matplotlib

    from attnbench.report import figures as F

    measure, probes = frame(rows, "measure"), frame(rows, "max_n")
    both = pd.concat([d for d in (measure, probes) if not d.empty], ignore_index=True)
    many = both["device_name"].nunique() > 1
    written: list[Path] = []
    lines = ["## Whole-model efficiency (model-level runs)", ""]
    for group, _ in groups(both):
        g, p = _select(measure, group), _select(probes, group)
        s, desc = slug(group, many), describe(group, g if len(g) else p)
        base = base_label(g, baseline) if len(g) else None
        lines += [f"### {desc}", ""]
        if len(g) and base is None:
            lines += ["Full attention was not run in this group: no ratios to it.", ""]
        tabs = []
        if len(g):
            tabs += [("Training steps/s and ratio to full", steps_table(g, base, f"model_steps_{s}", desc)),
                     ("Inference tokens/s and ratio to full", infer_table(g, base, f"model_infer_{s}", desc)),
                     ("Peak training memory and ratio to full", memory_table(g, base, f"model_memory_{s}", desc)),
                     ("Share of step time inside attention", share_table(g, base, f"model_share_{s}", desc)),
                     ("Kernel vs whole-model speed-up", gain_table(g, base, f"model_gain_{s}", desc)),
                     ("Ours vs LRA's published ratios", lra_table(g, base, f"model_lra_{s}", desc))]
        tabs.append(("Longest trainable n per memory budget", maxn_table(p, f"model_maxn_{s}", desc, base)))
        for what, t in tabs:
            if t is not None:
                written += write_table(t, out / "tables")
                lines.append(f"- {what}: [md](tables/{t.name}.md) · [tex](tables/{t.name}.tex) · "
                             f"[csv](tables/{t.name}.csv)")
        with matplotlib.rc_context(F.rc_params()):
            fig = speedup_figure(g, base, desc) if figures and len(g) and base else None
            if fig is not None:
                written += F.save(fig, out / "figures" / f"model_speedup_{s}")
        if fig is not None:
            lines.append(f"- Whole-model speed-up vs n next to the kernel's: [png](figures/model_speedup_{s}.png) · "
                         f"[pdf](figures/model_speedup_{s}.pdf)")
        lines.append("")
    return written, "\n".join(lines).rstrip("\n")
