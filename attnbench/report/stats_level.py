"""The report section of attention-statistics rows (``row_kind == "stats"``, written by
``python -m attnbench stats``): one subsection per group (source, input, task, arch, model
variant, device) with its tables (:mod:`attnbench.report.stats_tables`), its figures
(:mod:`attnbench.report.stats_figures`) and the list of what could not be computed, and why.

Nothing is re-measured; the same rows give the same bytes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from attnbench.report import stats_figures as SF
from attnbench.report import stats_rows as R
from attnbench.report import stats_tables as ST
from attnbench.report.tables import STATUS_MARK, write_table

latest = R.latest  # one row per key: the last read wins

TABLES = (("Statistics per layer", ST.layer_table), ("Fidelity to exact softmax vs n", ST.fidelity_table),
          ("Fidelity vs the variants' parameters", ST.params_table), ("Model-scope statistics vs n", ST.model_table))


def _figures(g: R.Group) -> list[tuple[str, str, Any]]:
    """(what, file stem, build) of every figure the group may have; build() gives a Figure or None."""
    own = [s for s in g.settings if s.model is None]  # maps of a model's own attention; the rest: fidelity
    out = [("Attention maps per layer and head", f"stats_maps_{g.slug}_{s.slug}", lambda s=s: SF.map_figure(g, s))
           for s in own]
    out.append(("Entropy and distance vs layer", f"stats_layers_{g.slug}", lambda: SF.layers_figure(g)))
    out += [("CLS token and rollout over the image", f"stats_cls_{g.slug}_{s.slug}", lambda s=s: SF.cls_figure(g, s))
            for s in own]
    out.append(("Rollout CLS row over the tokens", f"stats_clsline_{g.slug}", lambda: SF.cls_line_figure(g)))
    out.append(("Fidelity vs n", f"stats_fidelity_{g.slug}", lambda: SF.fidelity_figure(g)))
    out += [(f"Fidelity of {v} vs its parameters", f"stats_fidparams_{g.slug}_{R.slugify(v)}",
             lambda v=v, ss=ss: SF.params_figure(g, v, ss)) for v, ss in R.by_variant(g).items()]
    return out


def _rows_files(g: R.Group) -> str:
    """The names of the files the group's rows were read from (``results.jsonl``, or
    ``results.jsonl.gz`` for a compacted run), as the report's loader marks them."""
    names = sorted({r["rows_file"] for rows in g.by.values() for r in rows if r.get("rows_file")})
    return " and ".join(names) or "results.jsonl"


def _draw(g: R.Group, out: Path) -> tuple[list[Path], list[str]]:
    import matplotlib

    from attnbench.report import figures as F

    written, lines = [], []
    with matplotlib.rc_context(F.rc_params()):
        for what, stem, build in _figures(g):
            fig = build()
            if fig is None:
                continue
            written += F.save(fig, out / "figures" / stem)
            lines.append(f"- {what}: [png](figures/{stem}.png) · [pdf](figures/{stem}.pdf)")
    return written, lines


def not_computed(g: R.Group) -> list[str]:
    """``setting · stat: reason`` once each, with the status mark and the n it happened at."""
    return [f"- {lab} · {stat} ({STATUS_MARK.get(status, status)}, n = {', '.join(map(str, ns))}): {reason}"
            for lab, stat, status, reason, ns in R.failures(g)]


def section(rows: list[dict[str, Any]], out: Path, figures: bool) -> tuple[list[Path], str]:
    """Tables and figures of the statistics rows in ``out``; (files written, README section)."""
    written: list[Path] = []
    lines = ["## Attention statistics", ""]
    for g in R.groups(rows):
        lines += [f"### {g.describe()}", "", "Settings: " + ", ".join(s.label for s in g.settings) + ".", ""]
        for what, build in TABLES:
            t = build(g)
            if t is not None:
                written += write_table(t, out / "tables")
                lines.append(f"- {what}: [md](tables/{t.name}.md) · [tex](tables/{t.name}.tex) · "
                             f"[csv](tables/{t.name}.csv)")
        if figures:
            files, links = _draw(g, out)
            written += files
            lines += links
            if links:
                lines.append(f"- Maps are drawn from the rows' `series`; their numbers are in {_rows_files(g)}.")
        missing = not_computed(g)
        if missing:
            lines += ["", "Not computed:", "", *missing]
        lines.append("")
    return written, "\n".join(lines).rstrip("\n")
