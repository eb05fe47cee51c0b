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

from attnbench.schema import Field, register_kind, shared

SCHEMA_VERSION = 1
ROW_KIND = "stats"
SOURCES = ("random", "task", "checkpoint")

ROWS = register_kind(ROW_KIND, "stats_schema_version", SCHEMA_VERSION, (
    Field("source", "str", "where q, k, v came from: random (seeded Gaussian or sharp q, k, v), task (the "
                           "task's data through a freshly initialized model), checkpoint (a trained job's model "
                           "on its task's validation data)"),
    Field("input", "str", "the input in words: 'gaussian', 'sharp', a task name, a job directory"),
    Field("checkpoint_sha", "str", "sha256 of the checkpoint's weights (first 12 hex digits), for source checkpoint"),
    Field("task", "str", "task name (source task / checkpoint)"),
    Field("arch", "str", "the model's skeleton: encoder, vit, swin, pvt (None for random inputs)"),
    Field("model_variant", "str", "the variant the model ran, whose layers gave q, k, v (None for random inputs)"),
    Field("variant", "str", "pattern@kernel whose attention the statistic describes, on those q, k, v"),
    *shared("pattern", "kernel", "family", "exact"),
    Field("weights_from", "str", "kernel (it returned its probabilities) | implied (its dense definition on the "
                                 "same q, k: masked softmax, normalized feature products, LSH's effective weights)"),
    *shared("params", "param_label"),
    Field("seq_len", "int", "N, queries"),
    Field("kv_len", "int", "M, keys"),
    Field("batch", "int", "inputs the statistic averages over"),
    *shared("heads", "head_dim"),
    Field("causal", "bool", "causal attention"),
    Field("layer", "int", "0-based layer (block) index; None for a model-scope statistic"),
    Field("stage", "int", "the stage of a hierarchical model (Swin, PVT); 0 otherwise"),
    Field("head", "int", "0-based query head; None for a model-scope statistic"),
    Field("stat", "str", "the statistic's name (attnbench.stats.STATISTICS)"),
    Field("column", "str", "which of the statistic's figures"),
    Field("value", "float", "the figure, averaged over queries and the batch as the statistic defines"),
    Field("series", "list[float]", "a curve or a map, flattened row-major (None for scalars)"),
    Field("series_shape", "list[int]", "the series' shape (e.g. [32, 32] for a map, [8, 8] for a CLS map on a patch "
                                       "grid)"),
    Field("status", "str", "vocab.STATUSES: ok, unsupported (reasons), error"),
    Field("reasons", "list[str]", "why there is no value (every reason)"),
    Field("seed", "int", "seed of the random inputs, of the model initialization or of the batch drawn"),
    Field("dtype", "str", "dtype the statistics were computed in (float64)"),
    *shared("device", "git_sha"),
), "stats row")
FIELDS = ROWS.fields
NAMES = ROWS.names

make_row = ROWS.make_row  # a complete statistics row: every field in order, None where not given
is_stats_row = ROWS.is_row
