"""Attention-statistics rows (``row_kind == "stats"``, :mod:`attnbench.stats.schema`) read for the
report: the last row per key, groups, settings and the cells the tables and figures read.

A group is one (source, task, arch, device), and for random inputs one input kind: every
checkpoint of a task side by side. A setting within it is one variant at one parameter setting,
labelled ``variant[param_label]`` where it is the model's own attention (random inputs, a
checkpoint's or a task model's own variant) and ``variant[param_label] on <model variant>`` where
it read another model's queries and keys; ordered by family (vocab.FAMILIES), name and parameter
values. Checkpoints of the same variant (seeds) are one setting: their rows average. A cell summarizes the rows of one setting, statistic,
column, n (and layer): per head the mean over its rows (seeds, batches), then the mean, minimum and
maximum over the heads; a cell with no ok value carries the status of its rows instead.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attnbench.report.tables import NOT_MEASURED, STATUS_MARK, family_rank, param_sort_key
from attnbench.stats.schema import is_stats_row

GROUP = ("source", "input", "task", "arch", "device")  # input: random inputs only (group_key)
KEY = (*GROUP, "model_variant", "checkpoint_sha", "variant", "params", "seq_len", "kv_len", "batch", "heads", "head_dim", "causal",
       "layer", "stage", "head", "stat", "column", "seed", "dtype")
INPUT = "input"  # the runner's rows holding the first input image (column "image"), not a statistic
SLUG_MAX = 60  # a longer slug (a job directory as input) is cut and given a hash of the whole


def _key(row: dict[str, Any]) -> tuple:
    return tuple(json.dumps(row.get(f) or {}, sort_keys=True, default=str) if f == "params" else row.get(f)
                 for f in KEY)


def latest(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per key (KEY): the last read wins (a resumed run's row follows its earlier one)."""
    mine = [r for r in rows if is_stats_row(r)]
    last = {_key(r): r for r in mine}
    dropped = len(mine) - len(last)
    return list(last.values()), ([f"{dropped} statistics row(s) had a later row with the same key; the last row "
                                  f"read of each is kept."] if dropped else [])


def slugify(*parts: Any) -> str:
    """Filesystem-safe: each part lower-case letters, digits and '-', parts joined by '_'."""
    s = "_".join(re.sub(r"[^a-z0-9]+", "-", str(p).lower()).strip("-") or "x" for p in parts)
    if len(s) > SLUG_MAX:
        s = s[:SLUG_MAX - 7].rstrip("-") + "-" + hashlib.sha1(s.encode()).hexdigest()[:6]
    return s


def group_key(row: dict[str, Any]) -> tuple:
    """The row's group: GROUP's fields, the input named only for random inputs."""
    return tuple(row.get(f) if f != "input" or row.get("source") == "random" else None for f in GROUP)


def label(row: dict[str, Any]) -> str:
    p = row.get("param_label") or ""
    name = f"{row['variant']}[{p}]" if p else str(row["variant"])
    model = row.get("model_variant")
    return name if model in (None, row["variant"]) else f"{name} on {model}"


def value(row: dict[str, Any]) -> float | None:
    """The row's finite value when it is ok, else None."""
    v = row.get("value")
    if row.get("status") != "ok" or v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def series(row: dict[str, Any]) -> np.ndarray | None:
    """The row's series in its shape (ok rows only)."""
    s, shape = row.get("series"), row.get("series_shape")
    if row.get("status") != "ok" or s is None:
        return None
    s = json.loads(s) if isinstance(s, str) else s
    shape = json.loads(shape) if isinstance(shape, str) else shape
    a = np.asarray(s, dtype=float)
    return a.reshape(shape) if shape else a


@dataclass(frozen=True)
class Setting:
    label: str
    variant: str
    family: str
    params: dict
    slug: str
    model: str | None = None  # the model whose queries and keys it read, when not its own


@dataclass
class Group:
    key: dict[str, Any]
    slug: str
    settings: list[Setting]
    by: dict[tuple[str, str], list[dict]] = field(default_factory=dict)  # (label, stat) -> rows
    inputs: list[dict] = field(default_factory=list)  # the runner's rows of stat INPUT (the image shown)

    def rows(self, setting: str, stat: str, **where: Any) -> list[dict]:
        """The rows of one setting and statistic with the given fields (column None matches any)."""
        out = []
        for r in self.by.get((setting, stat), ()):
            if all(r.get(k) == v or (k == "column" and r.get(k) is None) for k, v in where.items()):
                out.append(r)
        return out

    def has(self, stat: str, column: str | None = None) -> bool:
        return any(s == stat and (column is None or any(r.get("column") == column for r in rs))
                   for (_, s), rs in self.by.items())

    def describe(self) -> str:
        k = self.key
        parts = [f"{k['source']}: {k['input']}" if k["input"] else f"{k['source']}s",
                 *(f"{f} {k[f]}" for f in ("task", "arch") if k[f] not in (None, ""))]
        return " · ".join(parts + [str(k["device"])])


def _settings(rows: list[dict]) -> list[Setting]:
    first: dict[str, dict] = {}
    for r in rows:
        if r["stat"] == INPUT:
            continue
        first.setdefault(label(r), r)
    order = sorted(first, key=lambda lab: (family_rank(first[lab].get("family")), str(first[lab]["variant"]),
                                           param_sort_key(first[lab].get("params")), lab))
    return [Setting(lab, str(first[lab]["variant"]), str(first[lab].get("family")), dict(first[lab].get("params") or {}),
                    slugify(lab), _model(first[lab])) for lab in order]


def _model(row: dict[str, Any]) -> str | None:
    m = row.get("model_variant")
    return None if m in (None, row["variant"]) else str(m)


def groups(rows: list[dict[str, Any]]) -> list[Group]:
    """The groups of ``rows`` in a fixed order, each with its settings and rows by (setting, stat)."""
    parts: dict[tuple, list[dict]] = defaultdict(list)
    for r in filter(is_stats_row, rows):
        parts[group_key(r)].append(r)
    out = []
    for k in sorted(parts, key=lambda t: tuple("" if x is None else str(x) for x in t)):
        key = dict(zip(GROUP, k))
        g = Group(key, slugify(*(x for x in k if x not in (None, ""))), _settings(parts[k]))
        for r in parts[k]:
            if r["stat"] == INPUT:
                g.inputs.append(r)
            else:
                g.by.setdefault((label(r), r["stat"]), []).append(r)
        out.append(g)
    return out


@dataclass(frozen=True)
class Cell:
    """One table cell: mean, min and max over the heads of their per-head means (None where no ok
    value), the heads counted, and the status of the cell (ok, else that of its rows)."""

    mean: float | None
    lo: float | None
    hi: float | None
    heads: int
    status: str

    @property
    def mark(self) -> str | None:
        if self.mean is not None:
            return None
        return NOT_MEASURED if self.status == "not_measured" else STATUS_MARK.get(self.status, self.status)


def per_head(rows: list[dict], column: str) -> dict[tuple, float]:
    """(layer, head) -> the mean of its ok values of ``column`` (over seeds, repeated inputs), in key order."""
    got: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        v = value(r) if r.get("column") == column else None
        if v is not None:
            got[(r.get("layer"), r.get("head"))].append(v)
    return {k: float(np.mean(got[k])) for k in sorted(got, key=lambda k: tuple(-1 if x is None else x for x in k))}


def cell(rows: list[dict], column: str) -> Cell:
    """Summary of ``rows`` (one setting, statistic, n and possibly layer) for ``column``."""
    heads = list(per_head(rows, column).values())
    if heads:
        return Cell(float(np.mean(heads)), min(heads), max(heads), len(heads), "ok")
    failed = sorted({str(r.get("status")) for r in rows if r.get("status") != "ok"})
    return Cell(None, None, None, 0, failed[0] if failed else "not_measured")


def mean_series(rows: list[dict], column: str) -> np.ndarray | None:
    """The mean of the ok series of ``column`` in ``rows`` (heads, seeds), None if none or shapes differ."""
    arrays = [a for a in (series(r) for r in rows if r.get("column") == column) if a is not None]
    if not arrays or len({a.shape for a in arrays}) > 1:
        return None
    return np.mean(np.stack(arrays), axis=0)


def largest_n(rows: list[dict]) -> int | None:
    ns = [int(r["seq_len"]) for r in rows if r.get("seq_len") is not None]
    return max(ns) if ns else None


def layers(g: Group, stats: tuple[str, ...]) -> list[int | None]:
    """The layers rows of ``stats`` name at some n, ascending (None, a layerless row, first)."""
    return sorted(layer_n(g, stats), key=lambda x: -1 if x is None else x)


def layer_n(g: Group, stats: tuple[str, ...]) -> dict[int | None, int]:
    """Per layer the largest n any setting has rows of ``stats`` at (a stage of a hierarchy has its own n)."""
    out: dict[int | None, int] = {}
    for (_, s), rs in g.by.items():
        if s in stats:
            for r in rs:
                if r.get("seq_len") is not None:
                    out[r.get("layer")] = max(out.get(r.get("layer"), 0), int(r["seq_len"]))
    return out


def seq_lens(g: Group, stats: tuple[str, ...]) -> list[int]:
    return sorted({int(r["seq_len"]) for (_, s), rs in g.by.items() if s in stats for r in rs
                   if r.get("seq_len") is not None})


def failures(g: Group) -> list[tuple[str, str, str, str, list[int]]]:
    """(setting, stat, status, reason, the n it happened at) of every row without a value, deduplicated."""
    found: dict[tuple[str, str, str, str], set[int]] = defaultdict(set)
    for (lab, stat), rs in g.by.items():
        for r in rs:
            if r.get("status") != "ok":
                for reason in (r.get("reasons") or ["(no reason recorded)"]):
                    found[(lab, stat, str(r.get("status")), str(reason))].add(int(r.get("seq_len") or 0))
    rank = {s.label: i for i, s in enumerate(g.settings)}
    return [(*k, sorted(v)) for k, v in sorted(found.items(), key=lambda kv: (rank[kv[0][0]], *kv[0][1:]))]


def varied(settings: list[Setting]) -> list[str]:
    """The parameter keys whose values differ among ``settings`` (one variant's)."""
    keys = sorted({k for s in settings for k in s.params})
    return [k for k in keys if len({json.dumps(s.params.get(k), sort_keys=True, default=str) for s in settings}) > 1]


def by_variant(g: Group) -> dict[str, list[Setting]]:
    """Variants with more than one setting in the group, and those settings in order."""
    out: dict[str, list[Setting]] = defaultdict(list)
    for s in g.settings:
        out[s.variant if s.model is None else f"{s.variant} on {s.model}"].append(s)
    return {v: ss for v, ss in out.items() if len(ss) > 1}
