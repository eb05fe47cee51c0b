"""The roofline of one group of kernel rows: each case at its arithmetic intensity and rate.

x: arithmetic intensity, the variant's FLOPs of one call over its minimum bytes (FLOP/byte;
both from the registry's formulas, ``VariantSpec.flops`` / ``VariantSpec.bytes``, so the mode's
factor cancels); y: achieved GFLOP/s (the row's ``gflops_per_s``). The ceilings are the run's
own probes (run.json): the GEMM peak (``gemm_peak_gflops``, horizontal) and the memory
bandwidth times the intensity (``mem_bw_gbs`` x AI, the diagonal); they meet at the ridge,
AI = peak / bandwidth. Runs that probed it also get the rate of the batched 64 x 64 x 64 GEMM
(``gemm_block_gflops``, dashed): the ceiling of kernels made of such small products
(block_local, swin), below the square-GEMM peak. A group merged from several runs takes the
highest of each (said so).
Runs without a measured bandwidth (before the probe existed) get no roofline.

Rows store no bytes figure: a case's bytes are recomputed from the registry from the row's
shape fields and params; a variant the registry does not know (a plugin not loaded) is left out.
"""
from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd

from attnbench.report.noise import finite, is_noisy
from attnbench.report.tables import Table, csv_frame, fmt_num

PALETTE = "tab10"
MARKERS = "os^vDP"  # one per run of 10 variants (the palette's size)
SMALL_N_ALPHA = 0.35  # markers of a variant's smaller n; its largest n is drawn solid
CEILING_STYLE = dict(color="0.25", lw=1.3, zorder=2)
TABLE_COLUMNS = ["label", "seq_len", "intensity_flop_per_byte", "gflops_per_s", "bound_gflops_per_s",
                 "bound_fraction", "binds"]


def bound(ai: float, peak_gflops: float, bw_gbs: float) -> tuple[float, str]:
    """(attainable GFLOP/s, which ceiling binds) at intensity ``ai`` FLOP/byte: min(peak, bw x AI)."""
    mem = bw_gbs * ai  # GB/s x FLOP/byte = GFLOP/s
    return (mem, "memory") if mem < peak_gflops else (peak_gflops, "compute")


def _highest(df: pd.DataFrame, col: str) -> tuple[float | None, int]:
    """(the highest finite value of a run field over the rows, None where none; how many differ)."""
    vals = {float(v) for v in df.get(col, pd.Series(dtype=float)).dropna() if finite(v)}
    return (max(vals) if vals else None), len(vals)


def ceilings(df: pd.DataFrame) -> tuple[float | None, float | None, bool]:
    """(GEMM peak GFLOP/s, bandwidth GB/s, whether runs differ), the highest over the rows' runs."""
    (peak, n_peak), (bw, n_bw) = _highest(df, "gemm_peak_gflops"), _highest(df, "mem_bw_gbs")
    return peak, bw, n_peak > 1 or n_bw > 1


def block_ceiling(df: pd.DataFrame) -> float | None:
    """The batched 64 x 64 x 64 GEMM rate (GFLOP/s), the highest over the rows' runs; None where
    no run probed it."""
    return _highest(df, "gemm_block_gflops")[0]


def case_bytes(r: dict) -> float | None:
    """The variant's minimum bytes of one call for the row's shape and params (None: unknown variant)."""
    from attnbench.case import Shape
    from attnbench.catalog import get

    try:
        shape = Shape(batch=int(r["batch"]), heads=int(r["heads"]), kv_heads=int(r["kv_heads"]),
                      seq_len=int(r["q_len"]), kv_len=int(r["kv_len"]), head_dim=int(r["head_dim"]),
                      dtype=str(r["dtype"]), device=str(r["device"]), causal=bool(r["causal"]), mode=str(r["mode"]))
        return float(get(str(r["variant"])).bytes(shape, r.get("params") or None))
    except (KeyError, ValueError, TypeError):
        return None


def points(df: pd.DataFrame) -> pd.DataFrame:
    """One record per ok row with a rate: label, n, intensity (FLOP/byte), GFLOP/s, noisy."""
    recs = []
    for r in df.to_dict("records"):
        if r.get("status") != "ok" or not finite(r.get("gflops_per_s")) or not finite(r.get("flops")):
            continue
        b = case_bytes(r)
        if b and b > 0:
            recs.append({"label": r.get("label") or r["variant"], "seq_len": int(r["seq_len"]),
                         "intensity": float(r["flops"]) / b, "gflops_per_s": float(r["gflops_per_s"]),
                         "noisy": is_noisy(r)})
    cols = ["label", "seq_len", "intensity", "gflops_per_s", "noisy"]
    return pd.DataFrame(recs, columns=cols).sort_values(["label", "seq_len"]).reset_index(drop=True)


def _block_text(block: float | None) -> str:
    if block is None:
        return ""
    return (f" Dashed: torch.bmm of 256 [64×64]·[64×64] products, {fmt_num(block)} GFLOP/s: the ceiling of kernels "
            "made of 64-row blocks (block_local, swin).")


def _ceiling_text(peak: float, bw: float, several: bool) -> str:
    txt = f"GEMM peak {fmt_num(peak)} GFLOP/s, bandwidth {fmt_num(bw)} GB/s, ridge {fmt_num(peak / bw)} FLOP/B"
    return txt + (" (the highest of the merged runs' probes)" if several else "")


def roofline_figure(df: pd.DataFrame, desc: str):
    """The roofline of one group (same device, dtype, mode); None without ceilings or ok rows."""
    from matplotlib.figure import Figure

    peak, bw, several = ceilings(df)
    pts = points(df)
    if peak is None or bw is None or pts.empty:
        return None
    fig = Figure(figsize=(8.0, 4.6))
    ax = fig.subplots()
    lo = min(pts["intensity"].min(), peak / bw) / 4
    hi = max(pts["intensity"].max(), peak / bw) * 4
    xs = np.geomspace(lo, hi, 200)  # FLOP/byte
    ax.plot(xs, np.minimum(peak, bw * xs), label="ceiling: min(GEMM peak, bandwidth × AI)", **CEILING_STYLE)
    ax.axvline(peak / bw, color="0.6", lw=0.8, ls=":", zorder=1)
    ax.plot([peak / bw], [peak], marker="D", color="0.25", ls="none", ms=6, label=f"ridge {fmt_num(peak / bw)} FLOP/B")
    block = block_ceiling(df)
    if block is not None:
        ax.axhline(block, color="0.45", lw=1.0, ls="--", zorder=2,
                   label=f"batched 64×64×64 GEMM {fmt_num(block)} GFLOP/s")
    _draw_variants(ax, pts)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ymin = min(pts["gflops_per_s"].min(), bw * lo)
    ax.set_ylim(ymin / 2, peak * 2)
    ax.set_xlabel("arithmetic intensity (FLOPs ÷ minimum bytes, FLOP/byte)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title(f"Roofline — {desc}", loc="left", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    caption = (_ceiling_text(peak, bw, several) + ". Each variant's line runs over its n; its largest n solid, "
               "smaller n faded; white-filled: noisy." + _block_text(block))
    ax.text(0.0, -0.13, textwrap.fill(caption, 110), transform=ax.transAxes, fontsize=7, color="0.3",
            ha="left", va="top")  # wrapped under the axes, clear of the legend on the right
    return fig


def _draw_variants(ax, pts: pd.DataFrame) -> None:
    """A line through each variant's n, faded markers at its smaller n, a solid one at its largest."""
    import matplotlib

    cmap = matplotlib.colormaps[PALETTE]
    for i, (lab, v) in enumerate(pts.groupby("label", sort=True)):
        col = cmap(i % cmap.N)
        mk = MARKERS[(i // cmap.N) % len(MARKERS)]  # colours repeat every 10 variants: the marker tells them apart
        ax.plot(v["intensity"], v["gflops_per_s"], color=col, lw=0.9, alpha=SMALL_N_ALPHA + 0.2, zorder=3)
        ax.plot(v["intensity"][:-1], v["gflops_per_s"][:-1], color=col, marker=mk, ms=4, ls="none",
                alpha=SMALL_N_ALPHA, zorder=4)
        top = v.iloc[-1]
        face = "white" if top["noisy"] else col
        ax.plot([top["intensity"]], [top["gflops_per_s"]], color=col, marker=mk, ms=7, ls="none",
                markerfacecolor=face, zorder=5, label=f"{lab} (n = {int(top['seq_len'])})")


def roofline_table(df: pd.DataFrame, group: dict, slug: str, desc: str) -> Table | None:
    """Per variant at its largest n: intensity, achieved and attainable GFLOP/s, their ratio, the
    binding ceiling; None without ceilings or ok rows."""
    peak, bw, several = ceilings(df)
    pts = points(df)
    if peak is None or bw is None or pts.empty:
        return None
    rows, recs = [], []
    for lab, v in pts.groupby("label", sort=True):
        top = v.iloc[-1]
        b, which = bound(float(top["intensity"]), peak, bw)
        frac = float(top["gflops_per_s"]) / b if b > 0 else math.nan
        recs.append(dict(zip(TABLE_COLUMNS, [lab, int(top["seq_len"]), float(top["intensity"]),
                                             float(top["gflops_per_s"]), b, frac, which])))
        rows.append([lab, str(int(top["seq_len"])), fmt_num(top["intensity"]), fmt_num(top["gflops_per_s"]),
                     fmt_num(b), f"{frac:.2f}", which])
    header = ["variant", "n", "AI (FLOP/B)", "achieved GFLOP/s", "bound GFLOP/s", "achieved ÷ bound", "binds"]
    return Table(name=f"roofline_{slug}", title=f"Roofline at each variant's largest n — {desc}", header=header,
                 rows=rows, csv=csv_frame(recs, group, TABLE_COLUMNS), align="lrrrrrl",
                 notes=[f"AI: the variant's FLOPs ÷ its minimum bytes (registry formulas); bound: min(GEMM peak, "
                        f"bandwidth × AI); {_ceiling_text(peak, bw, several)}.{_block_text(block_ceiling(df))}"])
