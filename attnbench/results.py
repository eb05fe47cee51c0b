"""The results store: ``run.json`` once per run, ``results.jsonl`` one complete line per case.

Lines are appended and flushed as cases finish, so a run killed at any moment loses at most
the case in flight; a truncated last line (the kill landed mid-write) is dropped on read and
cut off before a resumed run appends.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from attnbench.harness.env import SCHEMA_VERSION

# The key that identifies a case across runs (resume, compare).
KEY_FIELDS = ("variant", "mode", "seq_len", "batch", "heads", "kv_heads", "head_dim", "dtype",
              "device", "causal")
STATUSES = ("ok", "oom", "timeout", "crash", "error", "incorrect", "unsupported", "skipped")
ROW_FIELDS = (
    "schema_version", *KEY_FIELDS, "q_len", "kv_len", "pattern", "kernel", "family", "exact",
    "status", "reasons", "time_ms_median", "time_ms_iqr", "time_ms_min", "repeats",
    "first_call_ms", "peak_mem_bytes", "io_bytes", "kv_cache_bytes", "predicted_peak_bytes",
    "flops", "gflops_per_s", "peak_fraction", "max_abs_err", "allowed_err", "rel_err", "rel_err_sharp",
    "threads", "params",
    "samples_ms", "case_wall_s",
)


def case_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(f) for f in KEY_FIELDS)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Complete rows of a results.jsonl; a truncated or garbled last line is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = path.read_bytes().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # only the last line may be partial
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON (only the last may be truncated)")
    return rows


def repair(path: Path) -> int:
    """Cut a partial last line off ``path``; returns the number of complete rows."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = data[: data.rfind(b"\n") + 1] if not data.endswith(b"\n") else data
    if keep != data:
        with open(path, "r+b") as f:
            f.truncate(len(keep))
    return len(read_rows(path))


class ResultsWriter:
    """Appends rows to ``results.jsonl``: one ``write`` + flush per complete line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, row: dict[str, Any]) -> None:
        row = {"schema_version": SCHEMA_VERSION, **row}
        self._f.write(json.dumps(row, default=_jsonable) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)


def write_run_json(out_dir: Path, info: dict[str, Any]) -> None:
    p = Path(out_dir) / "run.json"
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, default=_jsonable) + "\n")
    tmp.replace(p)


def load_frame(paths: Iterable[Path]):
    """All rows of one or more result dirs / files as a pandas DataFrame (run.json merged in)."""
    import pandas as pd

    frames = []
    for p in map(Path, paths):
        f = p / "results.jsonl" if p.is_dir() else p
        rows = read_rows(f)
        run_json = f.parent / "run.json"
        run = json.loads(run_json.read_text()) if run_json.exists() else {}
        df = pd.DataFrame(rows)
        df["run"] = str(f.parent)
        df["device_name"] = run.get("device_name")
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
