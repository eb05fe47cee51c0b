"""One definition of a statistics row: one figure of one statistic, for one head of one layer
of one variant on one input, and its meaning.

Statistics rows live in the same store as kernel, training and model rows (``results.jsonl``
one complete line per row, ``results.parquet`` at the end, ``run.json`` with ``"kind":
"stats"``). They carry ``row_kind = "stats"``. A statistic that cannot be computed for a case
is one row with ``status`` (``unsupported``: the reasons; ``error``: what failed) and no value,
so nothing is lost silently.

Long format: a statistic gives one or more ``column`` s (entropy: ``entropy`` and
``entropy_norm``); a scalar is in ``value``, a curve or a map in ``series`` (flattened, with its
``series_shape``). A model-scope statistic (rollout) has ``layer`` and ``head`` None.
"""
from __future__ import annotations

from typing import Any

from attnbench.schema import Field, complete_row

SCHEMA_VERSION = 1
ROW_KIND = "stats"
SOURCES = ("random", "task", "checkpoint")

FIELDS: tuple[Field, ...] = (
    Field("row_kind", "str", "'stats' (kernel rows have no such field)"),
    Field("stats_schema_version", "int", "version of this row format"),
    Field("source", "str", "where q, k, v came from: random (seeded Gaussian or sharp q, k, v), task (the "
                           "task's data through a freshly initialized model), checkpoint (a trained job's model "
                           "on its task's validation data)"),
    Field("input", "str", "the input in words: 'gaussian', 'sharp', a task name, a job directory"),
    Field("checkpoint_sha", "str", "sha256 of the checkpoint's weights (first 12 hex digits), for source checkpoint"),
    Field("task", "str", "task name (source task / checkpoint)"),
    Field("arch", "str", "the model's skeleton: encoder, vit, swin, pvt (None for random inputs)"),
    Field("model_variant", "str", "the variant the model ran, whose layers gave q, k, v (None for random inputs)"),
    Field("variant", "str", "pattern@kernel whose attention the statistic describes, on those q, k, v"),
    Field("pattern", "str", "what is attended to"),
    Field("kernel", "str", "how"),
    Field("family", "str", "vocab.FAMILIES"),
    Field("exact", "bool", "the variant computes exact softmax attention under its pattern"),
    Field("weights_from", "str", "kernel (it returned its probabilities) | implied (its dense definition on the "
                                 "same q, k: masked softmax, normalized feature products, LSH's effective weights)"),
    Field("params", "json", "the variant's parameters as resolved"),
    Field("param_label", "str", "the non-default parameters, 'k=v,...'"),
    Field("seq_len", "int", "N, queries"),
    Field("kv_len", "int", "M, keys"),
    Field("batch", "int", "inputs the statistic averages over"),
    Field("heads", "int", "query heads of the layer"),
    Field("head_dim", "int", "D"),
    Field("causal", "bool", "causal attention"),
    Field("layer", "int", "0-based layer (block) index; None for a model-scope statistic"),
    Field("stage", "int", "the stage of a hierarchical model (Swin, PVT); 0 otherwise"),
    Field("head", "int", "0-based query head; None for a model-scope statistic"),
    Field("stat", "str", "the statistic's name (attnbench.stats.STATISTICS)"),
    Field("column", "str", "which of the statistic's figures"),
    Field("value", "float", "the figure, averaged over queries and the batch as the statistic defines"),
    Field("series", "json", "a curve or a map, flattened row-major (None for scalars)"),
    Field("series_shape", "json", "the series' shape (e.g. [32, 32] for a map, [8, 8] for a CLS map on a patch grid)"),
    Field("status", "str", "vocab.STATUSES: ok, unsupported (reasons), error"),
    Field("reasons", "list[str]", "why there is no value (every reason)"),
    Field("seed", "int", "seed of the random inputs, of the model initialization or of the batch drawn"),
    Field("dtype", "str", "dtype the statistics were computed in (float64)"),
    Field("device", "str", "cpu or cuda"),
    Field("git_sha", "str", "commit of the code"),
)
NAMES = tuple(f.name for f in FIELDS)


def make_row(**values: Any) -> dict[str, Any]:
    """A complete statistics row: every field in order, None where not given. Unknown names raise."""
    return complete_row(NAMES, values, {"row_kind": ROW_KIND, "stats_schema_version": SCHEMA_VERSION}, "stats row")


def is_stats_row(row: dict[str, Any]) -> bool:
    return row.get("row_kind") == ROW_KIND
