"""The rows of scripts/peers.py: one JSON line per (implementation, n, kind), every field in
every row (null where not measured), appended and flushed as each case ends.

kind: ``speed`` (time and peak memory of one forward at n) or ``check`` (a peer against ours
on a small case: does it compute the same attention pattern?). status: attnbench's vocabulary
(``attnbench.vocab.STATUSES``) plus ``missing``: the peer's package is not installed.

Memory fields (MB = 2**20 bytes, resident set of the measuring process, Linux VmRSS / VmHWM):

* ``inputs_mb``: resident growth from creating q, k, v (in the layout the implementation
  takes) above the baseline (interpreter, torch, the peer's package and its built module),
  measured before any call;
* ``residue_mb``: what the first call left resident once its output was freed (compiled code,
  cached layouts or block masks, allocator pools);
* ``call_peak_mb``: the high-water mark during one later call above the resident size just
  before it (reset through /proc/self/clear_refs after ``malloc_trim``), output included;
* ``peak_rss_mb`` = ``inputs_mb`` + ``call_peak_mb``: the issue's figure, peak resident memory
  of a forward including its q, k, v and output (4 x 32 MB at B=1 H=8 D=64 n=16384 fp32), the
  first call's residue left out.
"""
from __future__ import annotations

import json
from pathlib import Path

from attnbench.vocab import STATUSES as ATTNBENCH_STATUSES

SCHEMA = "peers-1"
STATUSES = {**ATTNBENCH_STATUSES,
            "missing": ("missing", "the peer's package is not installed (the row says what to pip install)")}
KINDS = ("check", "speed")
FIELDS = (
    "schema", "kind", "impl", "algorithm", "role", "package", "package_version", "torch", "n", "batch", "heads",
    "head_dim", "dtype", "mode", "params", "pattern", "status", "reasons", "threads",
    "time_ms_median", "iqr_ms", "min_ms", "repeats", "ci_rel", "stop", "noisy", "other_cpu_share",
    "first_call_ms", "peak_rss_mb", "inputs_mb", "call_peak_mb", "residue_mb",
    "check_max_abs_diff", "check_tol", "check_note", "elapsed_s",
)


def new_row(**fields) -> dict:
    """A complete row: every field of FIELDS, null unless given; unknown fields are an error."""
    row = {**dict.fromkeys(FIELDS), "schema": SCHEMA, "reasons": [], **fields}
    validate(row)
    return row


def validate(row: dict) -> None:
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown row fields {unknown}; allowed: {', '.join(FIELDS)}")
    if row.get("status") is not None and row["status"] not in STATUSES:
        raise ValueError(f"status {row['status']!r}; allowed: {', '.join(STATUSES)}")


def append_row(path: Path, row: dict) -> None:
    validate(row)
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=False) + "\n")
        f.flush()


def read_rows(path: Path) -> list[dict]:
    """Complete rows of ``path`` (a truncated last line, from a killed run, is dropped)."""
    out = []
    if not Path(path).is_file():
        return out
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def key(row: dict) -> tuple:
    """What a row measured: a resumed run skips the keys it has."""
    return row["kind"], row["impl"], row["n"]
