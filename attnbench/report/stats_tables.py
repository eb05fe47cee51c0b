"""Tables of attention-statistics rows, one set per group (:mod:`attnbench.report.stats_rows`):

    stats_layers_<g>     setting x layer: entropy, distance, concentration, spectrum; mean over heads
                         at each layer's largest n (min and max over heads in the CSV)
    stats_fidelity_<g>   setting x quantity x n: rel_err, kl, tv, coverage against exact softmax,
                         mean over layers and heads; why a cell has no number under the table
    stats_params_<g>     the same per parameter setting, for variants run at several settings
    stats_model_<g>      model-scope values (rollout_cls_entropy) per setting and n

A cell without a number carries its status mark (tables.STATUS_MARK) or ``—`` (no row). The
statistics' meanings come from their registry (``attnbench.stats.STATISTICS``). The CSVs are long:
one line per (setting, [layer,] n, stat, column).
"""
from __future__ import annotations

import pandas as pd

from attnbench.params import format_value
from attnbench.report import stats_rows as R
from attnbench.report.tables import Table, fmt_num, fmt_sci
from attnbench.stats import STATISTICS

# (stat, column, header, shown only where some row has it)
LAYER_COLUMNS = (("entropy", "entropy", "entropy", False), ("entropy", "entropy_norm", "entropy / ln keys", False),
                 ("distance", "distance", "distance", False), ("distance", "distance_px", "distance px", True),
                 ("concentration", "top_k_mass", "top-k mass", False), ("concentration", "keys_90", "keys 90%", False),
                 ("spectrum", "effective_rank", "eff. rank", False), ("spectrum", "rank_90", "rank 90%", False))
FIDELITY_COLUMNS = (("error", "rel_err", "rel_err", False), ("divergence", "kl", "KL", False),
                    ("divergence", "tv", "TV", False), ("coverage", "coverage", "coverage", False))
MODEL_COLUMNS = (("rollout", "rollout_cls_entropy", "rollout CLS entropy", True),)
CSV_COLUMNS = ["setting", "variant", "family", "layer", "seq_len", "stat", "column", "mean", "min", "max", "units",
               "status"]


def fmt(x: float | None) -> str:
    """3 significant digits, or scientific for very small or large values."""
    if x is None:
        return fmt_num(None)
    return fmt_num(x) if x == 0 or 1e-3 <= abs(x) < 1e6 else fmt_sci(x)


def shown(g: R.Group, columns: tuple) -> list[tuple]:
    """The columns the group has rows naming; a column not optional also where its statistic has
    rows but none names a column (it failed everywhere: the rows say why)."""
    out = []
    for c in columns:
        stat, col, _, optional = c
        named = any(g.has(stat, o[1]) for o in columns if o[0] == stat)
        if g.has(stat, col) or (not optional and g.has(stat) and not named):
            out.append(c)
    return out


def _record(g: R.Group, s: R.Setting, layer, n: int, stat: str, column: str, c: R.Cell) -> dict:
    return {**g.key, "setting": s.label, "variant": s.variant, "family": s.family, "layer": layer, "seq_len": n,
            "stat": stat, "column": column, "mean": c.mean, "min": c.lo, "max": c.hi, "units": c.heads,
            "status": c.status}


def _csv(records: list[dict], g: R.Group) -> pd.DataFrame:
    return pd.DataFrame(records, columns=[*g.key, *CSV_COLUMNS])


def docs(stats: list[str]) -> list[str]:
    return [f"`{s}`: {STATISTICS[s].doc}." for s in dict.fromkeys(stats) if s in STATISTICS]


def layer_table(g: R.Group) -> Table | None:
    cols = shown(g, LAYER_COLUMNS)
    if not cols:
        return None
    stats = tuple(dict.fromkeys(c[0] for c in cols))
    at = R.layer_n(g, stats)
    stage = {r.get("layer"): r.get("stage") for (_, s), rs in g.by.items() if s in stats for r in rs}
    staged = any(stage.values())
    rows, recs = [], []
    for s in g.settings:
        for layer in R.layers(g, stats):
            n = at[layer]
            cells = [R.cell(g.rows(s.label, st, seq_len=n, layer=layer), col) for st, col, _, _ in cols]
            if all(c.status == "not_measured" for c in cells):
                continue
            front = [s.label, *([str(stage[layer])] if staged else []), "–" if layer is None else str(layer), str(n)]
            rows.append(front + [c.mark or fmt(c.mean) for c in cells])
            recs += [_record(g, s, layer, n, st, col, c) for (st, col, _, _), c in zip(cols, cells)]
    ns = sorted(set(at.values()))
    where = f"n = {ns[0]}" if len(ns) == 1 else "each layer's largest n"
    header = ["setting", *(["stage"] if staged else []), "layer", "n", *[c[2] for c in cols]]
    return Table(name=f"stats_layers_{g.slug}", header=header, rows=rows, csv=_csv(recs, g),
                 title=f"Attention statistics per layer, mean over heads, at {where} — {g.describe()}",
                 align="l" + "r" * (len(header) - 1),
                 notes=["Each head's value is its mean over the batch's queries; the cell is the mean over the "
                        "heads (min and max over heads in the CSV).", *docs(list(stats))])


def by_n_table(g: R.Group, columns: tuple, name: str, title: str, how: str) -> Table | None:
    """setting x quantity rows, one column per n: mean over every layer and head of the setting."""
    cols = shown(g, columns)
    stats = tuple(dict.fromkeys(c[0] for c in cols))
    ns = R.seq_lens(g, stats)
    rows, recs = [], []
    for s in g.settings:
        for st, col, head, _ in cols:
            if not g.by.get((s.label, st)):
                continue
            cells = [R.cell(g.rows(s.label, st, seq_len=n), col) for n in ns]
            rows.append([s.label, head, *[c.mark or fmt(c.mean) for c in cells]])
            recs += [_record(g, s, None, n, st, col, c) for n, c in zip(ns, cells)]
    if not rows:
        return None
    why = [f"{lab} · {st} ({'n = ' + ', '.join(map(str, n))}): {reason}"
           for lab, st, _, reason, n in R.failures(g) if st in stats]
    return Table(name=name, title=f"{title} — {g.describe()}", header=["setting", "quantity", *[f"n={n}" for n in ns]],
                 rows=rows, csv=_csv(recs, g), align="ll" + "r" * len(ns),
                 notes=[how, *docs(list(stats)),
                        *(["Not computed:"] + [f"- {w}" for w in why] if why else [])])


def fidelity_table(g: R.Group) -> Table | None:
    return by_n_table(g, FIDELITY_COLUMNS, f"stats_fidelity_{g.slug}",
                      "Fidelity to exact softmax attention on the same q, k, v vs n",
                      "Mean over every layer and head of each head's mean over the batch.")


def model_table(g: R.Group) -> Table | None:
    return by_n_table(g, MODEL_COLUMNS, f"stats_model_{g.slug}", "Model-scope statistics vs n",
                      "One value per setting and n: the model's, a mean over the batch.")


def setting_text(s: R.Setting, keys: list[str]) -> str:
    return ",".join(f"{k}={format_value(s.params.get(k))}" for k in keys) or s.label


def params_table(g: R.Group) -> Table | None:
    """Fidelity per parameter setting of each variant run at several, at every n."""
    cols = shown(g, FIDELITY_COLUMNS)
    stats = tuple(dict.fromkeys(c[0] for c in cols))
    rows, recs = [], []
    for variant, settings in R.by_variant(g).items():
        keys = R.varied(settings)
        for s in settings:
            for n in R.seq_lens(g, stats):
                cells = [R.cell(g.rows(s.label, st, seq_len=n), col) for st, col, _, _ in cols]
                if all(c.status == "not_measured" for c in cells):
                    continue
                rows.append([variant, setting_text(s, keys), str(n), *[c.mark or fmt(c.mean) for c in cells]])
                recs += [_record(g, s, None, n, st, col, c) for (st, col, _, _), c in zip(cols, cells)]
    if not rows:
        return None
    return Table(name=f"stats_params_{g.slug}", header=["variant", "setting", "n", *[c[2] for c in cols]],
                 title=f"Fidelity to exact softmax attention vs the variant's parameters — {g.describe()}",
                 rows=rows, csv=_csv(recs, g), align="llr" + "r" * len(cols),
                 notes=["Mean over every layer and head; only variants run at more than one setting."])
