"""One definition of a result row: every field, its type and its meaning.

Every writer builds rows with :func:`make_row` (every field present, ``None`` where not
measured), every reader passes stored rows through :func:`upgrade` (rows of older schema
versions gain the fields they lack), and :func:`to_parquet` writes typed columns from the same
table. ``results.jsonl`` stays the append-only log that makes resume safe; ``results.parquet``
is written at the end of a run.

Kernel rows are one kind of row; training, model, statistics and sweep-job rows are the others
(``attnbench.train.schema``, ``modelbench.schema``, ``stats.schema``, ``sweep.schema``). Each
kind registers itself here (:func:`register_kind`): its name (the rows' ``row_kind``; kernel
rows carry none), its version field and its table, which begins with those two. A field that
means the same in several kinds is declared once, in :data:`SHARED`, and each table includes it
(:func:`shared`); a kind whose field of that name means something else declares its own.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from attnbench.case import freeze
from attnbench.params import format_params
from attnbench.vocab import STATUSES

SCHEMA_VERSION = 3
KERNEL = "kernel"  # the kind of the rows without a row_kind field


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # str | int | float | bool | json | list[str] | list[float] | list[int]
    meaning: str


class SchemaError(ValueError):
    pass


def complete_row(names: tuple[str, ...], values: dict[str, Any], fixed: dict[str, Any], what: str = "row") -> dict[str, Any]:
    """Every field of ``names`` in order (``fixed`` ones set, None where not given); unknown
    names and a status outside vocab.STATUSES raise. The one builder of every kind's rows."""
    unknown = set(values) - set(names)
    if unknown:
        raise SchemaError(f"unknown {what} fields {sorted(unknown)}; the fields: {', '.join(names)}")
    status = values.get("status")
    if status is not None and status not in STATUSES:
        raise SchemaError(f"status {status!r}; allowed: {', '.join(STATUSES)}")
    return {n: fixed[n] if n in fixed else values.get(n) for n in names}


# Fields that mean the same in every kind of row that has them: declared once, included by name.
SHARED: dict[str, Field] = {f.name: f for f in (
    Field("variant", "str", "pattern@kernel"),
    Field("pattern", "str", "what is attended to (full, sliding_window, ...)"),
    Field("kernel", "str", "how (naive, sdpa, blocked, flex, ...)"),
    Field("family", "str", "vocab.FAMILIES"),
    Field("exact", "bool", "equals softmax attention under its pattern"),
    Field("params", "json", "the parameters exactly as the kernel received them (defaults filled in)"),
    Field("param_label", "str", "the parameters that differ from the variant's defaults, 'k=v,...' ('' if none)"),
    Field("heads", "int", "H, query heads"),
    Field("kv_heads", "int", "Hkv, key/value heads (after the variant's own rule: mqa 1, gqa H/4)"),
    Field("head_dim", "int", "D"),
    Field("device", "str", "cpu | cuda | cuda:N"),
    Field("task_version", "int", "the task's version: results of different versions are not comparable"),
    Field("n_params", "int", "trainable parameters of the model"),
    Field("git_sha", "str", "commit of the code"),
)}


def shared(*names: str) -> tuple[Field, ...]:
    """The :data:`SHARED` fields ``names``, in that order."""
    return tuple(SHARED[n] for n in names)


@dataclass(frozen=True)
class RowKind:
    """A kind of row: ``fields`` (every field in order, ``row_kind`` and the version first),
    what :meth:`make_row` sets itself (``fixed``: the kind's name and version), and how errors
    name a row of it (``what``)."""
    name: str
    fields: tuple[Field, ...]
    fixed: tuple[tuple[str, Any], ...]
    what: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def make_row(self, **values: Any) -> dict[str, Any]:
        """A complete row: every field in order, None where not given. Unknown names raise."""
        return complete_row(self.names, values, dict(self.fixed), self.what)

    def is_row(self, row: dict[str, Any]) -> bool:
        return kind_of(row) == self.name


ROW_KINDS: dict[str, RowKind] = {}


def register_kind(name: str, version_field: str, version: int, fields: tuple[Field, ...],
                  what: str) -> RowKind:
    """Register the kind ``name`` (its table: ``row_kind`` unless it is :data:`KERNEL`, then
    ``version_field``, then ``fields``); a name registered twice raises."""
    if name in ROW_KINDS:
        raise SchemaError(f"row kind {name!r} is registered already")
    tag = () if name == KERNEL else (Field("row_kind", "str", f"{name!r} (kernel rows have no such field)"),)
    head = (*tag, Field(version_field, "int", "version of this row format"))
    fixed = (*((("row_kind", name),) if tag else ()), (version_field, version))
    ROW_KINDS[name] = kind = RowKind(name, head + tuple(fields), fixed, what)
    return kind


def kind_of(row: dict[str, Any]) -> str:
    """The name of a row's kind (:data:`KERNEL` for a row without ``row_kind``)."""
    return row.get("row_kind") or KERNEL


KERNEL_ROWS = register_kind(KERNEL, "schema_version", SCHEMA_VERSION, (
    *shared("variant", "pattern", "kernel", "family", "exact", "params", "param_label"),
    Field("mode", "str", "vocab.MODES: fwd, bwd, fwd+bwd, decode"),
    Field("seq_len", "int", "n: the sequence length of the grid (the KV cache length in decode)"),
    Field("q_len", "int", "N: queries of the call"),
    Field("kv_len", "int", "M: keys / values of the call"),
    Field("batch", "int", "B"),
    *shared("heads", "kv_heads", "head_dim"),
    Field("dtype", "str", "float32 | float64 | bfloat16 | float16"),
    *shared("device"),
    Field("causal", "bool", "bottom-right causal masking"),
    Field("status", "str", "vocab.STATUSES: ok, oom, timeout, crash, error, incorrect, unsupported, skipped"),
    Field("reasons", "list[str]", "why a case is not ok (every reason), or notes"),
    Field("time_ms_median", "float", "median wall time of one call (ms)"),
    Field("time_ms_iqr", "float", "interquartile range of the timed calls (ms)"),
    Field("time_ms_min", "float", "fastest timed call (ms)"),
    Field("time_ci_rel", "float", "half-width of the median's 95% confidence interval / median"),
    Field("timing_stop", "str", "why timing stopped: ci (median known to settle_rel), budget, max, disturbed (noisy)"),
    Field("repeats", "int", "number of timed calls"),
    Field("samples_ms", "list[float]", "the timed calls (ms; at most 256 order statistics beyond 256)"),
    Field("noisy", "bool", "CPU: too few timed calls got the CPU they asked for, or other processes used over 10% of the machine meanwhile"),
    Field("wait_share", "float", "CPU: run-queue wait of the worker's threads / (wall time x threads), over the timed calls"),
    Field("disturbed_samples", "int", "CPU: timed calls set aside and re-measured (wait share over timing.disturbed_wait)"),
    Field("other_cpu_share", "float", "CPU: other processes' CPU time (steal included) / (wall x CPUs) while the case was timed"),
    Field("first_call_ms", "float", "the first call (compile, autotune, plan or mask building), timed apart"),
    Field("peak_mem_bytes", "int", "peak memory of one call above the inputs (CPU: resident high-water mark)"),
    Field("mem_source", "str", "first_call (a steady first call in a warm worker) or memory_pass (a call of its own)"),
    Field("predicted_peak_bytes", "float", "the variant's predicted peak above the inputs (None: cannot predict)"),
    Field("io_bytes", "int", "bytes of q, k, v and the output"),
    Field("kv_cache_bytes", "int", "bytes of k and v"),
    Field("flops", "float", "FLOPs the variant does in one call of this mode"),
    Field("gflops_per_s", "float", "flops / median time"),
    Field("peak_fraction", "float", "gflops_per_s / the GEMM peak measured in the same run"),
    Field("max_abs_err", "float", "max error on the sampled query rows against the definition"),
    Field("allowed_err", "float", "what the tolerance rule allowed there"),
    Field("rel_err", "float", "approximate variants: relative error vs exact attention at n = 1024, gaussian inputs"),
    Field("rel_err_sharp", "float", "the same on inputs where each query picks out a few keys"),
    Field("rel_err_failed", "str", "why rel_err could not be computed"),
    Field("threads", "int", "CPU threads of the worker"),
    Field("seed", "int", "seed of the inputs"),
    Field("case_wall_s", "float", "wall time the worker spent on the case (s)"),
), "row")
FIELDS = KERNEL_ROWS.fields
NAMES = KERNEL_ROWS.names
# The fields that identify a case across runs (resume, compare, report's de-duplication).
KEY_FIELDS = ("variant", "params", "mode", "seq_len", "batch", "heads", "kv_heads", "head_dim", "dtype",
              "device", "causal")

make_row = KERNEL_ROWS.make_row  # a complete kernel row: every field in order, None where not given


def params_key(params: Any) -> str:
    """A canonical text of a row's params, for matching cases."""
    return json.dumps(params or {}, sort_keys=True, default=str)


def case_key(row: dict[str, Any]) -> tuple:
    return tuple(params_key(row.get(f)) if f == "params" else row.get(f) for f in KEY_FIELDS)


def upgrade(row: dict[str, Any], defaults: dict[str, dict] | None = None) -> dict[str, Any]:
    """A stored row in the current schema: every field (None where the row's version had none).

    Version 1 (no version field counts as 1): ``params`` gains the declared defaults of keys it
    lacks (engine knobs version 1 could not set), from ``defaults`` (variant -> {key: default})
    when given, and memory was always measured in a pass of its own. Version 2 had no
    disturbance fields (``noisy``, ``wait_share``, ``disturbed_samples``): they stay None, not
    measured — never False."""
    version = row.get("schema_version", 1) or 1
    if version > SCHEMA_VERSION:
        raise SchemaError(f"schema_version {version} is newer than this attnbench's {SCHEMA_VERSION}: upgrade attnbench")
    out = {**{n: None for n in NAMES}, **row}  # fields a version dropped stay as they were
    if version == 1:
        known = (defaults or {}).get(row.get("variant"), {})
        out["params"] = {**known, **(row.get("params") or {})}
        out["param_label"] = format_params({k: v for k, v in out["params"].items()
                                            if k in known and freeze(v) != freeze(known[k])})
        if out.get("peak_mem_bytes") is not None:
            out["mem_source"] = "memory_pass"
    out["schema_version"] = SCHEMA_VERSION
    return out


def to_parquet(rows: Iterable[dict[str, Any]], path: Path, fields: tuple[Field, ...] = FIELDS) -> Path:
    """Typed columns (lists as lists, ``params`` as JSON text) in ``path``; returns it. ``fields``:
    the row table (kernel rows by default; a kind's ``RowKind.fields`` for its rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
             "json": pa.string(), "list[str]": pa.list_(pa.string()), "list[float]": pa.list_(pa.float64()),
             "list[int]": pa.list_(pa.int64())}
    schema = pa.schema([pa.field(f.name, types[f.type]) for f in fields])
    rows = list(rows)
    cols = {f.name: [_cell(r.get(f.name), f.type) for r in rows] for f in fields}
    table = pa.table(cols, schema=schema)
    tmp = Path(path).with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return Path(path)


def _cell(v: Any, typ: str) -> Any:
    if v is None:
        return None
    if typ == "json":
        return json.dumps(v, sort_keys=True, default=str)
    if typ == "int":
        return int(v)
    if typ == "float":
        return float(v)
    if typ == "list[str]":
        return [str(x) for x in v]
    if typ == "list[float]":
        return [float(x) for x in v]
    if typ == "list[int]":
        return [int(x) for x in v]
    return v
