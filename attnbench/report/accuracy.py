"""Accuracy tables from training rows: variants x tasks, mean ± std over seeds, per-seed values.

Rules stated once, here, and printed under every table:
- a cell is the mean ± sample standard deviation (ddof 1) of the test metric of the seeds whose
  job finished ``ok``; ``n`` is their number; failed seeds are listed by status, never averaged;
- the test metric is the best-validation checkpoint's (``attnbench.train``);
- the average is the mean of a variant's task means over the tasks in the table that use the
  same metric direction (accuracy), only for variants with a mean on every one of those tasks
  (no task counted as chance, unlike the 6-task LRA averages that count Path-X failures as 50).
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from attnbench.report.tables import Table
from attnbench.train.schema import is_train_row

AVERAGE_RULE = ("average: mean of the per-task means over the accuracy tasks shown; a variant lacking an "
                "ok seed on any of them has none")


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One line per training job."""
    df = pd.DataFrame([r for r in rows if is_train_row(r)])
    if df.empty:
        return df
    df["label"] = [p + (f"[{lab}]" if lab else "") for p, lab in zip(df["pattern"], df["param_label"].fillna(""))]
    df["task_label"] = df["task"] + np.where(df["size"] == "small", "", " (" + df["size"] + ")")
    return df


def cells(df: pd.DataFrame) -> pd.DataFrame:
    """Per (label, task): mean, std, n, per-seed values, failures, wall time and parameters."""
    out = []
    for (label, task), g in df.groupby(["label", "task_label"], sort=False):
        ok = g[g["status"] == "ok"].sort_values("seed")
        vals = ok["test"].astype(float).to_numpy()
        failed = g[g["status"] != "ok"]
        out.append({"label": label, "task": task, "variant": g["variant"].iloc[0], "metric": g["metric"].iloc[0],
                    "higher_is_better": bool(g["higher_is_better"].iloc[0]),
                    "mean": float(vals.mean()) if len(vals) else np.nan,
                    "std": float(vals.std(ddof=1)) if len(vals) > 1 else np.nan, "n": len(vals),
                    "seeds": {int(s): float(v) for s, v in zip(ok["seed"], vals)},
                    "failed": {int(s): st for s, st in zip(failed["seed"], failed["status"])},
                    "params": int(g["n_params"].dropna().iloc[0]) if g["n_params"].notna().any() else np.nan,
                    "param_deviation": g["param_deviation"].dropna().iloc[0] if g["param_deviation"].notna().any() else None,
                    "wall_s": float(g["wall_s"].sum()),
                    "steps_per_s": float(ok["steps_per_s"].mean()) if len(ok) else np.nan,
})
    return pd.DataFrame(out)


def fmt(mean: float, std: float, n: int, scale: float) -> str:
    if n == 0 or np.isnan(mean):
        return "–"
    if n == 1 or np.isnan(std):
        return f"{mean * scale:.2f} (n=1)"
    return f"{mean * scale:.2f} ± {std * scale:.2f} (n={n})"


def table(df: pd.DataFrame, name: str = "accuracy") -> Table:
    """Variants x tasks: 'mean ± std (n=k)' (accuracy in %, bits per byte as is) and the average."""
    c = cells(df)
    c["cell"] = [fmt(m, s, n, 100.0 if metric == "accuracy" else 1.0) + _failed(f)
                 for m, s, n, metric, f in zip(c["mean"], c["std"], c["n"], c["metric"], c["failed"])]
    labels = list(dict.fromkeys(c["label"]))
    tasks = list(dict.fromkeys(c["task"]))
    grid = c.pivot(index="label", columns="task", values="cell").reindex(index=labels, columns=tasks).fillna("—")
    means = c.pivot(index="label", columns="task", values="mean").reindex(index=labels, columns=tasks)
    acc_tasks = [t for t in tasks if (c[c["task"] == t]["metric"] == "accuracy").all()]
    header = ["variant", "params", *[f"{t} ({_unit(c, t)})" for t in tasks]]
    average = len(acc_tasks) > 1
    if average:
        header.append("average (%)")
        avg = means[acc_tasks].mean(axis=1, skipna=False)
    params = c.groupby("label")["params"].first()
    rows = []
    for lab in labels:
        row = [lab, f"{int(params[lab]):,}" if pd.notna(params[lab]) else "", *grid.loc[lab].tolist()]
        if average:
            row.append(f"{avg[lab] * 100:.2f}" if np.isfinite(avg[lab]) else "—")
        rows.append(row)
    notes = ["Test metric of the best-validation checkpoint; mean ± standard deviation over the seeds that "
             "finished ok (n); failed seeds in brackets by status.", AVERAGE_RULE]
    csv = c.drop(columns=["cell"]).assign(seeds=c["seeds"].map(json.dumps), failed=c["failed"].map(json.dumps))
    return Table(name=name, title="Accuracy by variant and task", header=header, rows=rows, csv=csv, notes=notes)


def _unit(c: pd.DataFrame, task: str) -> str:
    metric = c[c["task"] == task]["metric"].iloc[0]
    return "accuracy %" if metric == "accuracy" else metric.replace("_", " ")


def _failed(failed: dict) -> str:
    return "" if not failed else " [" + ", ".join(f"s{s} {st}" for s, st in sorted(failed.items())) + "]"


def per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """Every seed's test figure, its wall time and status: the lottery laid bare (LRA trap 5)."""
    cols = ["task_label", "label", "seed", "status", "test", "test_se", "best_val", "best_step", "steps_per_s",
            "wall_s", "n_params", "param_deviation"]
    return df[cols].sort_values(["task_label", "label", "seed"]).reset_index(drop=True)


def reference_lines(df: pd.DataFrame) -> list[str]:
    """Chance and majority-class figures per task, to read the table against."""
    out = []
    for task, g in df.groupby("task_label"):
        extras = [e for e in g["extra_metrics"] if isinstance(e, dict)]
        chance = next((e["chance"] for e in extras if e.get("chance") is not None), None)
        majority = next((e["majority"] for e in extras if e.get("majority") is not None), None)
        parts = ([f"chance {chance * 100:.1f}%"] if chance is not None else []) + \
                ([f"majority class {majority * 100:.1f}% of test"] if majority is not None else [])
        if parts:
            out.append(f"{task}: " + ", ".join(parts))
    return out
