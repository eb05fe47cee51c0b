"""Figures of attention-statistics rows, one set per group (:mod:`attnbench.report.stats_rows`):

    stats_maps_<g>_<s>       per setting: attention maps (``map``), rows = layers, columns = heads, at
                             each layer's largest n; each panel scaled to its own largest weight
    stats_layers_<g>         entropy and mean distance vs layer, a line per setting (mean over heads),
                             each head a faint point
    stats_cls_<g>_<s>        per setting, on an image grid: the input image, batch item 0's rollout CLS
                             row over it, the batch-mean rollout CLS row, and each layer's CLS row
                             (mean over heads) over the image; each map on its own colour scale
    stats_clsline_<g>        1-D encoders with a CLS token: batch-mean rollout CLS row over positions
    stats_fidelity_<g>       rel_err, KL / TV, coverage vs n (log2 axis), a line per setting
    stats_fidparams_<g>_<v>  the same vs the parameter a variant was run at, a line per n

The numbers of the line figures are the tables' (:mod:`attnbench.report.stats_tables`); maps are the
rows' ``series``. ``Figure`` objects, no pyplot state (deterministic, like report.figures).
"""
from __future__ import annotations

import matplotlib
import numpy as np

from attnbench.report import stats_rows as R
from attnbench.report import stats_tables as T
from attnbench.report.accuracy_figures import label_colors
from attnbench.report.figures import SETTINGS_CMAP, fmt_n_tick, legend_outside

MAP_LAYERS, MAP_HEADS = 6, 8  # at most this many layers (rows) and heads (columns) of maps: evenly spread
CLS_LAYERS, CLS_COLUMNS = 8, 4  # at most this many per-layer CLS panels, this many panels a row
OVERLAY_ALPHA = 0.55
MAP_CMAP, OVERLAY_CMAP = "viridis", "inferno"
HEAD_ALPHA = 0.25  # a head's point under its setting's mean line
N_CMAP = matplotlib.colormaps[SETTINGS_CMAP]  # lines of one n each: dark (smallest n) to light


def spread(items: list, cap: int) -> list:
    """At most ``cap`` of ``items``, evenly spread, first and last kept."""
    if len(items) <= cap:
        return list(items)
    return [items[round(i * (len(items) - 1) / (cap - 1))] for i in range(cap)]


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


# --------------------------------------------------------------------------------------------
# (a) attention maps: layers x heads
# --------------------------------------------------------------------------------------------
def map_figure(g: R.Group, s: R.Setting):
    at = R.layer_n(g, ("map",))
    panels = {}
    for layer in spread([lay for lay in R.layers(g, ("map",)) if lay is not None], MAP_LAYERS):
        rows = g.rows(s.label, "map", seq_len=at[layer], layer=layer, column="map")
        for head in spread(sorted({r["head"] for r in rows if r.get("head") is not None}), MAP_HEADS):
            m = R.mean_series([r for r in rows if r.get("head") == head], "map")
            if m is not None and m.ndim == 2:
                panels[(layer, head)] = m
    if not panels:
        return None
    lays, heads = sorted({k[0] for k in panels}), sorted({k[1] for k in panels})
    fig = _figure(1.25 * len(heads) + 1.4, 1.25 * len(lays) + 1.0)
    axes = fig.subplots(len(lays), len(heads), squeeze=False)
    im = None
    for i, layer in enumerate(lays):
        for j, head in enumerate(heads):
            ax = axes[i, j]
            _blank(ax)
            m = panels.get((layer, head))
            if m is not None:
                im = ax.imshow(m / max(float(m.max()), 1e-300), cmap=MAP_CMAP, vmin=0, vmax=1, interpolation="nearest")
            if i == 0:
                ax.set_title(f"head {head}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"layer {layer}\nn={at[layer]}", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="weight / panel's largest")
    fig.suptitle(f"Attention maps of {s.label} (rows: queries, columns: keys, block-averaged)\n{g.describe()}",
                 fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------
# (b) entropy and distance vs layer
# --------------------------------------------------------------------------------------------
def layers_figure(g: R.Group):
    quantities = [(st, col, what) for st, col, what in (("entropy", "entropy", "entropy (nats)"),
                                                          ("distance", "distance", "mean distance (tokens / patches)"))
                  if g.has(st, col)]
    at = R.layer_n(g, tuple(q[0] for q in quantities))
    lays = [lay for lay in R.layers(g, tuple(q[0] for q in quantities)) if lay is not None]
    if not quantities or not lays:
        return None
    own = [s for s in g.settings if s.model is None] or g.settings
    colors = label_colors([s.label for s in own])
    fig = _figure(8.5, 2.6 * len(quantities) + 0.6)
    axes = fig.subplots(len(quantities), 1, squeeze=False)[:, 0]
    for ax, (st, col, what) in zip(axes, quantities):
        for s in own:
            xs, ys = [], []
            for layer in lays:
                heads = R.per_head(g.rows(s.label, st, seq_len=at[layer], layer=layer), col)
                if heads:
                    ax.plot([layer] * len(heads), list(heads.values()), ls="none", marker="o", ms=3,
                            color=colors[s.label], alpha=HEAD_ALPHA, zorder=2)
                    xs.append(layer)
                    ys.append(float(np.mean(list(heads.values()))))
            if xs:
                ax.plot(xs, ys, marker="o", color=colors[s.label], label=s.label, zorder=3)
        ax.set_ylabel(what)
        ax.set_xticks(lays)
    legend_outside(axes[0])
    axes[-1].set_xlabel("layer")
    ns = sorted(set(at.values()))
    fig.suptitle(f"Entropy and mean attention distance per layer of each model's own attention (line: mean over "
                 f"heads; points: heads), "
                 f"n = {', '.join(map(str, ns))}\n{g.describe()}", fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------
# (c) CLS rows and rollout over the image
# --------------------------------------------------------------------------------------------
def image(g: R.Group, s: R.Setting) -> np.ndarray | None:
    """The input image as [H, W] (grey) or [H, W, 3], the setting's own if the runner wrote one."""
    rows = sorted(g.inputs, key=lambda r: r.get("variant") is None or R.label(r) != s.label)
    for r in rows:
        a = R.series(r)
        if a is not None and a.ndim in (2, 3):
            return np.clip(np.moveaxis(a, 0, -1) if a.ndim == 3 else a, 0, 1)
    return None


def _over(ax, img: np.ndarray | None, m: np.ndarray, title: str) -> None:
    """``m`` (a grid map) stretched over ``img`` (when given) on its own colour scale."""
    _blank(ax)
    if img is None:
        ax.imshow(m, cmap=OVERLAY_CMAP, interpolation="nearest")
    else:
        h, w = img.shape[:2]
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.imshow(m, cmap=OVERLAY_CMAP, alpha=OVERLAY_ALPHA, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                  interpolation="bilinear")
    ax.set_title(title, fontsize=8)


def _cls_panels(g: R.Group, s: R.Setting) -> list[tuple[str, np.ndarray, bool]]:
    """(title, 2-D map, over the image) of the setting: rollout item 0, rollout batch mean, per layer."""
    out = []
    roll = g.rows(s.label, "rollout")
    n = R.largest_n([r for r in roll if r.get("status") == "ok"])
    for col, title, over in (("rollout_cls_first", "rollout, CLS row (image 0)", True),
                             ("rollout_cls", "rollout, CLS row (batch mean)", False)):
        m = R.mean_series([r for r in roll if r.get("seq_len") == n], col)
        if m is not None and m.ndim == 2:
            out.append((title, m, over))
    at = R.layer_n(g, ("cls_map",))
    for layer in spread([lay for lay in R.layers(g, ("cls_map",)) if lay is not None], CLS_LAYERS):
        m = R.mean_series(g.rows(s.label, "cls_map", seq_len=at[layer], layer=layer), "cls_first")
        if m is not None and m.ndim == 2:
            out.append((f"layer {layer}: CLS row, mean of heads", m, True))
    return out


def cls_figure(g: R.Group, s: R.Setting):
    panels = _cls_panels(g, s)
    if not panels:
        return None
    img = image(g, s)
    items = ([("input image 0", None, True)] if img is not None else []) + panels
    rows = -(-len(items) // CLS_COLUMNS)
    fig = _figure(2.3 * CLS_COLUMNS, 2.4 * rows + 0.7)
    axes = fig.subplots(rows, CLS_COLUMNS, squeeze=False).ravel()
    for ax, (title, m, over) in zip(axes, items):
        if m is None:
            _blank(ax)
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
        else:
            _over(ax, img if over else None, m, title)
    for ax in axes[len(items):]:
        ax.set_axis_off()
    fig.suptitle(f"Where the CLS token looks: {s.label} (each map on its own colour scale)\n{g.describe()}",
                 fontsize=9)
    return fig


def cls_line_figure(g: R.Group):
    """Batch-mean rollout CLS row over token positions, a line per setting (1-D encoders)."""
    own = [s for s in g.settings if s.model is None]
    colors = label_colors([s.label for s in own])
    fig, drawn = _figure(8.5, 3.0), False
    ax = fig.subplots()
    for s in own:
        roll = [r for r in g.rows(s.label, "rollout", column="rollout_cls") if r.get("status") == "ok"]
        n = R.largest_n(roll)
        m = R.mean_series([r for r in roll if r.get("seq_len") == n], "rollout_cls")
        if m is not None and m.ndim == 1:
            ax.plot(np.arange(1, len(m) + 1), m, color=colors[s.label], lw=1.0, label=f"{s.label} (n={n})")
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("token position (after the CLS token)")
    ax.set_ylabel("rollout weight from CLS")
    legend_outside(ax)
    fig.suptitle(f"Attention rollout: the CLS token's row over the tokens (batch mean)\n{g.describe()}", fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------
# (d) fidelity vs n and vs parameters
# --------------------------------------------------------------------------------------------
PANELS = (("rel_err", ("rel_err",)), ("KL (solid) / TV (dashed)", ("kl", "tv")), ("coverage", ("coverage",)))
DASH = {"kl": "-", "tv": "--"}


def _panels(g: R.Group, settings: list[R.Setting]) -> list[tuple[str, list[tuple]]]:
    """The fidelity panels with a value of some setting in ``settings``."""
    have = {c[1]: c for c in T.shown(g, T.FIDELITY_COLUMNS)
            if any(R.per_head(g.rows(s.label, c[0]), c[1]) for s in settings)}
    return [(title, [have[c] for c in names if c in have]) for title, names in PANELS if any(c in have for c in names)]


def _y(ax, title: str, ys: list[float]) -> None:
    """Coverage on 0..1; others log where they span two decades or more (fewer: too few log ticks to read)."""
    if title == "coverage":
        ax.set_ylim(min([0.0, *ys]), 1.02)
    elif ys and min(ys) > 0 and max(ys) / min(ys) >= 100:
        from matplotlib.ticker import LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, numticks=6))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(title)


def _x(ax, xs: list[float], labels: list[str], log2: bool) -> None:
    if log2:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs, labels, **({} if len(xs) < 3 or log2 else {"rotation": 20, "ha": "right"}))
    ax.minorticks_off()
    lo, hi = min(xs), max(xs)
    ax.set_xlim(*((lo / 1.25, hi * 1.25) if log2 else (lo - 0.1 * (hi - lo or 1), hi + 0.1 * (hi - lo or 1))))


def _missing(ax, g: R.Group, s: R.Setting, cols: list[tuple]) -> None:
    """A legend entry for a setting with rows but no value in this panel: its status mark."""
    for st, col, _, _ in cols:
        c = R.cell(g.rows(s.label, st), col)
        if c.mean is None and c.status != "not_measured":
            ax.plot([], [], ls="none", label=f"{s.label} · {col}: {c.mark}")


def _fidelity_axes(g: R.Group, settings: list[R.Setting], width: float = 8.5):
    panels = _panels(g, settings)
    if not panels:
        return None, [], []
    fig = _figure(width, 2.3 * len(panels) + 0.7)
    return fig, fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels


FID_COLUMNS = 4  # variants side by side in the fidelity figure; more wrap to a new block of rows


def compared(g: R.Group) -> dict[str, list[R.Setting]]:
    """The settings the fidelity figure draws, by variant (and the model it read): those at two input
    n or more (the first stage's: later stages of a hierarchy have their own), but exact full attention (its error is rounding, its coverage 1: the tables say so)."""
    out: dict[str, list[R.Setting]] = {}
    for s in g.settings:
        ns = {r.get("seq_len") for r in g.rows(s.label, "error") if not r.get("stage")}  # a stage's n is not an input's
        if s.family != "dense" and len(ns) > 1:
            out.setdefault(s.variant if s.model is None else f"{s.variant} on {s.model}", []).append(s)
    return out


def _fidelity_panel(ax, g: R.Group, settings: list[R.Setting], title: str, cols: list[tuple], ns: list[int]) -> None:
    shades = {s.label: N_CMAP(0.8 * i / max(len(settings) - 1, 1)) for i, s in enumerate(settings)}
    keys = R.varied(settings)
    ys = []
    for s in settings:
        for st, col, _, _ in cols:
            pts = [(n, R.cell(g.rows(s.label, st, seq_len=n), col).mean) for n in ns]
            pts = [(n, y) for n, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, ls=DASH.get(col, "-"), color=shades[s.label],
                        label=(T.setting_text(s, keys) if keys else "default") if col != "tv" else None)
                ys += [y for _, y in pts]
    _y(ax, title, ys)
    _x(ax, ns, [fmt_n_tick(n) for n in ns], log2=True)


def fidelity_figure(g: R.Group):
    """Small multiples: a column per variant (lines: its parameter settings), a row per quantity."""
    by = compared(g)
    settings = [s for ss in by.values() for s in ss]
    panels = _panels(g, settings) if settings else []
    if not panels:
        return None
    ns = R.seq_lens(g, tuple(c[0] for _, cols in panels for c in cols))
    names = list(by)
    cols_n = min(len(names), FID_COLUMNS)
    blocks = -(-len(names) // cols_n)
    fig = _figure(3.1 * cols_n + 0.4, (2.1 * len(panels)) * blocks + 0.9)
    axes = fig.subplots(len(panels) * blocks, cols_n, squeeze=False)
    for k, name in enumerate(names):
        for i, (title, cols) in enumerate(panels):
            ax = axes[(k // cols_n) * len(panels) + i, k % cols_n]
            _fidelity_panel(ax, g, by[name], title, cols, ns)
            if i == 0:
                ax.set_title(name, fontsize=8)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=6, loc="best", frameon=False)
            if i == len(panels) - 1:
                ax.set_xlabel("n (tokens, log₂)", fontsize=8)
    for k in range(len(names), blocks * cols_n):
        for i in range(len(panels)):
            axes[(k // cols_n) * len(panels) + i, k % cols_n].set_axis_off()
    fig.suptitle(f"Fidelity to exact softmax attention vs n (mean over layers and heads; KL solid, TV dashed)\n"
                 f"{g.describe()}", fontsize=9)
    return fig


def params_figure(g: R.Group, variant: str, settings: list[R.Setting]):
    """Fidelity vs the variant's varied parameter (its settings in order when several vary or one
    is not a number), a line per n."""
    fig, axes, panels = _fidelity_axes(g, settings, width=7.0)
    if fig is None:
        return None
    keys = R.varied(settings)
    numeric = len(keys) == 1 and all(isinstance(s.params.get(keys[0]), (int, float)) and
                                     not isinstance(s.params.get(keys[0]), bool) for s in settings)
    xs = [float(s.params[keys[0]]) if numeric else float(i) for i, s in enumerate(settings)]
    ns = R.seq_lens(g, tuple(c[0] for _, cols in panels for c in cols))
    shades = {n: N_CMAP(0.85 * i / max(len(ns) - 1, 1)) for i, n in enumerate(ns)}
    for ax, (title, cols) in zip(axes, panels):
        ys = []
        for n in ns:
            for st, col, _, _ in cols:
                pts = [(x, R.cell(g.rows(s.label, st, seq_len=n), col).mean) for x, s in zip(xs, settings)]
                pts = [(x, y) for x, y in pts if y is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ls=DASH.get(col, "-"), color=shades[n],
                            label=f"n={n}" if col != "tv" else None)
                    ys += [y for _, y in pts]
        _y(ax, title, ys)
        _x(ax, xs, [f"{x:g}" for x in xs] if numeric else [T.setting_text(s, keys) for s in settings],
           log2=numeric and min(xs) > 0 and max(xs) / min(xs) >= 4)
        legend_outside(ax)
    axes[-1].set_xlabel(keys[0] if numeric else "setting")
    fig.suptitle(f"Fidelity of {variant} vs its parameters (mean over layers and heads)\n{g.describe()}", fontsize=9)
    return fig
