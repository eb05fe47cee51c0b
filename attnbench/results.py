"""The results store: ``run.json`` once per run, ``results.jsonl`` one complete line per case.

Lines are appended and flushed as cases finish, so a run killed at any moment loses at most
the case in flight; a truncated last line (the kill landed mid-write) is dropped on read and
cut off before a resumed run appends. One writer per run directory: :class:`RunLock` holds an
exclusive ``flock`` on ``DIR/.lock`` (the kernel releases it however the holder dies), and the
file names the holder, so a second writer is refused with who holds it.

A finished run may be compacted for committing (``python -m attnbench compact``): its rows then
live in ``results.jsonl.gz`` alone. :func:`rows_file` names a run's rows file either way and
:func:`read_rows` reads both; a writer that appends to a compacted run first expands it back to
``results.jsonl`` (the rows keep one home). ``results.parquet`` holds the rows as typed columns,
each kind in its own table (:func:`write_parquet`): a run of one kind of rows has that file
alone; a run that mixes kinds (a sweep job's rows and its ``sweep_job`` row) writes the first
row's kind to ``results.parquet`` and every other kind to ``results.<kind>.parquet``, since the
kinds' tables disagree (a training row's ``job`` is a name, a sweep_job row's a number).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import gzip
import importlib
import json
import os
import socket
from pathlib import Path
from typing import Any

from attnbench import schema

LOCK_NAME = ".lock"
ROWS = "results.jsonl"
COMPACTED = ROWS + ".gz"
ROWS_SUFFIXES = (".jsonl", ".jsonl.gz")  # what a rows file given by path may be called
PARQUET = "results.parquet"
# the modules that register the builtin kinds of rows besides kernel rows (attnbench.schema.register_kind)
ROW_KIND_MODULES = ("attnbench.train.schema", "attnbench.modelbench.schema", "attnbench.stats.schema",
                    "attnbench.sweep.schema")


class StoreError(Exception):
    """The results directory refused (held by another run, a corrupt line, a failed write): one
    line naming the path and what to do; the CLI exits 1."""


class CorruptResults(StoreError, ValueError):
    """A results.jsonl line before the last is not JSON (the last may be torn by a kill)."""


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


def rows_file(run_dir: Path) -> Path:
    """The file holding a run directory's rows: ``results.jsonl``, or ``results.jsonl.gz`` where
    only that is there (a compacted run); ``results.jsonl`` where neither is (a new run's)."""
    plain, packed = Path(run_dir) / ROWS, Path(run_dir) / COMPACTED
    return packed if packed.is_file() and not plain.exists() else plain


def read_bytes(path: Path) -> bytes:
    """The text of a rows file, decompressed where it is a ``.gz``."""
    data = Path(path).read_bytes()
    return gzip.decompress(data) if Path(path).suffix == ".gz" else data


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Complete rows of a results.jsonl (a run's ``results.jsonl`` stands for its ``.gz`` where the
    run is compacted: :func:`rows_file`); a truncated or garbled last line is ignored."""
    path = Path(path)
    path = rows_file(path.parent) if path.name == ROWS else path
    if not path.exists():
        return []
    rows = []
    lines = read_bytes(path).split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # only the last line may be partial
                break
            raise CorruptResults(f"{path}: line {i + 1} is not valid JSON (only the last may be truncated)")
    return rows


def repair(path: Path) -> int:
    """Cut a partial last line off ``path``; returns the number of complete rows (a compacted
    run's rows are whole: nothing to cut)."""
    path = Path(path)
    if not path.exists():
        return len(read_rows(path))
    data = path.read_bytes()
    keep = data[: data.rfind(b"\n") + 1] if not data.endswith(b"\n") else data
    if keep != data:
        with open(path, "r+b") as f:
            f.truncate(len(keep))
    return len(read_rows(path))


def expand(run_dir: Path) -> bool:
    """A compacted run's ``results.jsonl.gz`` back to ``results.jsonl`` (the ``.gz`` removed), so
    rows can be appended; False where there was nothing to expand."""
    plain, packed = Path(run_dir) / ROWS, Path(run_dir) / COMPACTED
    if rows_file(run_dir) != packed:
        return False
    tmp = plain.with_suffix(".jsonl.tmp")
    try:
        tmp.write_bytes(read_bytes(packed))
        tmp.replace(plain)
        packed.unlink()
    except OSError as e:
        raise StoreError(f"{packed}: cannot expand it to {plain} to add rows ({e.strerror})") from None
    return True


class ResultsWriter:
    """Appends rows to ``results.jsonl``: one ``write`` + flush per complete line. A write the
    disk refuses (full, read-only) raises :class:`StoreError`; the rows before it are kept. A
    compacted run is expanded first (``expanded`` says so: compact it again when it is done)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.expanded = self.path.name == ROWS and expand(self.path.parent)
        try:
            self._f = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise StoreError(f"{self.path}: cannot open for appending ({e.strerror})") from None

    def append(self, row: dict[str, Any]) -> None:
        """``row``: a complete row (``schema.make_row``)."""
        try:
            self._f.write(json.dumps(row, default=_jsonable) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            self.close()  # a torn line, if any, is cut off by the next resume (``repair``)
            raise StoreError(f"{self.path}: cannot append a row ({e.strerror})") from None

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:  # the failed write's buffer: nothing more can be saved
            pass


class RunLock:
    """One writer per run directory: an exclusive ``flock`` on ``DIR/.lock``, released when the
    holder exits (however it dies: a lock left by a killed run blocks nothing). The file says
    who holds it (pid, host, start time, command) so a refused writer can name the holder."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK_NAME
        self._f = None

    def acquire(self, command: str) -> None:
        """Take the lock or raise :class:`StoreError` naming the holder."""
        try:
            f = open(self.path, "a+", encoding="utf-8")
        except OSError as e:
            raise StoreError(f"{self.path}: cannot create the lock file ({e.strerror})") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _holder(f.read())
            f.close()
            raise StoreError(f"--out {self.path.parent} is being written by another run ({holder}); wait for it to "
                             f"finish, or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}) + "\n")
        f.flush()
        self._f = f

    def release(self) -> None:
        if self._f is not None:
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None


def _holder(text: str) -> str:
    """'pid 123 on host, since 2025-01-01T00:00:00+00:00: attnbench run ...' from a lock file."""
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on {h['host']}, since {h['started_at']}: {h['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)


def read_run_json(out_dir: Path) -> dict[str, Any] | None:
    """``out_dir/run.json`` (None when there is none); :class:`StoreError` when it is not JSON."""
    p = Path(out_dir) / "run.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}); restore it, or start a new --out") from None


def write_run_json(out_dir: Path, info: dict[str, Any]) -> None:
    p = Path(out_dir) / "run.json"
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, default=_jsonable) + "\n")
    tmp.replace(p)


def row_kinds() -> dict[str, schema.RowKind]:
    """Every kind of row by name, the builtin kinds' modules imported (their import registers them)."""
    for module in ROW_KIND_MODULES:
        importlib.import_module(module)
    return schema.ROW_KINDS


def row_kind(name: str) -> schema.RowKind:
    """The kind of row ``name`` (the builtin kinds loaded only when it is not registered yet); an
    unknown name raises :class:`attnbench.schema.SchemaError`."""
    kinds = schema.ROW_KINDS if name in schema.ROW_KINDS else row_kinds()
    if name not in kinds:
        raise schema.SchemaError(f"row_kind {name!r}: not a kind of row this attnbench knows "
                                 f"({', '.join(kinds)}); upgrade attnbench")
    return kinds[name]


def write_parquet(out_dir: Path) -> Path:
    """``results.parquet`` of every complete row of the run in ``out_dir``, typed columns from the
    table of the rows' kind (kernel rows upgraded to the current schema first); where the run
    mixes kinds, the first row's kind there and each other kind in ``results.<kind>.parquet``.
    Returns ``results.parquet``; a ``results.<kind>.parquet`` of a kind no longer present goes."""
    out_dir = Path(out_dir)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in read_rows(rows_file(out_dir)):
        by_kind.setdefault(schema.kind_of(r), []).append(r)
    written = []
    for i, (name, rows) in enumerate(by_kind.items() or [(schema.KERNEL, [])]):
        path = out_dir / (PARQUET if i == 0 else f"results.{name}.parquet")
        rows = upgraded(rows) if name == schema.KERNEL else rows
        written.append(schema.to_parquet(rows, path, row_kind(name).fields))
    for stale in set(out_dir.glob("results.*.parquet")) - set(written):
        stale.unlink()
    return written[0]
