"""A sweep job's record, ``<job dir>/job.json``, and the sweep's view of all of them.

``job.json`` (written when the job starts, status ``running``, and again when it ends):
``command``, ``job`` (its number), ``argv`` (what ran: ``attnbench <argv>``), ``overrides``
(hydra's, what the job swept), ``swept`` (the same in the user's words), ``status`` (``ok`` or
a failure status of ``attnbench.vocab.STATUSES``), ``exit_code``, ``error`` (the command's
one-line error), ``wall_s``, ``started_at`` / ``ended_at`` (UTC), ``host``, ``pid``,
``launcher``, ``slot`` / ``cores`` / ``threads`` / ``slot_wait_s`` (:mod:`attnbench.sweep.cores`;
the wait for a free slot is not in ``wall_s``), ``rows_written``, ``log`` and ``attempts``
(earlier attempts of a resumed job, each with the ``sweep_job`` rows it left).
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from attnbench import results
from attnbench.sweep.schema import is_sweep_job_row, make_row

JOB_JSON = "job.json"
RUNNING = "running"  # job.json of a job not yet ended (or whose process died)


def read_job(job_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(job_dir) / JOB_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_job(job_dir: Path, record: dict[str, Any]) -> None:
    """job.json, replaced whole (never half written)."""
    tmp = Path(job_dir) / (JOB_JSON + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    tmp.replace(Path(job_dir) / JOB_JSON)


def data_rows(job_dir: Path) -> int:
    """Rows the command wrote into the job's results.jsonl (its sweep_job row not counted)."""
    return sum(not is_sweep_job_row(r) for r in results.read_rows(Path(job_dir) / "results.jsonl"))


def set_aside(job_dir: Path, before: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The job's earlier attempts, for its new job.json: the last one's record with the
    sweep_job rows it left, which leave results.jsonl (the command's own rows stay; a file left
    with none goes), so the rerun's command reads only its own rows."""
    if before is None:
        return []
    results.expand(job_dir)  # a compacted job's rows back in results.jsonl, which is rewritten below
    jsonl = Path(job_dir) / results.ROWS
    rows = results.read_rows(jsonl)
    failures = [r for r in rows if is_sweep_job_row(r)]
    if failures:
        keep = [r for r in rows if not is_sweep_job_row(r)]
        if keep:
            tmp = jsonl.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
            tmp.replace(jsonl)
        else:
            jsonl.unlink()
    last = {k: v for k, v in before.items() if k != "attempts"}
    return [*before.get("attempts", []), {**last, "sweep_job_rows": failures}]


def append_failure(job_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The job's sweep_job row, appended to its results.jsonl; returns it."""
    from attnbench.harness.env import git_state

    reasons = [r for r in (record.get("error"), f"exit code {record.get('exit_code')}") if r]
    row = make_row(command=record.get("command"), job=record.get("job"), overrides=record.get("overrides"),
                   argv=record.get("argv"), status=record["status"], reasons=reasons,
                   exit_code=record.get("exit_code"), wall_s=record.get("wall_s"),
                   started_at=record.get("started_at"), host=record.get("host"), git_sha=git_state().get("git_sha"))
    writer = results.ResultsWriter(Path(job_dir) / "results.jsonl")
    try:
        writer.append(row)
    finally:
        writer.close()
    return row


def _alive(record: dict[str, Any]) -> bool:
    """The job's process still runs (as far as this machine can tell: another host's is taken as
    gone; so is this process, the sweep, whose jobs have all returned when it looks)."""
    if record.get("host") != platform.node() or not record.get("pid") or record["pid"] == os.getpid():
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def settle(sweep_dir: Path, ended: bool = True) -> list[dict[str, Any]]:
    """Every job's record, by job number. When the launcher ``ended`` (every job returned), a job
    still ``running`` whose process is gone (killed: out of memory, a time limit, a node lost)
    becomes a ``crash`` with its sweep_job row; otherwise (the launcher itself failed, Ctrl-C)
    such jobs may still be running elsewhere and stay as they are."""
    out = []
    for f in Path(sweep_dir).glob(f"*/{JOB_JSON}"):
        record = read_job(f.parent)
        if record is None:
            continue
        if ended and record.get("status") == RUNNING and not _alive(record):
            record.update(status="crash", error="the job's process ended before the job did (killed: out of "
                                                "memory, a time limit or a lost node); see its job.log")
            write_job(f.parent, record)
            append_failure(f.parent, record)
        out.append({**record, "dir": str(f.parent)})
    return sorted(out, key=lambda r: (r.get("job") is None, r.get("job") or 0, r["dir"]))
