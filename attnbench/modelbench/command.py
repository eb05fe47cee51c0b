"""``python -m attnbench run --level model``: the command line of a model-level run.

The run flags that mean the same at both levels (--variants, --seq-lens, --batch, --device,
--out, --resume, --timeout, --time-budget, --threads, --seed, --mem-budget-gb) keep their
meaning; the shape flags of kernel runs (--heads, --kv-heads, --head-dim, --causal, --mode) are
the task's skeleton's to set and are refused here, as the model-level flags are at the kernel
level, each with one line. ``key=value`` words override the task's config, as in ``train``
(``model.layers=2``). ``--resume`` continues the run in --out with the settings in its run.json.
"""
from __future__ import annotations

import datetime as dt
import os
import shlex
from pathlib import Path
from typing import Any

from attnbench.modelbench.plan import DEFAULTS, ModelBenchError

MODEL_FLAGS = {"task": "--task", "size": "--size", "tasks_dir": "--tasks-dir", "max_n": "--max-n",
               "search_only": "--search-only", "mem_budgets": "--mem-budgets", "n_cap": "--n-cap", "step_timeout": "--step-timeout"}
KERNEL_FLAGS = {"heads": "--heads", "kv_heads": "--kv-heads", "head_dim": "--head-dim", "causal": "--causal",
                "mode": "--mode", "extend": "--extend", "no_check": "--no-check"}
LEVELS = ("kernel", "model")


def add_arguments(p) -> None:
    """The model-level options of ``run`` (beside the kernel-level ones)."""
    from attnbench.train import tasks

    p.add_argument("--level", default="kernel", help="kernel: the attention call alone (the default); model: the "
                                                     "task's whole skeleton: training steps, inference, memory, "
                                                     "attention share (needs --task; its defaults: --seq-lens "
                                                     f"{DEFAULTS['seq_lens']}, --batch {DEFAULTS['batch_cpu']} on CPU "
                                                     f"and {DEFAULTS['batch_cuda']} on CUDA, --timeout "
                                                     f"{DEFAULTS['timeout_s']:g} per probe, --mem-budget-gb: every "
                                                     "probe's memory cap)")
    p.add_argument("--task", help=f"model level: the task whose skeleton is measured: {', '.join(tasks.task_names())}")
    p.add_argument("--size", help=f"model level: which skeleton of the task, small | paper (default: "
                                  f"{DEFAULTS['size']}: LRA's; text: 4 layers, 4 heads, emb 256, MLP 1024)")
    p.add_argument("--tasks-dir", help="model level: a directory of task YAMLs of your own")
    p.add_argument("--max-n", action="store_true", help="model level: also search the longest n each pattern can "
                                                        "train under each --mem-budgets budget")
    p.add_argument("--search-only", action="store_true", help="model level, with --max-n: only the search "
                                                              "(no timed grid over --seq-lens; its first n starts the search)")
    p.add_argument("--mem-budgets", metavar="GB,GB", help="model level: the budgets of --max-n (default: "
                                                          f"{','.join(f'{b:g}' for b in DEFAULTS['mem_budgets_gb'])})")
    p.add_argument("--n-cap", help=f"model level: --max-n probes no n above this (default: {DEFAULTS['n_cap']})")
    p.add_argument("--step-timeout", help="model level: a --max-n training step slower than this many seconds is a "
                                          f"timeout (default: {DEFAULTS['step_timeout_s']:g})")


def level(args) -> str:
    """--level; ``--resume --out DIR`` of a model-level run is that level without saying so."""
    from attnbench.results import read_run_json

    lv = getattr(args, "level", "kernel") or "kernel"
    if lv not in LEVELS:
        raise ModelBenchError(f"--level {lv!r}: allowed: {', '.join(LEVELS)}")
    if lv == "kernel" and getattr(args, "resume", None) and getattr(args, "out", None):
        if (read_run_json(Path(args.out)) or {}).get("kind") == "model":
            return "model"
    return lv


def refuse(args, flags: dict[str, str], why: str) -> None:
    given = [flag for key, flag in flags.items() if getattr(args, key, None) not in (None, False)]
    if given:
        raise ModelBenchError(f"{' '.join(given)}: {why}")


def _number(text: Any, flag: str, kind=int):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ModelBenchError(f"{flag} {text!r}: must be {'an integer' if kind is int else 'a number'}") from None


def settings_from_args(args) -> dict[str, Any]:
    """The run's settings (JSON) from the flags; a stored run's with --resume."""
    from attnbench.config import defaults
    from attnbench.results import read_run_json

    if args.resume:
        if not args.out:
            raise ModelBenchError("--resume needs --out DIR: the run directory to continue")
        info = read_run_json(Path(args.out)) or {}
        if info.get("kind") != "model":
            raise ModelBenchError(f"--out {args.out}: no model-level run to resume there (no run.json of kind 'model')")
        return {**info["settings"], "out": args.out}
    if not args.task:
        from attnbench.train import tasks

        raise ModelBenchError(f"--level model needs --task (one of: {', '.join(tasks.task_names())})")
    if args.dtype not in (None, "float32"):
        raise ModelBenchError(f"--dtype {args.dtype!r}: the model level trains in float32; allowed: float32")
    budgets = args.mem_budgets.split(",") if args.mem_budgets else DEFAULTS["mem_budgets_gb"]
    timing = dict(defaults()["timing"])
    if args.time_budget is not None:
        timing["budget_s"] = _number(args.time_budget, "--time-budget", float)
    return {
        "task": args.task, "size": args.size or DEFAULTS["size"], "overrides": list(args.overrides),
        "tasks_dir": str(Path(args.tasks_dir).resolve()) if args.tasks_dir else None,
        "variants": args.variants or DEFAULTS["variants"], "seq_lens": args.seq_lens or DEFAULTS["seq_lens"],
        "batch": _number(args.batch, "--batch") if args.batch is not None else None,
        "device": args.device or "auto", "seed": _number(args.seed, "--seed") if args.seed is not None else 0,
        "threads": _number(args.threads, "--threads") if args.threads is not None else None,
        "timeout_s": _number(args.timeout, "--timeout", float) if args.timeout is not None else DEFAULTS["timeout_s"],
        "timing": timing, "max_n": bool(args.max_n),
        "measure": not args.search_only,
        "mem_budgets_gb": [_number(b, "--mem-budgets", float) for b in budgets],
        "n_cap": _number(args.n_cap, "--n-cap") if args.n_cap is not None else DEFAULTS["n_cap"],
        "step_timeout_s": _number(args.step_timeout, "--step-timeout", float) if args.step_timeout is not None
        else DEFAULTS["step_timeout_s"],
        "mem_guard_gb": _number(args.mem_budget_gb, "--mem-budget-gb", float) if args.mem_budget_gb else None,
        "plugins": [str(Path(p).resolve()) for p in args.plugin],
        "out": args.out or str(Path("results") / "runs" / f"model-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"),
    }


def config_from_args(args):
    from attnbench.config import check_out, resolve_device
    from attnbench.harness.env import mem_available_bytes
    from attnbench.modelbench.plan import resolve

    refuse(args, KERNEL_FLAGS, "not used at --level model (the task's skeleton sets the shape; every probe "
                               "trains, infers and times the kernel fwd+bwd); drop them or use --level kernel")
    if getattr(args, "search_only", False) and not args.max_n:
        raise ModelBenchError("--search-only: only with --max-n (it skips the timed grid and runs the search alone)")
    settings = settings_from_args(args)
    if args.resume and args.plugin:
        settings["plugins"] = list(dict.fromkeys([*settings["plugins"], *(str(Path(p).resolve()) for p in args.plugin)]))
    bad = [o for o in settings["overrides"] if "=" not in o]
    if bad:
        raise ModelBenchError(f"unexpected argument {bad[0]!r}: overrides are key=value of the task's config "
                              "(e.g. model.layers=2)")
    device = resolve_device(settings["device"])
    if device.startswith("cuda"):  # as kernel runs: at least 10 timed calls on a GPU
        t = settings["timing"]
        t["min_repeats"] = max(10, int(t["min_repeats"]))
        t["max_repeats"] = max(t["min_repeats"], int(t["max_repeats"]))
    if settings["batch"] is None:
        settings["batch"] = DEFAULTS["batch_cuda" if device.startswith("cuda") else "batch_cpu"]
    check_out(settings["out"], bool(args.resume))
    threads = settings["threads"] or (os.cpu_count() or 1)
    available = 0.0 if device.startswith("cuda") else float(mem_available_bytes())
    if settings.get("mem_guard_gb") is None and available:  # fixed at the start: a resume keeps it
        settings["mem_guard_gb"] = round(DEFAULTS["mem_guard"] * available / 1e9, 2)
    return resolve(settings, device=device, threads=threads, available=available, resume=bool(args.resume))


def cmd_run_model(args) -> int:
    from attnbench.modelbench.runner import ModelRunner

    cfg = config_from_args(args)
    ModelRunner(cfg, command=shlex.join(["python", "-m", "attnbench", *args.argv])).run()
    return 0
