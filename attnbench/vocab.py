"""One vocabulary for the words every part of the suite uses: statuses, families, modes.

Defined here once; the harness, the row schema, the reports, ``compare`` and the registry
derive their lists from these tables (order matters: it is the order of tables and legends).
"""
from __future__ import annotations

# status -> (short mark used in tables and figures, what it means). "ok" has no mark.
STATUSES: dict[str, tuple[str, str]] = {
    "ok": ("", "measured"),
    "oom": ("OOM", "out of memory"),
    "timeout": ("T/O", "timed out (exceeded the per-case wall-clock limit)"),
    "crash": ("crash", "the worker process died (segfault, illegal memory access, killed)"),
    "error": ("err", "the kernel raised an error"),
    "incorrect": ("wrong", "output did not match the reference (status incorrect)"),
    "unsupported": ("n/a", "unsupported for this device, dtype or shape (reasons in results.jsonl)"),
    "skipped": ("skip", "not attempted: predicted over the memory budget, or larger than an n that already failed"),
    "diverged": ("div", "training stopped: the loss became NaN or infinite, or exploded"),
}
FAILED = ("oom", "timeout", "crash", "error", "incorrect", "diverged")  # ran and did not give a number
VARIANT_FAILED = (*FAILED, "skipped")  # no number for the variant at this n (vs a baseline that has one)
NOT_RUN = ("unsupported", "skipped")  # never attempted, by design or by rule
STOPS_LARGER = ("oom", "timeout", "crash")  # after these at some n, larger n of the variant are skipped
BASE_FAILED = ("oom", "timeout", "skipped", "crash")  # the baseline could not do this n: a variant wins there

# family -> what it groups; the order is the order of report rows and legends.
FAMILIES: dict[str, str] = {
    "dense": "exact softmax attention over all keys",
    "window": "local windows (sliding, dilated, blocks, Swin)",
    "sparse": "sparse patterns with global or random blocks (Longformer, BigBird, block layouts)",
    "lsh": "hashing into buckets (Reformer)",
    "linear": "kernelized / linear attention (Performer, linear transformers)",
    "kv_share": "keys and values shared across query heads (MQA, GQA)",
    "memory": "recurrence over segments (Transformer-XL)",
    "test": "harness test kernels (never in 'all')",
    # After 'test' (never in a report) so that figures, which colour a family by its place here
    # in tab10, give it olive rather than the grey that place 7 holds.
    "reduce": "keys and values reduced over the token grid (PVT's spatial-reduction attention)",
}

# mode -> FLOPs relative to the forward pass (the usual rule: a backward is about 2x the
# forward's matmuls). Order: the order of report groups.
MODES: dict[str, float] = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5, "decode": 1.0}
GRAD_MODES = ("bwd", "fwd+bwd")


def status_mark(status: str) -> str:
    return STATUSES[status][0]
