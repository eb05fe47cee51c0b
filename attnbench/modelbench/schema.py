"""One definition of a model-level row: every field of one probe of a task's skeleton, its meaning.

Model rows live in the same store as kernel and training rows (``results.jsonl`` appended one
complete line per probe, ``results.parquet`` at the end, ``run.json`` with ``"kind": "model"``)
and use the same statuses (``attnbench.vocab.STATUSES``). They carry ``row_kind = "model"`` so a
reader holding rows of every kind tells them apart. Two probes write rows:

* ``measure``: one (variant, n) of the grid: training steps, inference, peak memory, the same
  step with attention replaced by an identity, and the kernel alone on the model's shape;
* ``max_n``: one training-step probe of the longest-trainable-n search, under a memory cap.

Figures relative to full attention (speed-ups, memory ratios) are computed by the report from
these rows, never stored.
"""
from __future__ import annotations

import json
from typing import Any

from attnbench.schema import Field, register_kind, shared

SCHEMA_VERSION = 1
ROW_KIND = "model"
PROBES = ("measure", "max_n")

ROWS = register_kind(ROW_KIND, "model_schema_version", SCHEMA_VERSION, (
    Field("probe", "str", "measure (a grid case: steps, inference, memory, attention share) or max_n (one probe "
                          "of the longest-trainable-n search)"),
    Field("task", "str", "task name (tasks/<task>.yaml): its skeleton, not its data"),
    *shared("task_version"),
    Field("size", "str", "small or paper: which of the task's skeletons"),
    Field("kind", "str", "data kind the skeleton takes: classify, pair or tokens"),
    Field("skeleton", "str", "the model in words: kind, layers, heads, d_model, mlp, pool, positions"),
    Field("inputs_source", "str", "how kind, vocab_size and num_classes were known without the data"),
    *shared("variant", "pattern", "kernel", "family", "exact", "params", "param_label"),
    Field("seq_len", "int", "n: tokens per sequence fed to the model (random ids in [1, vocab))"),
    Field("batch", "int", "B: sequences per step (a pair task feeds 2 per sample)"),
    Field("attn_len", "int", "tokens each attention call sees (n + 1 with a CLS token)"),
    Field("attn_batch", "int", "batch of each attention call (2B for a dual encoder)"),
    Field("attn_calls", "int", "attention calls per forward (layers, or more with segments)"),
    Field("layers", "int", "transformer blocks"),
    Field("d_model", "int", "model width"),
    *shared("heads", "kv_heads", "head_dim"),
    Field("causal", "bool", "causal attention (kind tokens)"),
    Field("dtype", "str", "float32 (the model's parameters and activations)"),
    *shared("device"),
    Field("status", "str", "vocab.STATUSES: ok, oom, timeout, crash, error, unsupported, skipped"),
    Field("reasons", "list[str]", "why a probe is not ok (every reason), or notes (a part that failed)"),
    *shared("n_params"),
    Field("first_step_ms", "float", "the first training step (AdamW state allocated, lazy init), timed apart"),
    Field("step_ms_median", "float", "median wall time of one training step: zero_grad, forward, loss, backward, "
                                     "clip, AdamW step (ms; max_n probes: their second step alone)"),
    Field("step_ms_iqr", "float", "interquartile range of the timed steps (ms)"),
    Field("step_ms_min", "float", "fastest timed step (ms)"),
    Field("step_ci_rel", "float", "half-width of the step median's 95% confidence interval / median"),
    Field("step_repeats", "int", "number of timed steps"),
    Field("timing_stop", "str", "why step timing stopped: ci, budget, max, disturbed"),
    Field("samples_ms", "list[float]", "the timed steps (ms; at most 256 order statistics beyond 256)"),
    Field("steps_per_s", "float", "1000 / step_ms_median"),
    Field("infer_ms_median", "float", "median wall time of one forward under inference_mode, eval mode (ms)"),
    Field("infer_ms_iqr", "float", "interquartile range of the timed forwards (ms)"),
    Field("tokens_per_s_infer", "float", "tokens per second of inference: B x n (x 2 for pairs) / infer_ms"),
    Field("peak_mem_bytes", "int", "peak memory of the first two training steps above the process before the model "
                                   "was built (after a freed warm-up of two steps at n <= 128): parameters, "
                                   "gradients, AdamW state, activations (CPU: resident high-water mark; CUDA: max "
                                   "allocated); over mem_budget_bytes: status oom"),
    Field("step_mem_bytes", "int", "peak of one steady training step above the memory just before it "
                                   "(activations and transients)"),
    Field("identity_step_ms", "float", "median training step with every attention call replaced by an identity "
                                       "of the same shape (out = v repeated to H heads, + 0 x q) (ms)"),
    Field("identity_step_ms_iqr", "float", "interquartile range of those steps (ms)"),
    Field("attn_share", "float", "share of step time inside attention: 1 - identity_step_ms / step_ms_median "
                                 "(clipped to [0, 1])"),
    Field("kernel_ms", "float", "median fwd+bwd of the kernel alone on the model's attention shape "
                                "[attn_batch, H, attn_len, D] (ms)"),
    Field("kernel_ms_iqr", "float", "interquartile range of the kernel's timed calls (ms)"),
    Field("attn_share_kernel", "float", "attn_calls x kernel_ms / step_ms_median: the share the kernel alone "
                                        "accounts for (a second estimate of attn_share)"),
    Field("noisy", "bool", "CPU: some timing of the probe lacked the CPU it asked for (reasons say which)"),
    Field("wait_share", "float", "CPU: run-queue wait share of the timed training steps"),
    Field("disturbed_samples", "int", "CPU: timed steps set aside and re-measured"),
    Field("other_cpu_share", "float", "CPU: other processes' share of the machine while the steps were timed"),
    Field("mem_budget_bytes", "int", "max_n probes: the memory cap the probe ran under (the largest budget); "
                                     "measure probes: the run's memory guard"),
    Field("mem_cap", "str", "how the cap was enforced: rlimit_as (CPU) or cuda_fraction"),
    Field("search", "json", "max_n probes: the search's settings (start n, n_cap, grain, budgets in bytes, "
                            "step_timeout_s), from which the report replays it"),
    Field("threads", "int", "CPU threads of the probe's process"),
    Field("seed", "int", "seed of the model's initialization and the random tokens"),
    Field("probe_wall_s", "float", "wall time of the probe's process (s)"),
    Field("device_name", "str", "CPU or GPU model the probe ran on"),
    Field("config", "json", "the resolved task config whose model (and AdamW settings) the probe used"),
    Field("config_hash", "str", "sha256 of that config's model, train and inputs (first 12 hex digits)"),
    *shared("git_sha"),
), "model row")
FIELDS = ROWS.fields
NAMES = ROWS.names
# What identifies a probe across resumes, reports and compare.
KEY_FIELDS = ("probe", "task", "size", "config_hash", "variant", "params", "seq_len", "batch", "dtype", "device",
              "mem_budget_bytes")


make_row = ROWS.make_row  # a complete model row: every field in order, None where not given
is_model_row = ROWS.is_row


def probe_key(row: dict[str, Any]) -> tuple:
    """KEY_FIELDS' values (params as canonical JSON); a measure probe's memory guard is not part of
    what it measured, so its ``mem_budget_bytes`` does not enter."""
    def value(f: str):
        if f == "params":
            return json.dumps(row.get(f) or {}, sort_keys=True, default=str)
        return None if f == "mem_budget_bytes" and row.get("probe") == "measure" else row.get(f)

    return tuple(value(f) for f in KEY_FIELDS)


def timed_cases(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A measure row as the timed cases ``attnbench compare`` judges (its kernel-row key fields):
    the training step and the inference forward, each with its median, spread and status. The
    mode names the task and what was timed (``text/paper train step``); max_n rows give none."""
    if row.get("probe") != "measure":
        return []
    common = {k: row.get(k) for k in ("variant", "params", "param_label", "seq_len", "batch", "heads", "kv_heads",
                                      "head_dim", "dtype", "device", "causal", "status", "reasons", "noisy")}
    what = f"{row.get('task')}/{row.get('size')}"
    step = dict(common, mode=f"{what} train step", time_ms_median=row.get("step_ms_median"),
                time_ms_iqr=row.get("step_ms_iqr"), samples_ms=row.get("samples_ms"))
    infer = dict(common, mode=f"{what} inference", time_ms_median=row.get("infer_ms_median"),
                 time_ms_iqr=row.get("infer_ms_iqr"), samples_ms=None)
    if row.get("status") == "ok" and row.get("infer_ms_median") is None:
        infer.update(status="error", reasons=["inference was not measured"])
    return [step, infer]
