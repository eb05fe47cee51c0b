"""Whole-model efficiency: ``python -m attnbench run --level model --task T``.

Kernel speed-ups shrink inside a model: projections, MLPs and the optimizer step do not get
faster. For a task's skeleton at each n this package measures training steps/s, inference
tokens/s, peak memory, the share of step time inside attention, and the kernel alone on the
model's own attention shape; and, with ``--max-n``, the longest n each pattern trains under a
memory budget. One small module per job:

    inputs    what a task's skeleton takes (kind, vocabulary, classes), known without its data
    plan      settings -> the resolved run (task config, variants, n, budgets)
    probe     what runs in a probe's process: build, step, time, swap attention, the kernel alone
    swap      attention swapped for an identity of the same shape, or recorded
    child     the probe's process: the memory cap (what "OOM at budget B" means), the result file
    isolate   the parent's side: one fresh process per probe with a deadline
    maxn      the search over n per budget (pure; the report replays it over stored rows)
    runner    the parent: plan, probes, rows, resume, lock, progress
    schema    the model row: every field and its meaning (row_kind "model")
    lra       the Long Range Arena's published efficiency table, mapped to our patterns
    summary   the tables at the end of a run
    command   the CLI flags of ``run --level model``

Reports: :mod:`attnbench.report.model_level`.
"""
