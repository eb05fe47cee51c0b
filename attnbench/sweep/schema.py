"""One definition of a sweep job's row: a job of a hydra multirun that did not finish.

A job whose command exits non-zero (bad input, an exception) or whose process died appends one
row with ``row_kind = "sweep_job"`` to its own ``results.jsonl``, next to whatever rows the
command wrote before it stopped, so a report of the sweep directory lists it with its reason.
A job that ends well writes none (its ``job.json`` says ok). Readers of kernel, training and
statistics rows set these rows apart (:func:`is_sweep_job_row`); a resumed job moves its earlier
attempt's row into ``job.json`` before it runs again, so a job's file holds at most one.
"""
from __future__ import annotations

from attnbench.schema import Field, register_kind, shared

SCHEMA_VERSION = 1
ROW_KIND = "sweep_job"

ROWS = register_kind(ROW_KIND, "sweep_schema_version", SCHEMA_VERSION, (
    Field("command", "str", "run | train | stats"),
    Field("job", "int", "the job's number in the sweep (its directory's name)"),
    Field("overrides", "list[str]", "the job's hydra overrides: what it swept (+flag.seed=1, +set.train.lr=0.001)"),
    Field("argv", "list[str]", "the command line the job ran: attnbench <argv>"),
    Field("status", "str", "vocab.STATUSES: error (the command exited non-zero), crash (an exception escaped it, "
                           "or the job's process died)"),
    Field("reasons", "list[str]", "the command's one-line error and its exit code"),
    Field("exit_code", "int", "the command's exit status (None: the process died)"),
    Field("wall_s", "float", "wall time of the job (s)"),
    Field("started_at", "str", "UTC start time"),
    Field("host", "str", "the machine that ran it"),
    *shared("git_sha"),
), "sweep_job row")
FIELDS = ROWS.fields
NAMES = ROWS.names

make_row = ROWS.make_row  # a complete sweep_job row: every field in order, None where not given
is_sweep_job_row = ROWS.is_row
