"""``attnbench compare BASE NEW``: did a kernel get slower (or break) between two runs?

Cases are matched by their full key (``schema.KEY_FIELDS``: variant, its parameters, mode, n,
batch, heads, K/V heads, head dim, dtype, device, causal); rows of older schema versions are
upgraded first (their parameters gain the declared defaults they lack). A model-level row
(``run --level model``) enters as two cases of that key, its training step and its inference
forward, the mode naming the task (``text/paper train step``;
``attnbench.modelbench.schema.timed_cases``), and is judged like any other. For each matched case:

* ``ratio`` = new median / base median.
* Both ``ok`` with at least ``MIN_SAMPLES`` raw samples (``samples_ms``) on each side: a
  one-sided Mann-Whitney U rank test in the direction of the change, its p-values adjusted
  over all cases so tested (Holm-Bonferroni: ``alpha`` is the chance that a comparison of
  two runs of unchanged code flags any case, not the chance per case — a run holds tens to
  hundreds of cases). ``regressed`` only if ratio > 1 + threshold AND the new samples are
  significantly larger (adjusted p < alpha); ``improved`` only if ratio < 1 / (1 +
  threshold) AND they are significantly smaller. Otherwise ``same``. The threshold is the
  size that matters; the test guards against calling noise a change. (Samples within a run
  are not independent and runs drift with the machine's load, so p is optimistic: it cannot
  replace the threshold.)
* Fewer samples (old rows, ``repeats`` < 5): the spread decides. The interval of a side is
  [q1, q3] of its samples when it has at least two, else [median - IQR/2, median + IQR/2]
  from the stored ``time_ms_iqr`` (a row stores the IQR, not the quartiles). ``regressed``
  if ratio > 1 + threshold and new q1 > base q3 (the intervals do not overlap); ``improved``
  symmetrically. No stored spread: the threshold alone decides.
* Disturbed cases: a row flagged ``noisy`` on either side (its worker did not get the CPU it
  asked for; ``harness/cpuwait.py``) gets the verdict ``noisy`` and no timing verdict, unless
  ``judge_noisy``: another process's load is not a regression.
* Status changes: ok -> oom / timeout / crash / error / incorrect is ``broken`` (a
  regression); a failure -> ok is ``fixed``; ok -> unsupported / skipped is ``not run`` and
  unsupported / skipped -> ok is ``now runs`` (listed, not failures); both failing is
  ``failing``, both not run ``n/a``. Cases only in NEW are ``new``, only in BASE ``gone``.

Before the table, :func:`environment_notes` says plainly where the two runs differ in what
sets a timing: machine (CPU or GPU model; the CPU's family, model, ISA and caches where both
runs recorded them), threads per worker, torch version, allocator, a GEMM peak
apart by more than ``GEMM_DRIFT``, or a disturbed GEMM probe or disturbed cases on a side.

Exit status of :func:`main`: 1 if any case regressed beyond the threshold or broke, else 0;
2 for bad input (unreadable paths, different schema versions, nothing matched, a bad
``--threshold`` / ``--alpha``), with one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from attnbench.modelbench.schema import is_model_row, timed_cases
from attnbench.params import ParamError, row_filter
from attnbench.results import read_rows, rows_file, upgraded
from attnbench.schema import KEY_FIELDS, case_key, params_key
from attnbench.stats.schema import is_stats_row
from attnbench.sweep.collect import sweep_files
from attnbench.sweep.schema import is_sweep_job_row
from attnbench.train.schema import is_train_row
from attnbench.vocab import NOT_RUN

MIN_SAMPLES = 5  # below this, a one-sided rank test cannot reach p < 0.01 (5 vs 5: p >= 1/252)
# Table order: worst first; within a verdict, larger ratio first.
VERDICT_ORDER = ("broken", "regressed", "same", "improved", "fixed", "noisy", "failing", "not run",
                 "now runs", "n/a", "new", "gone")
GEMM_DRIFT = 0.10  # GEMM peaks further apart than this: the machine itself measured differently
COLUMNS = (*KEY_FIELDS, "param_label", "base_status", "new_status", "base_ms", "new_ms", "ratio", "p_value",
           "p_adj", "test", "base_samples", "new_samples", "verdict", "note")
THRESHOLD_FORM = "give a percentage such as '5%' or a fraction such as 0.05"


class CompareError(ValueError):
    """Input that cannot be compared; ``main`` prints it as one line and exits 2."""


# -- parsing ---------------------------------------------------------------------------------
def parse_threshold(text: str | float) -> float:
    """``'5%'`` or ``0.05`` (a fraction in (0, 1)) -> 0.05."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, pct = float(text), False
    else:
        s = str(text).strip()
        pct = s.endswith("%")
        try:
            value = float(s[:-1] if pct else s)
        except ValueError:
            raise CompareError(f"--threshold {text!r}: {THRESHOLD_FORM}") from None
    if pct:
        value /= 100.0
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        raise CompareError(f"--threshold {text!r}: must be above 0 and below 100%; {THRESHOLD_FORM}")
    return value


def parse_alpha(text: str | float) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise CompareError(f"--alpha {text!r}: must be a number in (0, 1), such as 0.01") from None
    if not 0.0 < value < 1.0:
        raise CompareError(f"--alpha {text!r}: must be a number in (0, 1), such as 0.01")
    return value


# -- loading ---------------------------------------------------------------------------------
def results_file(path: str | Path) -> Path:
    p = Path(path)
    f = rows_file(p) if p.is_dir() else p
    if not f.is_file():
        where = (f"no results.jsonl in directory {p} (nor results.jsonl.gz)" if p.is_dir()
                 else f"{p}: no such file or directory")
        raise CompareError(f"{where} (give a run directory or its results.jsonl)")
    return f


def load_run(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, run.json) of a run directory or a results.jsonl file."""
    files = sweep_files(path) or [results_file(path)]  # a sweep directory: every job's rows
    f = files[0]
    try:
        raw = [r for g in files for r in read_rows(g) if not is_sweep_job_row(r)]
        # model-level rows (row_kind "model") enter as the timed cases they hold: train step, inference
        timed = [c for r in raw if is_model_row(r) for c in timed_cases(r)]
        untimed = [r for r in raw if is_stats_row(r) or is_train_row(r)]  # no timing to judge
        rows = upgraded([r for r in raw if not is_model_row(r) and not is_stats_row(r) and not is_train_row(r)]) + timed
    except ValueError as e:  # a garbled line, or rows of a newer schema than this attnbench
        raise CompareError(f"{f}: {e}") from None
    if not rows:
        only_search = bool(raw) and all(is_model_row(r) and r.get("probe") == "max_n" for r in raw)
        why = (" to time (max-n search probes only: their peaks are in `report`'s max trainable n table)"
               if only_search else " to time (attention statistics or training rows only: their figures are in "
               "`report`)" if untimed else "")
        raise CompareError(f"{f}: holds no result rows{why}")
    run_json = f.parent / "run.json"
    try:
        info = json.loads(run_json.read_text()) if run_json.exists() else {}
    except (OSError, json.JSONDecodeError):
        info = {}
    return rows, info


# -- the comparison --------------------------------------------------------------------------
def _median(a) -> float:
    import numpy as np

    return float(np.median(np.asarray(a, dtype=float)))


def _samples(row: dict) -> list[float]:
    s = row.get("samples_ms") or []
    return [float(x) for x in s if x is not None and math.isfinite(float(x))]


def _time(row: dict) -> float | None:
    m = row.get("time_ms_median")
    if m is not None and math.isfinite(float(m)):
        return float(m)
    s = _samples(row)
    return _median(s) if s else None


def _interval(row: dict) -> tuple[float, float]:
    """[q1, q3] from the samples, else median -/+ IQR/2 from the row, else [median, median]."""
    import numpy as np

    s = _samples(row)
    if len(s) >= 2:
        q1, q3 = np.percentile(np.asarray(s, dtype=float), [25, 75])
        return float(q1), float(q3)
    m = _time(row)
    iqr = row.get("time_ms_iqr")
    half = float(iqr) / 2 if iqr is not None and math.isfinite(float(iqr)) else 0.0
    return m - half, m + half


def _timing_test(base: dict, new: dict, threshold: float) -> dict[str, Any]:
    """Ratio and the per-case test; the verdict is set after the Holm adjustment."""
    b_ms, n_ms = _time(base), _time(new)
    out: dict[str, Any] = {"base_ms": b_ms, "new_ms": n_ms}
    if b_ms is None or n_ms is None or b_ms <= 0:
        return {**out, "verdict": "same", "test": "", "note": "no timing stored"}
    ratio = n_ms / b_ms
    out["ratio"] = ratio
    out["_beyond"] = ratio > 1.0 + threshold or ratio < 1.0 / (1.0 + threshold)
    bs, ns = _samples(base), _samples(new)
    if len(bs) >= MIN_SAMPLES and len(ns) >= MIN_SAMPLES:
        from scipy.stats import mannwhitneyu

        alt = "greater" if ratio >= 1.0 else "less"  # the direction of the change
        out.update(p_value=float(mannwhitneyu(ns, bs, alternative=alt).pvalue), test="mann-whitney")
    else:
        (b1, b3), (n1, n3) = _interval(base), _interval(new)
        out.update(test="iqr", _apart=bool(n1 > b3 if ratio >= 1.0 else n3 < b1),
                   note=f"fewer than {MIN_SAMPLES} samples: IQR overlap decides")
    return out


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control over all cases tested)."""
    p = list(pvalues)
    m = len(p)
    adj, running = [0.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


def _first_reason(row: dict) -> str:
    reasons = row.get("reasons") or []
    return f"{row.get('status')}: {reasons[0]}" if reasons else str(row.get("status"))


def _status_verdict(base: dict | None, new: dict | None) -> dict[str, Any] | None:
    if base is None:
        return {"verdict": "new", "test": "", "note": ""}
    if new is None:
        return {"verdict": "gone", "test": "", "note": ""}
    b, n = base.get("status"), new.get("status")
    if b == "ok" and n == "ok":
        return None
    if b == "ok":
        verdict = "broken" if n not in NOT_RUN else "not run"
        return {"verdict": verdict, "test": "status", "note": _first_reason(new)}
    if n == "ok":
        verdict = "fixed" if b not in NOT_RUN else "now runs"
        return {"verdict": verdict, "test": "status", "note": _first_reason(base)}
    verdict = "failing" if (n not in NOT_RUN) else "n/a"
    return {"verdict": verdict, "test": "status", "note": _first_reason(new)}


def _field(row: dict, f: str):
    """A key field's value, hashable (params as canonical JSON text)."""
    return params_key(row.get(f)) if f == "params" else row.get(f)


def _by_key(rows: Iterable[dict]) -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    for r in rows:  # a resumed or merged file may repeat a case: the last row wins
        out[case_key(r)] = r
    return out


def _sorted(values) -> list:
    try:
        return sorted(values)
    except TypeError:  # None beside numbers, mixed types
        return sorted(values, key=str)


def describe_keys(rows: list[dict]) -> str:
    """What cases a side holds, field by field: 'variants 3 (full@sdpa, ...), n 512..2048, ...'."""
    parts = []
    for f in KEY_FIELDS:
        vals = _sorted({_field(r, f) for r in rows})
        if f == "seq_len" and all(isinstance(v, int) for v in vals) and len(vals) > 2:
            parts.append(f"n {vals[0]}..{vals[-1]} ({len(vals)} values)")
            continue
        shown = ", ".join(map(str, vals[:4])) + (f", +{len(vals) - 4} more" if len(vals) > 4 else "")
        name = {"variant": "variants", "seq_len": "n"}.get(f, f)
        parts.append(f"{name} {len(vals)} ({shown})" if f == "variant" else f"{name} {shown}")
    return "; ".join(parts)


def _nothing_matched(base_rows: list[dict], new_rows: list[dict]) -> str:
    differ = []
    for f in KEY_FIELDS:
        b, n = {_field(r, f) for r in base_rows}, {_field(r, f) for r in new_rows}
        if not b & n:
            differ.append(f"{f} (base {', '.join(map(str, _sorted(b)[:4]))} vs new "
                          f"{', '.join(map(str, _sorted(n)[:4]))})")
    why = f"no value in common for {'; '.join(differ)}" if differ else \
        "every field has values in common, but no combination of them does"
    return (f"no case of NEW matches a case of BASE by {', '.join(KEY_FIELDS)}: {why}. "
            f"BASE has {len(base_rows)} rows: {describe_keys(base_rows)}. "
            f"NEW has {len(new_rows)} rows: {describe_keys(new_rows)}")


def _line(key: tuple, b: dict | None, n: dict | None, threshold: float,
          judge_noisy: bool = False) -> dict[str, Any]:
    """One case: the status verdict, or the timing test still to be judged (``_verdicts``)."""
    import numpy as np

    line: dict[str, Any] = dict(zip(KEY_FIELDS, key))
    line["param_label"] = ((n or b).get("param_label") or "") if (n or b) else ""
    line.update(base_status=b.get("status") if b else None, new_status=n.get("status") if n else None,
                base_ms=np.nan, new_ms=np.nan, ratio=np.nan, p_value=np.nan, p_adj=np.nan,
                base_samples=len(_samples(b)) if b else 0, new_samples=len(_samples(n)) if n else 0)
    sv = _status_verdict(b, n)
    if sv is None:
        line.update(_timing_test(b, n, threshold))
        noisy = [side for side, row in (("base", b), ("new", n)) if row.get("noisy")]
        if noisy and not judge_noisy:
            line.update(verdict="noisy", note=f"{' and '.join(noisy)} disturbed by other load "
                                              "(noisy): no timing verdict")
    else:
        line.update(sv)
        if b is not None and b.get("status") == "ok":
            line["base_ms"] = _time(b)
        if n is not None and n.get("status") == "ok":
            line["new_ms"] = _time(n)
    line.setdefault("note", "")
    return line


def _verdicts(lines: list[dict[str, Any]], alpha: float) -> None:
    """Timing verdicts: one family of rank tests, Holm-adjusted. A run holds tens to hundreds of
    cases, and "exit 1 if any regressed" must not turn alpha per case into a near-certain false
    alarm."""
    tested = [ln for ln in lines if ln.get("test") == "mann-whitney" and "verdict" not in ln]
    for ln, pa in zip(tested, holm([ln["p_value"] for ln in tested])):
        ln["p_adj"] = pa
    for ln in lines:
        if "verdict" in ln:
            continue
        significant = ln["p_adj"] < alpha if ln["test"] == "mann-whitney" else ln["_apart"]
        ln["verdict"] = ("regressed" if ln["ratio"] > 1.0 else "improved") if ln["_beyond"] and significant else "same"


def compare_runs(base_rows: list[dict], new_rows: list[dict], threshold: float = 0.05,
                 alpha: float = 0.01, judge_noisy: bool = False):
    """One line per case key of either side, sorted worst first, as a pandas DataFrame.

    Columns: the key fields, ``base_status``, ``new_status``, ``base_ms``, ``new_ms``,
    ``ratio`` (new / base median), ``p_value`` (one-sided Mann-Whitney U in the direction of
    the change; NaN when not tested), ``p_adj`` (Holm-adjusted over the tested cases; the
    verdict compares it with ``alpha``), ``test`` (mann-whitney | iqr | status | ''),
    ``base_samples``, ``new_samples`` (raw sample counts), ``verdict`` and ``note``. A case
    flagged ``noisy`` on either side is ``noisy`` unless ``judge_noisy``.

    Raises :class:`CompareError` when the sides share no case key.
    """
    import pandas as pd

    threshold, alpha = parse_threshold(threshold), parse_alpha(alpha)
    base, new = _by_key(base_rows), _by_key(new_rows)
    if not base.keys() & new.keys():
        raise CompareError(_nothing_matched(base_rows, new_rows))
    keys = list(base) + [k for k in new if k not in base]
    lines = [_line(key, base.get(key), new.get(key), threshold, judge_noisy) for key in keys]
    _verdicts(lines, alpha)
    df = pd.DataFrame(lines, columns=list(COLUMNS))
    for c in ("base_ms", "new_ms", "ratio", "p_value", "p_adj"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    order = {v: i for i, v in enumerate(VERDICT_ORDER)}
    df["_rank"] = df["verdict"].map(order)
    df["_ratio"] = -df["ratio"].fillna(0.0)
    df = df.sort_values(["_rank", "_ratio", "variant", "mode", "seq_len"], kind="stable")
    return df.drop(columns=["_rank", "_ratio"]).reset_index(drop=True)


def failed(df) -> bool:
    """True when some case regressed beyond the threshold or broke (exit status 1)."""
    return bool(df["verdict"].isin(["regressed", "broken"]).any())


def summary_line(df, threshold: float) -> str:
    """'3 regressed beyond 5%, 1 broken, 1 improved, 40 same; 2 new, 1 gone (not failures)'."""
    c = Counter(df["verdict"])
    pct = f"{threshold * 100:g}%"
    head = [f"{c.get('regressed', 0)} regressed beyond {pct}"]
    if c.get("broken"):
        head.append(f"{c['broken']} broken")
    head.append(f"{c.get('improved', 0)} improved beyond {pct}")
    if c.get("fixed"):
        head.append(f"{c['fixed']} fixed")
    head.append(f"{c.get('same', 0)} same")
    tail = [f"{c[v]} {v}" for v in ("noisy", "failing", "not run", "now runs", "n/a", "new", "gone") if c.get(v)]
    return ", ".join(head) + (f"; {', '.join(tail)} (not failures)" if tail else "")


# -- what the two runs were measured on ------------------------------------------------------
def _env_value(info: dict, key: str):
    if key == "machine":
        return info.get("device_name") or info.get("cpu_model")
    if key == "cpu":  # family, model, ISA, caches: one model name covers several CPUs
        from attnbench.harness.env import cpu_summary

        return cpu_summary(info.get("cpu"))
    if key == "threads":
        return info.get("torch_threads") or (info.get("config") or {}).get("resolved", {}).get("threads")
    if key == "allocator":  # runs before --allocator ran under the default one
        return info.get("allocator") or ("default" if info else None)
    return info.get(key)


def _disturbance(name: str, info: dict, rows: list[dict]) -> list[str]:
    """What is known of a side's disturbance: the GEMM probe, its noisy cases, or nothing."""
    out = []
    if info.get("gemm_noisy"):
        out.append(f"{name}'s GEMM probe was disturbed (wait share {info.get('gemm_wait_share') or 0:.0%}): "
                   "another process shared the CPU, its peak fractions are too high")
    measured = [r for r in rows if r.get("status") == "ok" and r.get("noisy") is not None]
    noisy = sum(bool(r.get("noisy")) for r in measured)
    if noisy:
        out.append(f"{name} was disturbed: {noisy} of {len(measured)} timed cases noisy (other processes "
                   "took CPU from their worker or the machine)")
    if not measured and any(r.get("status") == "ok" for r in rows):
        out.append(f"{name} predates disturbance detection (schema < 3): a loaded machine there is not flagged")
    return out


def environment_notes(base_info: dict, new_info: dict, base_rows: list[dict], new_rows: list[dict]) -> list[str]:
    """Plain lines on what differs between the runs' measuring conditions (empty: nothing known)."""
    notes = []
    for key, what in (("machine", "machines"), ("cpu", "CPUs"), ("threads", "threads per worker"),
                      ("torch_version", "torch versions"), ("allocator", "allocators (--allocator)")):
        b, n = _env_value(base_info, key), _env_value(new_info, key)
        if b is not None and n is not None and b != n:
            notes.append(f"different {what}: BASE {b}, NEW {n} — ratios measure that difference too")
    bp, np_ = base_info.get("gemm_peak_gflops"), new_info.get("gemm_peak_gflops")
    if bp and np_ and abs(np_ / bp - 1) > GEMM_DRIFT:
        notes.append(f"GEMM peak BASE {bp:.0f}, NEW {np_:.0f} GFLOP/s ({np_ / bp:.2f}x): the machine measured "
                     "differently (load, clocks, another machine)")
    return notes + _disturbance("BASE", base_info, base_rows) + _disturbance("NEW", new_info, new_rows)


# -- output ----------------------------------------------------------------------------------
_STATUS_CELL = {"oom": "OOM", "timeout": "TIMEOUT", "crash": "CRASH", "error": "ERROR",
                "incorrect": "WRONG", "unsupported": "n/a", "skipped": "skip", None: "-"}
_STYLE = {"broken": "bold red", "regressed": "red", "improved": "green", "fixed": "green",
          "noisy": "magenta", "new": "cyan", "gone": "yellow", "not run": "yellow"}


def _ms_cell(status, ms) -> str:
    if status != "ok":
        return _STATUS_CELL.get(status, str(status))
    if ms is None or not math.isfinite(ms):
        return "-"
    from attnbench.report.console import fmt_ms

    return fmt_ms(ms)


def _run_label(path, info: dict, rows: list[dict]) -> str:
    bits = []
    if info.get("git_sha"):
        bits.append(f"git {info['git_sha'][:7]}{'+dirty' if info.get('git_dirty') else ''}")
    if info.get("device_name"):
        from attnbench.harness.env import with_cpu

        bits.append(with_cpu(str(info["device_name"]), info.get("cpu")))
    if info.get("torch_version"):
        bits.append(f"torch {info['torch_version']}")
    bits.append(f"{len(rows)} rows")
    return f"{path} ({', '.join(bits)})"


def print_comparison(df, threshold: float, alpha: float, console=None, *, base_label: str = "BASE",
                     new_label: str = "NEW", notes: list[str] = ()) -> None:
    from rich.table import Table
    from rich.text import Text

    from attnbench.report.console import make_console

    console = console or make_console()
    varying = [f for f in KEY_FIELDS if f not in ("variant", "params", "mode", "seq_len")
               and df[f].nunique(dropna=False) > 1]
    t = Table(title=f"attnbench compare — new / base median time; verdict at {threshold * 100:g}% "
                    f"(one-sided Mann-Whitney U, Holm-adjusted p < {alpha:g}; IQR overlap without samples)")
    for c in ("variant", "mode", "n", *varying):
        t.add_column(c)
    for c in ("base ms", "new ms", "ratio", "p (Holm)"):
        t.add_column(c, justify="right")
    t.add_column("verdict")
    for r in df.itertuples(index=False):
        d = r._asdict()
        ratio = f"{d['ratio']:.3f}x" if math.isfinite(d["ratio"]) else "-"
        if d["test"] == "mann-whitney":
            p = f"{d['p_adj']:.2g}"
        elif d["test"] == "iqr":
            p = "IQR"
        else:
            p = "-"
        style = _STYLE.get(d["verdict"], "")
        t.add_row(Text(_label(d)), str(d["mode"]), str(d["seq_len"]), *(str(d[f]) for f in varying),
                  _ms_cell(d["base_status"], d["base_ms"]), _ms_cell(d["new_status"], d["new_ms"]),
                  ratio, p, f"[{style}]{d['verdict']}[/{style}]" if style else d["verdict"])
    console.print(f"base: {base_label}\nnew:  {new_label}")
    for note in notes:
        console.print(f"note: {note}", style="yellow", markup=False, highlight=False)
    console.print(t)
    for r in df[df["verdict"].isin(["broken", "fixed"])].itertuples(index=False):
        console.print(f"{r.verdict}: {_label(r._asdict())} {r.mode} n={r.seq_len}: {r.note}", markup=False,
                      highlight=False)
    console.print(summary_line(df, threshold), style="bold red" if failed(df) else "bold",
                  markup=False, highlight=False)


def _label(d: dict) -> str:
    return f"{d['variant']}[{d['param_label']}]" if d.get("param_label") else str(d["variant"])


# -- CLI -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", metavar="BASE", help="run directory or results.jsonl (the reference)")
    parser.add_argument("new", metavar="NEW", help="run directory or results.jsonl (the candidate)")
    parser.add_argument("--threshold", default="5%",
                        help="smallest slowdown that counts: '5%%' or 0.05 (default 5%%)")
    parser.add_argument("--alpha", default="0.01",
                        help="family-wise significance level of the one-sided rank tests, Holm-adjusted over "
                             "all cases (default 0.01)")
    parser.add_argument("--variants", default=None,
                        help="only these variants: names, globs (a bare pattern: all its kernels), "
                             "with an optional parameter filter: 'sliding_window@*[window=128]'")
    parser.add_argument("--csv", default=None, metavar="FILE", help="also write the comparison as CSV")
    parser.add_argument("--judge-noisy", action="store_true",
                        help="give timing verdicts to cases disturbed by other load (flagged noisy) too")


def _select(rows: list[dict], selection: str | None) -> list[dict]:
    if not selection:
        return rows
    keep = row_filter(selection)
    return [r for r in rows if keep(str(r.get("variant")), r.get("params"))]


def main(args: argparse.Namespace) -> int:
    """Entry point for ``attnbench compare``; returns the exit status (0 same, 1 regressed, 2 bad input)."""
    from attnbench.report.console import make_console

    try:
        threshold = parse_threshold(args.threshold)
        alpha = parse_alpha(getattr(args, "alpha", 0.01))
        base_rows, base_info = load_run(args.base)
        new_rows, new_info = load_run(args.new)
        selection = getattr(args, "variants", None)
        if selection:
            base_rows, new_rows = _select(base_rows, selection), _select(new_rows, selection)
            if not base_rows or not new_rows:
                raise CompareError(f"--variants {selection!r} matches no row of "
                                   f"{'BASE' if not base_rows else 'NEW'}")
        df = compare_runs(base_rows, new_rows, threshold, alpha, getattr(args, "judge_noisy", False))
    except (CompareError, ParamError) as e:
        print(f"attnbench: error: {e}", file=sys.stderr)
        return 2
    print_comparison(df, threshold, alpha, make_console(),
                     base_label=_run_label(args.base, base_info, base_rows),
                     new_label=_run_label(args.new, new_info, new_rows),
                     notes=environment_notes(base_info, new_info, base_rows, new_rows))
    if getattr(args, "csv", None):
        df.to_csv(args.csv, index=False)
    return 1 if failed(df) else 0


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser (``python -m attnbench.compare``), for use before the CLI wiring."""
    p = argparse.ArgumentParser(prog="attnbench compare", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
