"""One definition of a training row: every field of a (task, variant, seed) job, its meaning.

Training rows live in the same store as kernel rows (``results.jsonl`` appended one complete
line per job, ``results.parquet`` at the end, ``run.json`` beside them) and use the same
statuses (``attnbench.vocab.STATUSES``; ``diverged`` is training's own). A training run's
``run.json`` says ``"kind": "train"``; its rows carry ``row_kind = "train"`` so a reader that
holds rows of both kinds tells them apart.
"""
from __future__ import annotations

import json
from typing import Any

from attnbench.schema import Field, register_kind, shared

SCHEMA_VERSION = 2  # 2: arch (rows of version 1 are all encoder rows)
ROW_KIND = "train"

ROWS = register_kind(ROW_KIND, "train_schema_version", SCHEMA_VERSION, (
    Field("job", "str", "the job's id: task-size-variant[params]-seed"),
    Field("task", "str", "task name (tasks/<task>.yaml)"),
    *shared("task_version"),
    Field("size", "str", "small | paper"),
    Field("arch", "str", "the skeleton (config model.arch): encoder (LRA's), vit, swin, pvt"),
    Field("data_name", "str", "what the data is, named honestly (a generator, a bundled set, release files)"),
    *shared("variant", "pattern", "kernel", "family", "params", "param_label"),
    Field("seed", "int", "training seed (initialization, batch order, dropout); the data's own seed is in config"),
    Field("status", "str", "vocab.STATUSES: ok, diverged, oom, timeout, crash, error, unsupported, ..."),
    Field("reasons", "list[str]", "why a job is not ok (every reason), or notes"),
    Field("metric", "str", "the task's metric (accuracy, bits_per_byte)"),
    Field("higher_is_better", "bool", "direction of the metric"),
    Field("best_val", "float", "best validation metric over the evaluations"),
    Field("best_step", "int", "the step of that evaluation (its checkpoint is the one tested)"),
    Field("test", "float", "test metric of the best-validation checkpoint (never the last)"),
    Field("test_se", "float", "standard error of the test metric (binomial for accuracy: sqrt(p(1-p)/n))"),
    Field("test_count", "int", "predictions scored on test (samples, or answer positions / bytes)"),
    Field("extra_metrics", "json", "task-specific figures (e.g. lm: bits per byte without memory)"),
    Field("final_loss", "float", "the curve's last training loss (the mean over the last evaluation window)"),
    Field("steps", "int", "optimizer steps taken"),
    Field("steps_per_s", "float", "optimizer steps per second of training (evaluation excluded)"),
    Field("tokens_per_s", "float", "training tokens per second (batch x sequence length x steps / time; vision archs: patch tokens of the first stage)"),
    Field("peak_mem_bytes", "int", "peak resident memory of the job's process (CPU) or max allocated (CUDA)"),
    *shared("n_params"),
    Field("full_params", "int", "parameters of the same skeleton with full attention"),
    Field("param_deviation", "float", "n_params / full_params - 1 (fairness: within 10%)"),
    Field("own_params", "int", "parameters the variant brings itself (XL's u, v, W_r)"),
    Field("curve", "json", "evaluations: [[step, mean training loss of the steps since the previous evaluation "
                           "(whose last step is included), val metric], ...]"),
    Field("resumed", "int", "how many times the job resumed from a checkpoint"),
    Field("wall_s", "float", "wall time of the job (all attempts)"),
    *shared("device"),
    Field("threads", "int", "CPU threads of the job"),
    Field("config", "json", "the resolved task config the job ran (data, model, train)"),
    Field("config_hash", "str", "sha256 of that config (first 12 hex digits)"),
    *shared("git_sha"),
), "training row")
FIELDS = ROWS.fields
NAMES = ROWS.names
KEY_FIELDS = ("task", "size", "arch", "variant", "params", "seed")
DEFAULT_ARCH = "encoder"  # what a row without arch (version 1) trained

make_row = ROWS.make_row  # a complete training row: every field in order, None where not given
is_train_row = ROWS.is_row


def job_key(row: dict[str, Any]) -> tuple:
    """What identifies a job across resumes and runs."""
    def value(f: str) -> Any:
        if f == "params":
            return json.dumps(row.get(f) or {}, sort_keys=True)
        return (row.get(f) or DEFAULT_ARCH) if f == "arch" else row.get(f)

    return tuple(value(f) for f in KEY_FIELDS)

