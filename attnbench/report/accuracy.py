"""Accuracy tables from training rows: variants x tasks, mean ± std over seeds, per-seed values,
parameter counts against the fairness rule, and what each job cost.

Rules stated once, here, and printed under every table:
- a cell is the mean ± sample standard deviation (ddof 1) of the test metric of the seeds whose
  job finished ``ok``; ``n`` is their number; failed seeds are listed by status, never averaged;
- the test metric is the best-validation checkpoint's (``attnbench.train``);
- the average is the mean of a variant's task means over the tasks in the table that use the
  same metric direction (accuracy), only for variants with a mean on every one of those tasks
  (no task counted as chance, unlike the 6-task LRA averages that count Path-X failures as 50).

:func:`report_tables` gives the report's four tables (``accuracy``, ``accuracy_per_seed``,
``params``, ``train_cost``); the figures are in :mod:`attnbench.report.accuracy_figures`.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from attnbench.models.fairness import FAIRNESS_LIMIT
from attnbench.report.tables import MIB, NOT_RECORDED, STATUS_MARK, Table, fmt_num
from attnbench.train.schema import DEFAULT_ARCH, is_train_row

AVERAGE_RULE = ("average: mean of the per-task means over the accuracy tasks shown; a variant lacking an "
                "ok seed on any of them has none")
CHECKPOINT_RULE = ("the test metric is the best-validation checkpoint's (the evaluation with the best validation "
                   "metric; never the last step's)")
PER_SEED_RULE = ("mean ± sample standard deviation (ddof 1) over the seeds that finished ok (n); a failed seed "
                 "(diverged, timeout, crash, ...) is listed by status, never averaged nor counted as chance")
FAIRNESS_WORDS = "fairness rule"  # a refusal's reason names the rule (attnbench.train.loop)
NOT_RUN = "not run"
NOT_COUNTED = "not counted"  # a job refused or failed before its model was built
REASON_CHARS = 90  # reasons in the Markdown cells are cut here; the CSV keeps them whole


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One line per training job."""
    df = pd.DataFrame([r for r in rows if is_train_row(r)])
    if df.empty:
        return df
    # a pattern names its row; pattern@kernel where the rows hold the pattern with several kernels
    several = df.groupby("pattern")["kernel"].transform("nunique") > 1
    name = df["variant"].where(several, df["pattern"])
    df["label"] = [p + (f"[{lab}]" if lab else "") for p, lab in zip(name, df["param_label"].fillna(""))]
    arch = df["arch"] if "arch" in df else pd.Series(None, index=df.index, dtype=object)
    arch = arch.where(arch.notna() & (arch != DEFAULT_ARCH), "")  # encoder rows keep the bare task name
    df["task_label"] = (df["task"] + np.where(arch == "", "", "/" + arch)
                        + np.where(df["size"] == "small", "", " (" + df["size"] + ")"))
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
    acc_tasks = accuracy_tasks(c)
    header = ["variant", "params", *[f"{t} ({_unit(c, t)})" for t in tasks]]
    average = len(acc_tasks) > 1
    if average:
        header.append("average (%)")
        avg = averages(c)
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


def accuracy_tasks(c: pd.DataFrame) -> list[str]:
    """The tasks of ``cells`` whose metric is accuracy, in table order."""
    tasks = list(dict.fromkeys(c["task"]))
    return [t for t in tasks if (c[c["task"] == t]["metric"] == "accuracy").all()]


def averages(c: pd.DataFrame) -> pd.Series:
    """Per label of ``cells``: the mean of its task means over :func:`accuracy_tasks` (AVERAGE_RULE);
    NaN where a task lacks a mean."""
    labels = list(dict.fromkeys(c["label"]))
    means = c.pivot(index="label", columns="task", values="mean").reindex(index=labels, columns=accuracy_tasks(c))
    return means.mean(axis=1, skipna=False)


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


# --------------------------------------------------------------------------------------------
# the report's tables
# --------------------------------------------------------------------------------------------
def report_tables(df: pd.DataFrame) -> list[tuple[str, Table]]:
    """(README line, Table) per table of the report's training section, in README order."""
    t = table(df)
    avg = averages(cells(df))
    t.csv = t.csv.assign(average=t.csv["label"].map(avg))  # the same average in every row of a label
    n_tasks = t.csv["task"].nunique()  # "—" here is no job, not tables.NOT_MEASURED's missing n
    t.rows = [[NOT_RUN if c == "—" and 2 <= i < 2 + n_tasks else ("none" if c == "—" else c)
               for i, c in enumerate(r)] for r in t.rows]
    t.notes = [_sentence(PER_SEED_RULE) + "; " + CHECKPOINT_RULE + ".", _sentence(AVERAGE_RULE) + "."]
    t.notes += config_notes(df)
    used = {c for r in t.rows for c in r}
    t.notes += [f"`{NOT_RUN}`: no job of this variant on this task."] if NOT_RUN in used else []
    t.notes += ["`–`: no seed finished ok."] if any(str(c).startswith("– ") for c in used) else []
    refs = reference_lines(df)
    if refs:
        t.notes.append("To read against: " + "; ".join(refs) + ".")
    return [("Accuracy per variant × task: mean ± std over seeds (n), failed seeds marked, average", t),
            ("Every seed's test figure, status, best step, steps/s and wall time", per_seed_table(df)),
            ("Parameter counts against full attention and the fairness verdict", params_table(df)),
            ("Training cost per task and variant: wall time, steps/s, tokens/s, peak memory", cost_table(df))]


def _sentence(rule: str) -> str:
    return rule[0].upper() + rule[1:]


def rules() -> list[str]:
    """The rules of the training tables, one sentence each (the report's README lists them)."""
    return [_sentence(r) + "." for r in (PER_SEED_RULE, CHECKPOINT_RULE, AVERAGE_RULE)] + [
        "Every seed is also listed alone (accuracy_per_seed): a mean hides a lucky or a failed seed."]


def config_notes(df: pd.DataFrame) -> list[str]:
    """One line per task whose rows ran under different configs (steps, model, data): their
    seeds are pooled in the table, which is only fair when the configs agree."""
    out = []
    for task, g in df.groupby("task_label", sort=True):
        hashes = sorted(set(g["config_hash"].dropna().astype(str)))
        if len(hashes) > 1:
            out.append(f"Warning: {task} pools rows of {len(hashes)} different task configs (config_hash "
                       f"{', '.join(hashes)}); its numbers are comparable only within one config.")
    return out


def _scale(metric: str) -> float:
    return 100.0 if metric == "accuracy" else 1.0


def _fmt_metric(x: Any, metric: str) -> str:
    if x is None or not np.isfinite(float(x)):
        return NOT_RECORDED
    return f"{float(x) * _scale(metric):.2f}" if metric == "accuracy" else f"{float(x):.3f}"


def _cut(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 1] + "…"


def _first_reason(reasons: Any) -> str:
    return str(reasons[0]) if isinstance(reasons, list) and reasons else ""


def per_seed_table(df: pd.DataFrame, name: str = "accuracy_per_seed") -> Table:
    """One row per job: test figure (accuracy %), its standard error, status and why, best step."""
    d = df.sort_values(["task_label", "label", "seed"], kind="mergesort")
    rows, recs = [], []
    for r in d.to_dict("records"):
        ok = r["status"] == "ok"
        why = _first_reason(r.get("reasons"))
        miss = STATUS_MARK.get(r["status"], NOT_RECORDED)  # a failed seed's cells: its status mark
        rows.append([r["task_label"], r["label"], str(int(r["seed"])), r["status"],
                     _fmt_metric(r["test"], r["metric"]) if ok else miss,
                     _fmt_metric(r["test_se"], r["metric"]) if ok else miss,
                     _fmt_metric(r["best_val"], r["metric"]) if ok else miss,
                     str(int(r["best_step"])) if ok and pd.notna(r.get("best_step")) else miss,
                     fmt_num(r["steps_per_s"]) if ok else miss,
                     fmt_num(r["wall_s"]) if pd.notna(r.get("wall_s")) else NOT_RECORDED, _cut(why) if not ok else ""])
        recs.append({"task": r["task_label"], "label": r["label"], "variant": r["variant"], "seed": int(r["seed"]),
                     "status": r["status"], "metric": r["metric"], "test": r["test"], "test_se": r["test_se"],
                     "best_val": r["best_val"], "best_step": r.get("best_step"), "steps": r.get("steps"),
                     "steps_per_s": r.get("steps_per_s"), "wall_s": r.get("wall_s"),
                     "reasons": json.dumps(r.get("reasons") or [])})
    header = ["task", "variant", "seed", "status", "test", "test s.e.", "best val", "best step", "steps/s",
              "wall (s)", "why not ok"]
    notes = ["Accuracy in %, bits per byte as is. " + CHECKPOINT_RULE[0].upper() + CHECKPOINT_RULE[1:] +
             "; s.e. is its standard error (binomial for accuracy). Steps/s excludes evaluation; wall time "
             "counts every attempt of the job.", "Reasons are cut in this table; the CSV and results.jsonl hold "
             "them whole."]
    return Table(name=name, title="Test figure per seed", header=header, rows=rows, csv=pd.DataFrame(recs),
                 align="lllllrrrrrl", notes=notes)


def _limit(config: Any) -> float:
    train = config.get("train") if isinstance(config, dict) else None
    lim = train.get("fairness_limit") if isinstance(train, dict) else None
    return float(lim) if lim is not None else FAIRNESS_LIMIT


def fairness_verdict(g: pd.DataFrame) -> tuple[dict | None, str, str]:
    """(the counted row or None, verdict, reason) of one (task, variant) from its jobs' rows: the
    deviation against the limit, or why nothing was counted (a refusal under the fairness rule)."""
    counted = g[g["n_params"].notna()]
    if len(counted):
        r = counted.iloc[0].to_dict()
        limit = _limit(r.get("config"))
        dev = float(r["param_deviation"])
        if abs(dev) <= FAIRNESS_LIMIT:
            return r, f"within ±{FAIRNESS_LIMIT:.0%}", ""
        return r, f"outside ±{FAIRNESS_LIMIT:.0%} (ran under train.fairness_limit = {limit:g})", ""
    reasons = [_first_reason(x) for x in g["reasons"]]
    fair = next((x for x in reasons if FAIRNESS_WORDS in x), None)
    if fair is not None:
        return None, "refused (fairness rule)", fair
    status = g["status"].iloc[0]
    return None, f"not counted ({status})", next((x for x in reasons if x), "")


def params_table(df: pd.DataFrame, name: str = "params") -> Table:
    """Per task and variant: its parameters, full attention's in the same skeleton, the deviation
    (position tables aside), the variant's own weights, the verdict under the fairness rule."""
    rows, recs = [], []
    for (task, label), g in df.groupby(["task_label", "label"], sort=True):
        r, verdict, reason = fairness_verdict(g)
        num = (lambda k: f"{int(r[k]):,}" if r is not None and pd.notna(r.get(k)) else NOT_COUNTED)
        dev = f"{float(r['param_deviation']) * 100:+.1f}" if r is not None else NOT_COUNTED
        rows.append([task, label, num("n_params"), num("full_params"), dev, num("own_params"),
                     verdict + (f": {reason if r is None and FAIRNESS_WORDS in reason else _cut(reason)}"
                                if reason else "")])
        recs.append({"task": task, "label": label, "variant": g["variant"].iloc[0],
                     **{k: (r.get(k) if r is not None else None)
                        for k in ("n_params", "full_params", "param_deviation", "own_params")},
                     "limit": FAIRNESS_LIMIT, "verdict": verdict, "reason": reason})
    header = ["task", "variant", "params", "full attention's", "deviation (%)", "own params", "fairness"]
    notes = [f"LRA's fairness rule: a variant's parameter count stays within ±{FAIRNESS_LIMIT:.0%} of full "
             f"attention's in the same skeleton (deviation = params / full − 1, absolute position tables aside; "
             f"both totals include them). Own params: weights the variant brings itself (XL's u, v, W_r).",
             "A refused variant was not trained: its reason (in words, with the counts) stands in for the numbers."]
    return Table(name=name, title="Parameters against full attention (fairness rule)", header=header, rows=rows,
                 csv=pd.DataFrame(recs), align="llrrrrl", notes=notes)


def cost_table(df: pd.DataFrame, name: str = "train_cost") -> Table:
    """Per task and variant: jobs, mean wall time per job, steps/s and tokens/s (mean over ok
    seeds), peak memory (the largest over its jobs)."""
    rows, recs = [], []
    for (task, label), g in df.groupby(["task_label", "label"], sort=True):
        ok = g[g["status"] == "ok"]
        rec = {"task": task, "label": label, "variant": g["variant"].iloc[0], "jobs": len(g), "ok": len(ok),
               "wall_s_mean": _mean(g["wall_s"]), "steps_per_s": _mean(ok["steps_per_s"]),
               "tokens_per_s": _mean(ok["tokens_per_s"]),
               "peak_mem_mib": float(g["peak_mem_bytes"].dropna().astype(float).max()) / MIB
               if g["peak_mem_bytes"].notna().any() else np.nan}
        recs.append(rec)
        rows.append([task, label, f"{rec['ok']}/{rec['jobs']}", fmt_num(rec["wall_s_mean"]),
                     fmt_num(rec["steps_per_s"]), fmt_num(rec["tokens_per_s"]), fmt_num(rec["peak_mem_mib"])])
    header = ["task", "variant", "ok/jobs", "wall per job (s)", "steps/s", "tokens/s", "peak memory (MiB)"]
    notes = ["Wall time: mean over every job of the variant (all attempts, failed ones included); steps/s and "
             "tokens/s: mean over the ok seeds, evaluation excluded; peak memory: the largest over its jobs "
             "(peak resident memory of the job's process on CPU, the whole process; max allocated on CUDA)."]
    return Table(name=name, title="Training cost per task and variant", header=header, rows=rows,
                 csv=pd.DataFrame(recs), align="llrrrrr", notes=notes)


def _mean(s: pd.Series) -> float:
    v = s.dropna().astype(float)
    return float(v.mean()) if len(v) else np.nan
