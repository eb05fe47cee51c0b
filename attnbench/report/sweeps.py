"""Parameter sweeps in one group's rows: detection, and one table per sweep.

A variant run at several settings (``sliding_window@blocked[window=32,...,1024]``) holds a
sweep of each parameter whose value differs between settings that agree in every other
parameter. Each sweep is compared at one fixed n (:func:`sweep_n`); its table has one row per
setting (time [IQR], memory, speed-up vs the baseline, rel_err where the rows carry it). The
sweep and trade-off figures are in :mod:`attnbench.report.sweep_figures`.

Also here, because labels and line styles need them too: the settings of one variant
(:func:`settings_of`) and the keys that differ between them (:func:`varying_keys`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from attnbench.params import format_params, format_value
from attnbench.report.noise import NOISE_WORD, WITHIN_NOISE, faster, finite, marked, noise_mark
from attnbench.report.tables import (MIB, NO_BASE, NOT_RECORDED, Table, csv_frame, fmt_num, fmt_ratio, fmt_sci,
                                     fmt_with_spread, has_column, mark, value_sort_key)
from attnbench.schema import params_key

ERR_COLUMNS = ("rel_err", "rel_err_sharp")  # error vs exact attention: gaussian and sharp inputs


@dataclass
class Sweep:
    """A sweep of ``param`` of ``variant`` in one group: its settings in value order, measured
    at one fixed n (the largest n at which every setting ran ok; see :func:`sweep_n`)."""

    variant: str
    param: str
    subject: str  # file-name part: <variant slug>[-<other swept params' values>][-kv<h>]
    kv_heads: int
    labels: list[str]  # one per setting, in value order
    values: list[Any]  # the swept parameter's value per setting
    params_keys: list[str]
    n: int | None = None
    n_rule: str = ""

    @property
    def stem(self) -> str:
        return f"{self.param}_{self.subject}"

    @property
    def numeric(self) -> bool:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)

    def value_text(self, i: int) -> str:
        return format_value(self.values[i])


# --------------------------------------------------------------------------------------------
# settings of one variant, and the sweeps among them
# --------------------------------------------------------------------------------------------
def file_slug(s: str) -> str:
    """File-name text: lower case, runs of other characters as one hyphen."""
    return re.sub(r"[^a-z0-9]+", "-", str(s).lower()).strip("-") or "x"


def varying_keys(settings: Sequence[dict]) -> list[str]:
    """The parameter keys whose values differ between ``settings`` (dicts of params), sorted."""
    keys = sorted({k for p in settings for k in p})
    return [k for k in keys if len({params_key(p.get(k)) for p in settings}) > 1]


def settings_of(v: pd.DataFrame) -> dict[str, dict]:
    """params_key -> params of one variant's rows."""
    out: dict[str, dict] = {}
    for pk, p in zip(v["params_key"], v["params"]):
        out.setdefault(str(pk), p if isinstance(p, dict) else {})
    return out


def find_sweeps(g: pd.DataFrame) -> list[Sweep]:
    """Every sweep in one group: per variant (and K/V head count), per parameter, each set of
    ≥ 2 settings equal in every other parameter. Sorted by variant, parameter, fixed values."""
    out: list[Sweep] = []
    multi_kv = g.groupby("variant")["kv_heads"].nunique()
    for (variant, kv), v in g.groupby(["variant", "kv_heads"], sort=True):
        settings = settings_of(v)
        if len(settings) < 2:
            continue
        vary = varying_keys(list(settings.values()))
        labels = v.groupby("params_key")["label"].first()
        for k in vary:
            parts: dict[str, list[str]] = {}
            for pk, p in settings.items():
                parts.setdefault(params_key({o: p.get(o) for o in vary if o != k}), []).append(pk)
            parts = {r: m for r, m in parts.items() if len(m) >= 2}
            for rest, members in sorted(parts.items()):
                members.sort(key=lambda pk: value_sort_key(settings[pk].get(k)))
                subject = file_slug(variant)
                if len(parts) > 1:  # the same parameter swept at several values of another
                    subject += "-" + file_slug(format_params(dict(sorted(json.loads(rest).items()))))
                if multi_kv[variant] > 1:
                    subject += f"-kv{int(kv)}"
                out.append(Sweep(str(variant), k, subject, int(kv), [str(labels[pk]) for pk in members],
                                 [settings[pk].get(k) for pk in members], members))
    for s in out:
        s.n, s.n_rule = sweep_n(g, s)
    return [s for s in out if s.n is not None]  # no n shared by the settings: nothing to compare at


def _sweep_rows(g: pd.DataFrame, s: Sweep) -> pd.DataFrame:
    return g[(g["variant"] == s.variant) & (g["kv_heads"] == s.kv_heads) & g["params_key"].isin(s.params_keys)]


def sweep_n(g: pd.DataFrame, s: Sweep) -> tuple[int | None, str]:
    """The fixed n of a sweep: the largest n at which every setting ran ok with a time; else the
    largest n measured for every setting (failures then show their mark); else none."""
    rows = _sweep_rows(g, s)
    ok = rows[(rows["status"] == "ok") & rows["time_ms_median"].map(finite)]
    for frame, rule in ((ok, "the largest n at which every setting ran"),
                        (rows, "the largest n measured for every setting (not every setting ran there)")):
        per = [set(frame[frame["params_key"] == pk]["seq_len"].astype(int)) for pk in s.params_keys]
        common = set.intersection(*per) if per else set()
        if common:
            return max(common), rule
    return None, "no n measured for every setting"


def is_approx(g: pd.DataFrame, s: Sweep) -> bool:
    """An approximate variant with an error figure: it gets a speed/error trade-off figure."""
    v = g[g["variant"] == s.variant]
    return not bool(v["exact"].fillna(True).iloc[0]) and has_column(v, "rel_err")


# --------------------------------------------------------------------------------------------
# one record per setting, and the sweep table
# --------------------------------------------------------------------------------------------
def _median_of(v: pd.DataFrame, col: str) -> float | None:
    if col not in v:
        return None
    vals = v[col].map(lambda x: float(x) if finite(x) else np.nan).dropna()
    return float(vals.median()) if len(vals) else None


def sweep_records(g: pd.DataFrame, s: Sweep, baseline: str) -> list[dict]:
    """One record per setting at the sweep's n: status, time, IQR, memory (MiB), speed-up vs the
    baseline at that n (outside the noise or not), the noise marks of the setting's time and of
    the speed-up (noise.noise_mark), and rel_err / rel_err_sharp (median over the setting's rows)."""
    rows = _sweep_rows(g, s)
    base = g[(g["label"] == baseline) & (g["seq_len"] == s.n)]
    b = base.iloc[0].to_dict() if len(base) else None
    b_ok = b is not None and b.get("status") == "ok" and finite(b.get("time_ms_median"))
    recs = []
    for i, (pk, lab) in enumerate(zip(s.params_keys, s.labels)):
        v = rows[rows["params_key"] == pk]
        at = v[v["seq_len"] == s.n]
        r = at.iloc[0].to_dict() if len(at) else None
        m = mark(r)
        rec = {"variant": s.variant, "label": lab, "param": s.param,
               "value": s.values[i] if s.numeric else s.value_text(i), "value_text": s.value_text(i),
               "seq_len": s.n, "status": r["status"] if r is not None else "not_measured", "mark": m or "",
               "time_ms_median": None, "time_ms_iqr": None, "peak_mem_mib": None, "speedup": None,
               "outside_noise": None, "noise": "", "speedup_noise": "",
               "baseline_time_ms": float(b["time_ms_median"]) if b_ok else None,
               "baseline_peak_mem_mib": float(b["peak_mem_bytes"]) / MIB if b_ok and finite(b.get("peak_mem_bytes"))
               else None,
               "rel_err": _median_of(v, "rel_err"), "rel_err_sharp": _median_of(v, "rel_err_sharp")}
        if m is None and finite(r.get("time_ms_median")):
            rec.update(_timed_fields(r, b if b_ok else None))
        recs.append(rec)
    return recs


def _timed_fields(r: dict, b: dict | None) -> dict:
    """Time, IQR, memory, speed-up vs the baseline row ``b`` (None: it did not run) and the marks."""
    t = float(r["time_ms_median"])
    out = {"time_ms_median": t, "time_ms_iqr": float(r["time_ms_iqr"]) if finite(r.get("time_ms_iqr")) else None,
           "peak_mem_mib": float(r["peak_mem_bytes"]) / MIB if finite(r.get("peak_mem_bytes")) else None,
           "noise": noise_mark(r)}
    if b is not None and t > 0:
        out.update(speedup=float(b["time_ms_median"]) / t, outside_noise=faster(r, b) != 0,
                   speedup_noise=noise_mark(r, b))
    return out


def _sweep_cells(rec: dict, with_base: bool, with_err: bool) -> list[str]:
    t = rec["time_ms_median"]
    if rec["mark"]:
        cells = [rec["mark"], rec["mark"]]
    elif t is None:
        cells = [NOT_RECORDED, NOT_RECORDED]
    else:
        cells = [marked(fmt_with_spread(t, rec["time_ms_iqr"]), rec["noise"]),
                 fmt_num(rec["peak_mem_mib"]) if rec["peak_mem_mib"] is not None else NOT_RECORDED]
    if with_base:
        cells.append(rec["mark"] or (marked(fmt_ratio(rec["speedup"]), "" if rec["outside_noise"] else WITHIN_NOISE,
                                            rec["speedup_noise"]) if rec["speedup"] is not None else NO_BASE))
    if with_err:
        cells += [fmt_sci(rec[c]) for c in ERR_COLUMNS]
    return [rec["value_text"], rec["label"], *cells]


def sweep_table(g, group, s: Sweep, baseline, slug, desc) -> Table:
    """One row per setting of a sweep at its fixed n: value, time [IQR], memory, speed-up vs the
    baseline (when the group has it), rel_err / rel_err_sharp (when the rows carry them)."""
    recs = sweep_records(g, s, baseline)
    with_base = baseline in set(g["label"])
    with_err = any(r[c] is not None for r in recs for c in ERR_COLUMNS)
    header = [s.param, "variant", "time (ms) [IQR]", "peak memory (MiB)",
              *([f"speed-up vs {baseline}"] if with_base else []),
              *(["rel_err (gaussian)", "rel_err (sharp)"] if with_err else [])]
    notes = [f"One row per setting of {s.param} ({s.variant}, other parameters as in the variant column), "
             f"at n = {s.n}: {s.n_rule}. Time: median per call, interquartile range of the timed repeats in "
             f"brackets; memory: peak above the inputs."]
    if with_base:
        bt = recs[0]["baseline_time_ms"]
        notes.append(f"Speed-up = {baseline} median time / setting median time at n = {s.n} ({baseline}: "
                     + (f"{fmt_num(bt)} ms)." if bt is not None else "did not run there)."))
    if with_err:
        notes.append("rel_err: relative error vs exact softmax attention on gaussian and on sharp inputs "
                     "(attnbench.approx, n = 1024), median over the setting's rows.")
    cols = ["variant", "label", "param", "value", "seq_len", "status", "mark", "time_ms_median", "time_ms_iqr",
            "noise", "peak_mem_mib", "speedup", "outside_noise", "baseline_time_ms", "rel_err", "rel_err_sharp"]
    csv_recs = [{**r, "noise": NOISE_WORD[r["noise"]]} for r in recs]
    return Table(name=f"sweep_{s.stem}_{slug}",
                 title=f"Sweep of {s.param} for {s.variant} at n = {s.n} — {desc}", header=header,
                 rows=[_sweep_cells(r, with_base, with_err) for r in recs],
                 csv=csv_frame(csv_recs, group, cols), align="ll" + "r" * (len(header) - 2), notes=notes)


def sweep_tables(g: pd.DataFrame, group: dict, sweeps: Sequence[Sweep], baseline: str,
                 desc: str) -> list[tuple[str, Table]]:
    """(README line, Table) per sweep of one group, in the order of ``sweeps``."""
    has_base = baseline in set(g["label"])
    return [(f"Sweep of {s.param} for {s.variant} ({len(s.values)} settings) at n = {s.n}: time, memory"
             + (", speed-up" if has_base else "") + (", rel_err" if is_approx(g, s) else ""),
             sweep_table(g, group, s, baseline, group["slug"], desc)) for s in sweeps]
