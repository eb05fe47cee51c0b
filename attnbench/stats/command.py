"""``python -m attnbench stats``: what each variant's attention does, per layer and head.

    python -m attnbench stats --variants performer,lsh --random --seq-len 256,1024
    python -m attnbench stats --checkpoint results/.../jobs/listops-small-full@sdpa-s0 \\
        --variants own,sliding_window,longformer,bigbird
    python -m attnbench stats --task vision --variants full,swin model.arch=vit

Sources (``attnbench.stats.sources``): ``--random`` (seeded q, k, v of one layer), ``--task T``
(the task's validation inputs through its skeleton at initialization, one model per variant),
``--checkpoint PATH`` (a trained job; ``own`` in --variants is its variant; repeatable). Rows go
to ``--out`` (``results.jsonl``, ``run.json`` of kind ``stats``, ``results.parquet``), a
one-table summary to stdout. An earlier stats run in ``--out`` gains the rows; a compacted one
(``results.jsonl.gz``, ``python -m attnbench compact``) is expanded back to ``results.jsonl``
first, and the command ends by saying to compact it again.
"""
from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path
from typing import Any, Iterator

from attnbench import catalog, results
from attnbench.harness import env
from attnbench.report.console import make_console, plain
from attnbench.stats import base, runner, sources
from attnbench.stats.schema import make_row

DEFAULTS = {"seq_len": 256, "batch": 2, "heads": 4, "head_dim": 32, "input": "sharp", "seed": 0,
            "checkpoint_batch": 16, "size": "small"}
OWN = "own"


class StatsError(ValueError):
    """Bad input to ``stats``: one line naming the value and what is allowed."""


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--random", action="store_true", help="seeded random q, k, v of one layer (--input, --heads, "
                                                           "--head-dim, --batch, --causal)")
    src.add_argument("--checkpoint", action="append", metavar="PATH",
                     help="a trained job (<run>/jobs/<job>) on its task's validation inputs; repeatable")
    src.add_argument("--task", help="the task's validation inputs through its skeleton at initialization")
    p.add_argument("--variants", help="variants as for run (with [param=...] grids); 'own': the checkpoint's "
                                      f"(default: {OWN} with --checkpoint, else full)")
    p.add_argument("--seq-len", help=f"n, comma separated (default: {DEFAULTS['seq_len']} for --random; the "
                                     "task's own length otherwise, where shorter n cut the inputs)")
    p.add_argument("--stats", help="statistics to compute, comma separated (default: all of "
                                   "attnbench.stats.STATISTICS)")
    p.add_argument("--input", help=f"--random: gaussian | sharp (default: {DEFAULTS['input']})")
    p.add_argument("--heads", help=f"--random: heads (default: {DEFAULTS['heads']})")
    p.add_argument("--head-dim", help=f"--random: head dim (default: {DEFAULTS['head_dim']})")
    p.add_argument("--batch", help=f"inputs averaged over (default: {DEFAULTS['batch']} random, "
                                   f"{DEFAULTS['checkpoint_batch']} task/checkpoint)")
    p.add_argument("--causal", action="store_true", help="--random: causal attention")
    p.add_argument("--size", help=f"--task: small | paper (default: {DEFAULTS['size']})")
    p.add_argument("--seed", help=f"seed of the inputs and of a fresh model (default: {DEFAULTS['seed']})")
    p.add_argument("--out", help="run directory (default: results/runs/stats-<time>)")
    p.add_argument("overrides", nargs="*", help="--task: overrides of the task's config (model.arch=vit)")


def _int(text: Any, flag: str, default: int, minimum: int = 1) -> int:
    if text is None:
        return default
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise StatsError(f"{flag} {text!r}: must be an integer") from None
    if v < minimum:
        raise StatsError(f"{flag} {v}: must be at least {minimum}")
    return v


def _seq_lens(text: str | None) -> list[int | None]:
    if not text:
        return [None]
    return [_int(t, "--seq-len", 0) for t in text.split(",")]


def _stats(text: str | None) -> list[base.Statistic]:
    if not text:
        return list(base.STATISTICS.values())
    try:
        return [base.lookup(t.strip()) for t in text.split(",") if t.strip()]
    except KeyError as e:
        raise StatsError(str(e.args[0])) from None


def _settings(text: str, own: str | None) -> list[runner.Setting]:
    """--variants into settings; 'own' is the model's variant."""
    items = [t.strip() for t in text.split(",")]
    if OWN in items and own is None:
        raise StatsError("--variants own: only with --checkpoint (the checkpoint's own variant)")
    text = ",".join(own if t == OWN else t for t in items) if own else text
    out = []
    for ch in catalog.select(text):
        out += [runner.Setting(ch.spec, o) for o in ch.overrides()]
    return out


def plan(args) -> Iterator[tuple[sources.Source | Exception, list[runner.Setting], dict[str, Any]]]:
    """(source or why it failed, settings, what the rows say of it) per input, lazily."""
    seed = _int(args.seed, "--seed", DEFAULTS["seed"], 0)
    if args.checkpoint:
        batch = _int(args.batch, "--batch", DEFAULTS["checkpoint_batch"])
        for path in args.checkpoint:
            for n in _seq_lens(args.seq_len):
                try:
                    src = sources.checkpoint_source(path, n, batch=batch, seed=seed)
                except sources.SourceError:
                    raise
                except Exception as e:  # noqa: BLE001 - an input that fails is its rows
                    yield e, [], {"source": "checkpoint", "input": path, "seq_len": n}
                    continue
                yield src, _settings(args.variants or OWN, src.model_variant), {}
    elif args.task:
        batch = _int(args.batch, "--batch", DEFAULTS["checkpoint_batch"])
        for st in _settings(args.variants or "full", None):
            for n in _seq_lens(args.seq_len):
                try:
                    src = sources.task_source(args.task, st.spec.name, n, size=args.size or DEFAULTS["size"],
                                              overrides=list(args.overrides), batch=batch, seed=seed)
                except sources.SourceError:
                    raise
                except Exception as e:  # noqa: BLE001
                    yield e, [st], {"source": "task", "input": args.task, "seq_len": n}
                    continue
                yield src, [st], {}
    else:
        batch = _int(args.batch, "--batch", DEFAULTS["batch"])
        heads, d = _int(args.heads, "--heads", DEFAULTS["heads"]), _int(args.head_dim, "--head-dim", DEFAULTS["head_dim"])
        settings = _settings(args.variants or "full", None)
        for n in _seq_lens(args.seq_len or str(DEFAULTS["seq_len"])):
            yield sources.random_source(n, heads=heads, head_dim=d, batch=batch, kind=args.input or DEFAULTS["input"],
                                        seed=seed, causal=bool(args.causal)), settings, {}


def failed_rows(exc: Exception, settings: list[runner.Setting], where: dict[str, Any]) -> list[dict[str, Any]]:
    """An input that could not be read or run: one row per setting (or one) with why."""
    from attnbench.harness.failures import classify

    status, reasons = classify(exc)
    names = [s.spec.name for s in settings] or [None]
    return [make_row(**where, variant=n, status=status, reasons=reasons) for n in names]


def image_row(src: sources.Source) -> dict[str, Any] | None:
    """The first input image (``stat='input'``), for maps drawn over it."""
    if src.image is None:
        return None
    img = src.image[0] if src.image.shape[0] == 1 or bool((src.image[0] == src.image).all()) else src.image
    return make_row(source=src.kind, input=src.input, checkpoint_sha=src.checkpoint_sha, task=src.task,
                    arch=src.arch, model_variant=src.model_variant, seq_len=src.seq_len, stat="input",
                    column="image", series=[round(float(x), 4) for x in img.reshape(-1)],
                    series_shape=list(img.shape), status="ok", device="cpu", seed=src.seed)


def cmd_stats(args) -> int:
    from attnbench.stats import summary

    stats = _stats(args.stats)
    out = Path(args.out or Path("results") / "runs" / f"stats-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}")
    command = shlex.join(["python", "-m", "attnbench", *getattr(args, "argv", [])])
    info = _open_run(out, command, args)
    lock = results.RunLock(out)
    lock.acquire(command)
    console = make_console(stderr=True)
    writer = results.ResultsWriter(out / results.ROWS)
    rows: list[dict[str, Any]] = []
    try:
        for src, settings, where in plan(args):
            if isinstance(src, Exception):
                new = failed_rows(src, settings, where)
            else:
                new = [r for r in [image_row(src)] if r is not None]
                for st in settings:
                    console.print(plain(f"stats {src.kind} {src.input}: {st.spec.name}"
                                        f"{'[' + st.label + ']' if st.label else ''} n={src.seq_len}"))
                    new += runner.setting_rows(st, src, stats, git_sha=info.get("git_sha"),
                                               seed=_int(args.seed, "--seed", 0, 0))
            for r in new:
                writer.append(r)
            rows += new
    finally:
        writer.close()
        lock.release()
    results.write_parquet(out)
    summary.print_summary(rows, make_console())
    console.print(plain(f"{len(rows)} rows in {out / results.ROWS}"))
    if writer.expanded:
        console.print(plain(f"{out} was compacted: its {results.COMPACTED} was expanded to {results.ROWS} to add "
                            f"these rows; compact it again before committing: python -m attnbench compact {out}"))
    return 0


def _open_run(out: Path, command: str, args) -> dict[str, Any]:
    """run.json of ``out``: a new stats run, or an earlier one that this command adds rows to
    (its commands listed in order); StatsError for a directory holding another kind of run."""
    from attnbench.config import check_out

    check_out(str(out), False)
    info = results.read_run_json(out)
    if info is not None and info.get("kind") != "stats":
        raise StatsError(f"--out {out}: holds a run of kind {info.get('kind') or 'kernel'!r}; give a new directory "
                         f"or one of an earlier stats run (rows are added to it)")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    if info is None:
        info = {"kind": "stats", **env.host_environment(), "started_at": now, "commands": []}
    info["commands"] = [*info.get("commands", []), {"command": command, "at": now, "settings": _settings_json(args),
                                                    **env.git_state()}]
    info["git_sha"] = env.git_state().get("git_sha")
    results.write_run_json(out, info)
    return info


def _settings_json(args) -> dict[str, Any]:
    keys = ("random", "checkpoint", "task", "variants", "seq_len", "stats", "input", "heads", "head_dim", "batch",
            "causal", "size", "seed", "out", "overrides")
    return {k: getattr(args, k, None) for k in keys}
