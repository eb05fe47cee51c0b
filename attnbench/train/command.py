"""``python -m attnbench train`` and ``python -m attnbench data``: the accuracy half of the CLI.

``train`` runs one job per (task, variant, parameter setting, seed), each isolated (see
:mod:`attnbench.train.runner`), appends one row per job and ends with the accuracy table.
``--variants all`` means every pattern at its default kernel: accuracy belongs to a pattern and
its parameters, not to a kernel (the other kernels of a pattern compute the same function).
A task's ``variant_params`` set the parameters it gives a variant (a window, a feature count);
the selection's own grid overrides them.
"""
from __future__ import annotations

import argparse
import datetime as dt
import difflib
import importlib
import inspect
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from attnbench.catalog import all_specs, load_plugin, select
from attnbench.registry import lookup
from attnbench.results import rows_file
from attnbench.train import runner, tasks


class TrainUsageError(ValueError):
    """A bad train/data argument: one line, exit 2."""


def _number(text: str, flag: str, kind=int):
    try:
        return kind(text)
    except ValueError:
        raise TrainUsageError(f"{flag} {text!r}: must be {'an integer' if kind is int else 'a number'}") from None

DEFAULT_SEEDS = "0"
DEFAULT_TIMEOUT_S = 3600.0

TRAIN_EXAMPLES = [
    "python -m attnbench train --task mqar --variants full,sliding_window,linear,performer --seeds 0,1,2",
    "python -m attnbench train --task listops --variants all --seeds 0,1,2 --out results/train/listops",
    "python -m attnbench train --task listops --variants 'sliding_window[window=16,64]' train.lr=3e-4",
    "python -m attnbench train --task text data.root=/data/aclImdb --size paper --variants all",
    "python -m attnbench train --task vision --variants full,swin model.arch=swin   # vit | swin | pvt",
    "python -m attnbench train --out results/train/listops --resume     # continue an interrupted run",
]
DATA_EXAMPLES = [
    "python -m attnbench data listops --out data/listops-small",
    "python -m attnbench data pathfinder32 --out data/pf32 --size paper --seed 1",
    "python -m attnbench train --task listops data.root=data/listops-small   # train on the files written",
]


def add_train_arguments(p: argparse.ArgumentParser, variants_help: str) -> None:
    """The train options; ``variants_help``: the CLI's text of the selection syntax."""
    p.add_argument("--task", help=f"comma list of tasks: {', '.join(tasks.task_names())}")
    p.add_argument("--variants", help=variants_help + "; 'all' and bare patterns mean each pattern's default "
                                                      "kernel (default: all)")
    p.add_argument("--seeds", help=f"comma list of training seeds (default: {DEFAULT_SEEDS})")
    p.add_argument("--size", help=f"{' | '.join(tasks.SIZES)} (default: small)")
    p.add_argument("--out", help="run directory (default: results/train/<UTC time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its own settings: jobs "
                                                         "with a row are kept, an interrupted job continues from "
                                                         "its last checkpoint")
    p.add_argument("--timeout", help=f"wall-clock limit per job in seconds (default: {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--threads", help="CPU threads per job (default: all cores)")
    p.add_argument("--tasks-dir", help=f"a directory of task YAMLs of your own (default: {tasks.TASKS_DIR})")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides of the task config (tasks/<task>.yaml at --size), e.g. train.steps=200 "
                        "train.lr=3e-4 model.positions=rotary data.root=/data/lra/listops-1000")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", help=f"one of: {', '.join(tasks.task_names())}")
    p.add_argument("--out", required=True, help="directory to write the splits into (release format)")
    p.add_argument("--size", default="small", help=" | ".join(tasks.SIZES))
    p.add_argument("--seed", default=None, help="the generator's seed (default: the task's)")


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
def _settings(args) -> dict[str, Any]:
    """The run's settings: from the flags, or, with --resume, from the run's run.json."""
    from attnbench.results import read_run_json

    if args.resume:
        if not args.out:
            raise TrainUsageError("train --resume needs --out (the run directory to continue)")
        info = read_run_json(Path(args.out))
        if not info or info.get("kind") != "train":
            raise TrainUsageError(f"--out {args.out}: no training run to resume there (no run.json of kind 'train')")
        for plugin in info["settings"].get("plugins") or []:
            if plugin not in {str(Path(p).resolve()) for p in args.plugin}:
                load_plugin(plugin)  # the run's own plugins, as when it started
        return {**info["settings"], "out": args.out}  # where it is now (a run directory may move)
    if not args.task:
        raise TrainUsageError("train needs --task (one of: " + ", ".join(tasks.task_names()) + ")")
    seeds = [_number(s, "--seeds") for s in (args.seeds or DEFAULT_SEEDS).split(",") if s.strip()]
    if not seeds or any(s < 0 for s in seeds):
        raise TrainUsageError(f"--seeds {args.seeds!r}: a comma list of integers >= 0")
    timeout = _number(args.timeout, "--timeout", float) if args.timeout else DEFAULT_TIMEOUT_S
    threads = _number(args.threads, "--threads") if args.threads else None
    if timeout <= 0 or (threads is not None and threads < 1):
        raise TrainUsageError(f"--timeout {timeout:g} / --threads {threads}: must be positive")
    tasks_dir = str(Path(args.tasks_dir).resolve()) if args.tasks_dir else None
    if tasks_dir and not Path(tasks_dir).is_dir():
        raise TrainUsageError(f"--tasks-dir {args.tasks_dir}: not a directory")
    out = args.out or f"results/train/{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    return {"tasks": [t.strip() for t in args.task.split(",") if t.strip()], "variants": args.variants or "all",
            "seeds": seeds, "size": args.size or "small", "overrides": list(args.overrides), "timeout_s": timeout,
            "threads": threads, "out": out, "tasks_dir": tasks_dir,
            "plugins": [str(Path(p).resolve()) for p in args.plugin]}


def train_selection(text: str) -> str:
    """'all' stands for every pattern (its default kernel), not every kernel."""
    patterns = sorted({s.pattern for s in all_specs() if s.family != "test"})
    items = [i.strip() for i in text.split(",")] if "[" not in text else [text]
    return ",".join(",".join(patterns) if i == "all" else i for i in items)


def plan_jobs(settings: dict[str, Any], configs: dict[str, dict]) -> list[runner.JobPlan]:
    """Every (task, variant, setting, seed) in order; params validated (ParamError: exit 2)."""
    plans = []
    selection = train_selection(settings["variants"])
    chosen = {c.spec.name for c in select(selection)}
    for name, cfg in configs.items():
        # the task's variant_params for the selected variants only (keyed by pattern or name)
        given = {k: v for k, v in (cfg.get("variant_params") or {}).items()
                 if any(k in (n, lookup(n).pattern) for n in chosen)}
        for choice in select(selection, given):
            for setting in choice.overrides() or [{}]:
                params = choice.spec.resolve_params(setting)
                plans += [runner.JobPlan(name, settings["size"], choice.spec, params, seed, cfg)
                          for seed in settings["seeds"]]
    return plans


def cmd_train(args) -> int:
    from attnbench.harness.env import git_state, host_environment, versions
    from attnbench.results import RunLock, write_run_json

    settings = _settings(args)
    configs = {t: tasks.load(t, settings["size"], settings["overrides"], settings.get("tasks_dir"))
               for t in settings["tasks"]}
    check_model_choices(configs)
    plans = plan_jobs(settings, configs)
    out = Path(settings["out"])
    if not args.resume and rows_file(out).exists():
        raise TrainUsageError(f"--out {out} holds a run already: continue it with --resume, or choose another --out")
    data = {}
    for t, c in configs.items():
        t0 = time.perf_counter()
        with Console(stderr=True).status(f"{t}: building the data once for every job ..."):  # transient
            data[t] = d = runner.build_data(c, out)
        print(f"{t}: {d.name}; {len(d.train)}/{len(d.val)}/{len(d.test)} samples, n = {d.seq_len} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out)
    lock.acquire("attnbench train " + " ".join(getattr(args, "argv", [])))
    try:
        env = {**host_environment(), **git_state(), "versions": versions()}
        write_run_json(out, {"kind": "train", "settings": settings, "environment": env,
                             "tasks": {t: {"version": c["version"], "config": c} for t, c in configs.items()}})
        paths = {t: runner.store_data(d, configs[t], out) for t, d in data.items()}
        done = runner.done_keys(out) if args.resume else set()
        todo = [p for p in plans if p.key() not in done]
        _run_all(todo, out, paths, settings, env, resume=bool(args.resume))
    finally:
        lock.release()
    from attnbench.train.summary import print_summary, write_outputs

    write_outputs(out)
    return print_summary(out)


def check_model_choices(configs: dict[str, dict]) -> None:
    """An unknown ``model.arch`` or a distillation teacher (``train.teacher``) that is not there:
    one line, exit 2, before any job."""
    from attnbench.models.config import ARCHS
    from attnbench.train.distill import TeacherError, read_teacher

    for cfg in configs.values():
        arch = cfg["model"].get("arch", "encoder")
        if arch not in ARCHS:
            close = difflib.get_close_matches(str(arch), ARCHS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TrainUsageError(f"model.arch {arch!r} not allowed{hint}; allowed: {', '.join(ARCHS)}")
        if cfg["train"].get("teacher"):
            try:
                read_teacher(cfg["train"]["teacher"])
            except TeacherError as e:
                raise TrainUsageError(str(e)) from None


def _run_all(todo, out: Path, paths: dict[str, Path], settings, env, resume: bool) -> None:
    from attnbench.train.progress import TrainProgress

    with TrainProgress(len(todo)) as bar:
        for plan in todo:
            bar.start(plan.job_id, int(plan.config["train"]["steps"]))
            row = runner.run_job(plan, out, paths[plan.task], timeout_s=settings["timeout_s"],
                                 threads=settings["threads"], resume=resume, env=env,
                                 plugins=tuple(settings.get("plugins") or ()), on_progress=bar.update)
            runner.append(out, row)
            bar.finish(row)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def cmd_data(args) -> int:
    """Write a task's generated splits in the release format."""
    cfg = tasks.load(args.task, args.size, [])
    knobs = {k: v for k, v in cfg["data"].items() if k != "_target_"}
    if knobs.get("root"):
        raise TrainUsageError(f"data {args.task}: the task reads release files ({knobs['root']}); nothing to generate")
    if args.seed is not None:
        knobs["seed"] = _number(args.seed, "--seed")
    module = cfg["data"]["_target_"].rsplit(".", 1)[0]
    write = getattr(importlib.import_module(module), "write", None)
    if write is None:
        raise TrainUsageError(f"data {args.task}: {module} has no release format to write; its data is built in "
                              f"memory by {cfg['data']['_target_']}") from None
    accepted = inspect.signature(write).parameters
    given = {k: v for k, v in knobs.items() if k in accepted}
    if "n" in accepted and "n_train" in knobs:  # one pool the loader splits (Pathfinder: 80/10/10)
        given["n"] = sum(int(knobs[k]) for k in ("n_train", "n_val", "n_test") if knobs.get(k))
    written = write(Path(args.out), **given)
    files = [written] if isinstance(written, (str, Path)) else list(written)
    print(f"{args.task} ({args.size}): wrote {', '.join(str(f) for f in files[:3])}{' ...' if len(files) > 3 else ''}; "
          f"read them back with "
          f"`python -m attnbench train --task {args.task} data.root={args.out}`")
    return 0
