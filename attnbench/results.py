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

from attnbench import schema


def declared_defaults() -> dict[str, dict]:
    """variant -> its declared parameter defaults (for upgrading old rows); {} if the registry
    cannot load (a report must not depend on every kernel importing)."""
    try:
        from attnbench.catalog import all_specs

        return {s.name: s.defaults for s in all_specs()}
    except Exception:  # noqa: BLE001
        return {}


def upgraded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in the current schema (older versions gain the fields they lack)."""
    if all(r.get("schema_version") == schema.SCHEMA_VERSION for r in rows):
        return [schema.upgrade(r) for r in rows]
    defaults = declared_defaults()
    return [schema.upgrade(r, defaults) for r in rows]


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
        """``row``: a complete row (``schema.make_row``)."""
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


def write_parquet(out_dir: Path) -> Path:
    """``results.parquet`` of every complete row of ``out_dir/results.jsonl`` (typed columns)."""
    return schema.to_parquet(upgraded(read_rows(Path(out_dir) / "results.jsonl")), Path(out_dir) / "results.parquet")
