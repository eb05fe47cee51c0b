"""``python -m attnbench compact DIR ...``: a finished run made fit to commit.

    python -m attnbench compact results/cpu-epyc-2core/stats-listops

The run's rows go to ``results.jsonl.gz`` (gzip level 9; no file name and mtime 0 in its header,
so compacting the same rows again gives the same bytes) and ``results.jsonl`` goes; the ``.gz``
is checked to decompress to the very bytes of the log first. ``results.parquet`` is rewritten
with the table of the rows' kind (:func:`attnbench.results.write_parquet`). Every reader takes
the ``.gz`` where ``results.jsonl`` is absent (:func:`attnbench.results.rows_file`); a command
that adds rows to the run expands it back first, and the run is compacted again after. A run
compacted already is compacted again from its ``.gz`` (same bytes) and its parquet rewritten.
"""
from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

from attnbench import results

LEVEL = 9  # the smallest gzip: the statistics runs' logs shrink about 9x


class CompactError(ValueError):
    """Bad input to ``compact``: one line naming the path and what is allowed."""


@dataclass(frozen=True)
class Compacted:
    run_dir: Path
    rows: int
    log_bytes: int  # the log's size, uncompressed
    gz_bytes: int
    parquet: tuple[Path, ...]


def add_arguments(p) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="finished run directories (results.jsonl + run.json)")


def gzipped(data: bytes) -> bytes:
    """``data`` as gzip with a header that names no file and no time: the same bytes every time."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=LEVEL, fileobj=buf, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def compact(run_dir: Path) -> Compacted:
    """Compact one run directory (held under its lock, so no run writes it meanwhile)."""
    run_dir = Path(run_dir)
    src = results.rows_file(run_dir)
    if not src.is_file():
        raise CompactError(f"{run_dir}: no {results.ROWS} (nor {results.COMPACTED}); give a run directory")
    lock = results.RunLock(run_dir)
    lock.acquire("python -m attnbench compact")
    try:
        data = results.read_bytes(src)
        log = data[: data.rfind(b"\n") + 1]  # a torn last line is no row (read_rows drops it too)
        packed = gzipped(log)
        if gzip.decompress(packed) != log:
            raise results.StoreError(f"{src}: its gzip does not read back the same; {run_dir} left as it was")
        dst = run_dir / results.COMPACTED
        tmp = dst.with_suffix(".gz.tmp")
        tmp.write_bytes(packed)
        tmp.replace(dst)
        if src != dst:
            src.unlink()
        results.write_parquet(run_dir)
    finally:
        lock.release()
    parquet = tuple(sorted(run_dir.glob("results*.parquet")))
    return Compacted(run_dir, len(results.read_rows(dst)), len(log), len(packed), parquet)


def cmd_compact(args) -> int:
    for d in args.dirs:
        c = compact(Path(d))
        print(f"{c.run_dir}: {c.rows} rows; {results.ROWS} {c.log_bytes / 1e6:.1f} MB -> {results.COMPACTED} "
              f"{c.gz_bytes / 1e6:.1f} MB; {', '.join(p.name for p in c.parquet)}")
    return 0
