"""``python -m attnbench``: one CLI, one subcommand per job (list, run, check, train, data, report,
compare, stats, compact).

Results and tables go to stdout, progress and logs to stderr. Every failure is one line on
stderr naming the value or path and what to do: exit 2 for bad input (nothing is written), 1
for the environment (a path that cannot be written, a directory another run holds, a corrupt
results file), 130 for Ctrl-C (the worker is killed, the line says how to resume); ``--debug``
prints the traceback too. Every subcommand that takes variants reads the same selection syntax
(``attnbench.params``).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import traceback
from pathlib import Path

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # is_available() without a CUDA context

EXIT_ENVIRONMENT, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(Exception):
    pass


VARIANTS_HELP = ("all | names | bare patterns | globs, comma separated, each with an optional parameter grid in "
                 "brackets: 'full@*,mqa', 'sliding_window@blocked[window=64,256,1024]', "
                 "'bigbird[block=32,64,random_blocks=0,3]' (quote it: brackets are shell globs)")

EXAMPLES = {
    "attnbench": ["python -m attnbench list", "python -m attnbench run --variants all --seq-lens 512..16384",
                  "python -m attnbench report results/runs/mine --out reports/mine",
                  "python -m attnbench COMMAND --help     # each command's options, defaults and examples"],
    "list": ["python -m attnbench list", "python -m attnbench list --json > variants.json",
             "python -m attnbench list --device cuda --dtype bfloat16    # what a GPU would run, from any machine"],
    "run": ["python -m attnbench run --variants all --seq-lens 512..16384 > summary.txt",
            "python -m attnbench run --variants 'sliding_window@blocked[window=64,256]' --seq-lens 4096 --out results/runs/w",
            "python -m attnbench run --out results/runs/w --resume                          # continue a stopped run",
            "python -m attnbench run --out results/runs/w --extend --seq-lens 4096,8192     # add cases; run.json records both grids",
            "python -m attnbench run --level model --task text --variants full,sliding_window,linear --seq-lens 1024..4096",
            "python -m attnbench run --level model --task text --variants all --max-n --mem-budgets 4,8,16"],
    "check": ["python -m attnbench check 'full@*' --quick",
              "python -m attnbench check mine@blocked --plugin my_kernel.py",
              "python -m attnbench check --device cuda --dtype bfloat16 --dtype float16"],
    "report": ["python -m attnbench report results/runs/a --out reports/a",
               "python -m attnbench report results/runs/a results/runs/b --baseline full@flash",
               "python -m attnbench report results/runs/mine --plugin my_kernel.py     # a plugin's metadata"],
    "stats": ["python -m attnbench stats --random --variants 'performer[nb_features=16,64,256],lsh' --seq-len 256,1024",
              "python -m attnbench stats --checkpoint RUN/jobs/listops-small-full@sdpa-s0 --variants own,sliding_window,bigbird",
              "python -m attnbench stats --task vision --variants full,swin model.arch=vit model.pool=mean --out results/runs/s",
              "python -m attnbench report results/runs/s --out reports/s     # heatmaps, rollout, coverage and error"],
    "compact": ["python -m attnbench compact results/runs/s     # results.jsonl -> results.jsonl.gz, for committing",
                "python -m attnbench compact results/cpu-epyc-2core/stats-*"],
    "compare": ["python -m attnbench compare results/runs/base results/runs/new",
                "python -m attnbench compare base new --threshold 20% --variants 'sliding_window@*' --csv cmp.csv",
                "python -m attnbench compare base new --plugin my_kernel.py"],
}


def examples(cmd: str) -> str:
    from attnbench.train.command import DATA_EXAMPLES, TRAIN_EXAMPLES

    lines = {**EXAMPLES, "train": TRAIN_EXAMPLES, "data": DATA_EXAMPLES}[cmd]
    return "examples:\n" + "\n".join(f"  {e}" for e in lines)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default in its help (unless the text says it already); examples kept as laid out."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line, exit 2 (argparse prints the whole usage)
        raise UsageError(message if self.prog == "attnbench" else f"{self.prog.split(' ', 1)[-1]}: {message}")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="import a Python file that registers variants (repeatable; report and compare read "
                        "its variants' metadata)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="on an error, print the traceback as well as the one-line message")


def _sub(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=examples(name),
                       formatter_class=HelpFormatter)
    _add_common(p)
    return p


def _run_arguments(p: argparse.ArgumentParser) -> None:
    from attnbench.config import SEQ_LENS_RULE, defaults
    from attnbench.harness.allocator import ALLOCATORS
    from attnbench.modelbench.command import add_arguments as model_arguments

    d = defaults()
    p.add_argument("--variants", help=f"{VARIANTS_HELP} (default: {d['variants']})")
    p.add_argument("--seq-lens", metavar="A..B|LIST", help=f"{SEQ_LENS_RULE} (default: {d['seq_lens']})")
    p.add_argument("--batch", help=f"batch size B (default: {d['batch']})")
    p.add_argument("--heads", help=f"query heads H (default: {d['heads']})")
    p.add_argument("--kv-heads", help="K/V heads; fewer than --heads: MQA/GQA for every full kernel "
                                      "(default: as --heads)")
    p.add_argument("--head-dim", help=f"head dimension D (default: {d['head_dim']})")
    p.add_argument("--dtype", help=f"float32 | float64 | bfloat16 | float16 (default: {d['dtype']})")
    p.add_argument("--device", help=f"cpu | cuda | cuda:N | auto (default: {d['device']})")
    p.add_argument("--causal", action="store_true", default=None, help="causal masking, bottom-right aligned "
                                                                       "(default: not causal)")
    p.add_argument("--mode", help=f"comma list of fwd, bwd, fwd+bwd, decode (default: {d['modes']})")
    p.add_argument("--out", help="run directory (default: results/runs/<UTC time>)")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --out with its own settings: finished cases are kept, the rest run")
    p.add_argument("--extend", action="store_true",
                   help="resume --out with a different grid: its cases are added and run.json records every grid")
    p.add_argument("--timeout", help=f"wall-clock limit per case in seconds (default: {d['timeout_s']})")
    p.add_argument("--mem-budget-gb", help="skip cases predicted to need more memory than this "
                                           "(default: 80%% of the memory available at start)")
    p.add_argument("--time-budget", help=f"seconds of timed repeats per case (default: {d['timing']['budget_s']})")
    p.add_argument("--threads", help="CPU threads per worker (default: all cores)")
    p.add_argument("--allocator", help=f"CPU memory allocator of the workers: {' | '.join(ALLOCATORS)} "
                                       f"(default: {d['allocator']}; attnbench/harness/allocator.py says what each does)")
    p.add_argument("--seed", help=f"seed of the inputs (default: {d['seed']})")
    p.add_argument("--no-check", action="store_true", help="skip the sampled-row check before timing")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="hydra overrides of attnbench/conf/bench.yaml (every key, its default and type), e.g. "
                        "timing.budget_s=2 or '+params.sliding_window.window=[64,256]' (a parameter grid); at "
                        "--level model: overrides of the task's config, e.g. model.layers=2")
    model_arguments(p)


def build_parser() -> Parser:
    from attnbench import __version__
    from attnbench.compact import add_arguments as compact_arguments
    from attnbench.compare import add_arguments as compare_arguments
    from attnbench.report.build import add_arguments as report_arguments
    from attnbench.stats.command import add_arguments as stats_arguments
    from attnbench.train.command import add_data_arguments, add_train_arguments

    ap = Parser(prog="attnbench", description="Benchmark and analysis suite for efficient attention.",
                epilog=examples("attnbench"), formatter_class=HelpFormatter)
    ap.add_argument("--version", action="version", version=f"attnbench {__version__}")
    ap.add_argument("--debug", action="store_true", help="on an error, print the traceback as well")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=Parser, metavar="COMMAND")

    p = _sub(sub, "list", "every registered variant, its metadata and availability on a device")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default="auto", help="availability for this device: cpu | cuda | cuda:N | auto "
                                                    "(a CUDA device need not be present)")
    p.add_argument("--dtype", default="float32", help="availability for this dtype")
    _run_arguments(_sub(sub, "run", "time and memory of variants over a grid of sequence lengths"))
    p = _sub(sub, "check", "correctness of variants against the dense reference")
    p.add_argument("variants", nargs="*", default=["all"],
                   help=VARIANTS_HELP + " (default: all; patterns at their defaults and their small check settings)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--dtype", action="append", help="dtypes to check, repeatable (default: float32 and float64 on CPU)")
    p.add_argument("--quick", action="store_true", help="a smaller grid of shapes")
    p.add_argument("--no-grad", action="store_true", help="outputs only")
    add_train_arguments(_sub(sub, "train", "accuracy: train variants inside a task's model skeleton, one isolated "
                                           "job per (task, variant, seed)"), VARIANTS_HELP)
    add_data_arguments(_sub(sub, "data", "write a task's generated splits in its release format"))
    report_arguments(_sub(sub, "report", "tables (Markdown, LaTeX, CSV) and figures from stored results; "
                                         "never re-measures"))
    compare_arguments(_sub(sub, "compare", "regression verdicts between two runs: slower beyond a threshold, "
                                           "or broken"))
    stats_arguments(_sub(sub, "stats", "attention statistics per layer and head (entropy, distance, spectrum, "
                                       "rollout; error, KL and coverage against exact softmax) of variants on "
                                       "random inputs, a task or a trained checkpoint"))
    compact_arguments(_sub(sub, "compact", "a finished run made fit to commit: its rows gzipped deterministically "
                                           "(results.jsonl.gz, read like results.jsonl), its parquet rewritten"))
    return ap


_INT_FLAGS = {"batch": "--batch", "heads": "--heads", "kv_heads": "--kv-heads",
              "head_dim": "--head-dim", "threads": "--threads", "seed": "--seed"}
_FLOAT_FLAGS = {"timeout": ("timeout_s", "--timeout"), "mem_budget_gb": ("mem_budget_gb", "--mem-budget-gb")}


def _number(text: str, flag: str, kind=int):
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"{flag} {text!r}: must be {what}") from None


def _flags_into(raw: dict, args) -> None:
    """The run flags given on the command line, over the composed config."""
    for key in ("variants", "seq_lens", "dtype", "device", "out", "allocator"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    for key, flag in _INT_FLAGS.items():
        if getattr(args, key) is not None:
            raw[key] = _number(getattr(args, key), flag)
    for key, (cfg_key, flag) in _FLOAT_FLAGS.items():
        if getattr(args, key) is not None:
            raw[cfg_key] = _number(getattr(args, key), flag, float)
    if args.time_budget is not None:
        raw["timing"]["budget_s"] = _number(args.time_budget, "--time-budget", float)
    if args.mode is not None:
        raw["modes"] = args.mode
    if args.causal:
        raw["causal"] = True
    if args.resume or args.extend:
        raw["resume"] = True
    if args.no_check:
        raw["check"] = False


def run_config(args):
    from attnbench.config import compose, validate
    from attnbench.results import read_run_json

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise UsageError(f"unexpected argument {bad[0]!r}: overrides are key=value (see attnbench/conf/bench.yaml)")
    base = None
    if (args.resume or args.extend) and args.out:
        base = (read_run_json(Path(args.out)) or {}).get("config")  # the stored run's settings
    raw = compose(list(args.overrides), base)
    _flags_into(raw, args)
    raw["plugins"] = list(dict.fromkeys([*(raw.get("plugins") or []), *args.plugin]))
    return validate(raw, extend=bool(args.extend))


def _list_rows(device: str, dtype: str) -> list[tuple]:
    from attnbench.case import DTYPES, Shape
    from attnbench.catalog import all_specs
    from attnbench.config import ConfigError

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: allowed: {', '.join(DTYPES)}")
    shape = Shape(batch=1, heads=8, kv_heads=8, seq_len=1024, kv_len=1024, head_dim=64, dtype=dtype, device=device)
    rows = []
    for s in all_specs():
        d = s.describe()
        d["reasons_here"] = s.not_supported_reasons(shape)
        d["available_here"] = not d["reasons_here"]
        rows.append((s, d))
    return rows


def cmd_list(args) -> int:
    """A table readable in 100 columns: one line per variant; then parameters and what cannot run."""
    from rich import box
    from rich.table import Table

    from attnbench.config import resolve_device
    from attnbench.params import format_value
    from attnbench.report.console import cannot_run_line, make_console, plain

    device = resolve_device(args.device, present=False)
    rows = _list_rows(device, args.dtype)
    if args.json:
        print(json.dumps([d for _, d in rows], indent=2, default=str))
        return 0
    absent = device.startswith("cuda") and resolve_device("auto") == "cpu"
    t = Table(title=f"attnbench variants: availability on {device}, {args.dtype}"
                    f"{' (as declared: this machine has no CUDA device)' if absent else ''}",
              box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title_justify="left")
    for c in ("variant", "family", "exact", "time", "memory", "here"):
        t.add_column(c, no_wrap=c != "time")
    by_params: dict[str, list[str]] = {}  # one line per parameter set: a pattern's kernels share theirs
    for s, d in rows:
        t.add_row(d["name"], d["family"], "yes" if d["exact"] else "approx", d["time"], d["memory"],
                  "yes" if d["available_here"] else "no")
        p = " ".join(f"{k}={format_value(v)}" for k, v in s.defaults.items())
        if p:
            by_params.setdefault(p, []).append(d["name"])
    console = make_console(width=100)
    console.print(t)
    console.print(plain("parameters and their defaults (set them as variant[key=value,...]):"))
    for p, names in by_params.items():
        console.print(plain(f"  {', '.join(names)}: {p}"))
    cannot = {d["name"]: "; ".join(d["reasons_here"]) for _, d in rows if not d["available_here"]}
    if cannot:
        console.print(plain(cannot_run_line(cannot, f"{device} {args.dtype}")))
    return 0


def cmd_run(args) -> int:
    from attnbench.bench import run_benchmark
    from attnbench.modelbench.command import MODEL_FLAGS, cmd_run_model, level, refuse

    if level(args) == "model":
        return cmd_run_model(args)
    refuse(args, MODEL_FLAGS, "only with --level model (the task's whole skeleton); the kernel level times the "
                              "attention call alone")
    cfg = run_config(args)
    run_benchmark(cfg, command=shlex.join(["python", "-m", "attnbench", *args.argv]))
    return 0


def _rel_err_cell(spec, device: str, dtype: str, params: dict, status) -> str:
    """rel_err of an approximate variant vs exact softmax at n = 1024 (gaussian / sharp inputs)."""
    from attnbench.approx import REL_ERR_N, rel_errors
    from attnbench.case import Shape

    for causal in (False, True):
        sh = Shape(batch=1, heads=8, kv_heads=8, seq_len=REL_ERR_N, kv_len=REL_ERR_N, head_dim=64,
                   dtype=dtype, device=device, causal=causal)
        if not spec.not_supported_reasons(sh, params):
            status.update(f"{spec.name}: relative error at n={REL_ERR_N} ({'causal' if causal else 'not causal'})")
            r = rel_errors(spec, sh, params)
            if r.get("rel_err") is None:
                return f"failed: {r.get('rel_err_failed', '?')[:60]}"
            return f"{r['rel_err']:.3g} / {r['rel_err_sharp']:.3g}" + (" (causal)" if causal else "")
    return "n/a here"


def _check_one(spec, setting: dict, shapes, grads: bool, status) -> dict:
    """Counts, worst error ratio and the first problem of one variant at one parameter setting."""
    from attnbench.check import check_case

    counts = {"ok": 0, "incorrect": 0, "error": 0, "oom": 0, "unsupported": 0}
    worst, problem = 0.0, ""
    for sh in shapes:
        status.update(f"{spec.name} {setting or ''} {sh.dtype} N={sh.seq_len} M={sh.kv_len} causal={sh.causal} "
                      f"kv_heads={sh.kv_heads}")
        r = check_case(spec, sh, grads=grads, params=setting)
        counts[r.status] = counts.get(r.status, 0) + 1
        worst = max(worst, r.worst_ratio)
        if r.status in ("incorrect", "error", "oom") and not problem:
            problem = f"{sh.dtype} N={sh.seq_len} M={sh.kv_len} causal={sh.causal} hkv={sh.kv_heads}: {r.reasons[0][:120]}"
    return {"counts": counts, "worst": worst, "problem": problem}


def cmd_check(args) -> int:
    from rich.table import Table

    from attnbench.case import DTYPES
    from attnbench.catalog import select
    from attnbench.check import check_settings, shapes_for, standard_shapes
    from attnbench.config import ConfigError, resolve_device
    from attnbench.params import label
    from attnbench.report.console import make_console

    device = resolve_device(args.device)
    for d in args.dtype or []:
        if d not in DTYPES:
            raise ConfigError(f"--dtype {d!r}: allowed: {', '.join(DTYPES)}")
    choices = select(args.variants)
    shapes = standard_shapes(device, tuple(args.dtype) if args.dtype else None, args.quick)
    console = make_console()
    t = Table(title=f"attnbench check on {device}: outputs{'' if args.no_grad else ' and gradients'} vs the fp64 dense "
                    "definition (approximate variants: vs their own dense definition; rel_err vs exact attention at n=1024)")
    for c in ("variant", "ok", "incorrect", "error", "unsupported", "worst err / allowed", "rel_err gauss / sharp",
              "first problem"):
        t.add_column(c)
    failed = False
    with make_console(stderr=True).status("checking ...") as status:  # progress on stderr
        for choice in choices:
            spec = choice.spec
            for setting in check_settings(spec, choice.overrides()):
                name = label(spec.name, setting)
                rel = "-" if spec.exact else _rel_err_cell(spec, device, shapes[0].dtype, setting, status)
                if not spec.exact and spec.reference_fn is None:  # nothing of its own to equal
                    t.add_row(name, "-", "-", "-", "-", "-", rel, "approximate, no dense definition of its own")
                    continue
                r = _check_one(spec, setting, shapes_for(spec, shapes, setting), not args.no_grad, status)
                c = r["counts"]
                failed |= bool(c["incorrect"] or c["error"] or c["oom"])
                t.add_row(name, str(c["ok"]), str(c["incorrect"]), str(c["error"] + c["oom"]), str(c["unsupported"]),
                          f"{r['worst']:.2f}", rel, r["problem"])
    console.print(t)
    console.print("FAILED: some kernels are incorrect or raised" if failed else "all checked cases within tolerance")
    return 1 if failed else 0


def _write_error(e: OSError, flag: str, target: Path, what: str):
    """A write the OS refused, as one line naming the flag's path (or the file that failed)."""
    from attnbench.results import StoreError

    failed = Path(e.filename) if e.filename else target
    where = f"{flag} {target}" if failed in (target, *target.parents) or target in failed.parents else str(failed)
    return StoreError(f"{where}: cannot write ({e.strerror or e}); give {flag} {what}")


def cmd_report(args) -> int:
    from attnbench.report.build import default_out
    from attnbench.report.build import main as report_main

    out = Path(args.out) if args.out else default_out(args.results)
    try:
        return report_main(args)  # prints bad input as one line and returns 2 itself
    except OSError as e:
        raise _write_error(e, "--out", out, "a writable directory") from None


def _check_writable(path: str, flag: str) -> None:
    """Open ``path`` for appending (and remove it again if it was not there): a path the OS will
    not let us write fails here, before any work."""
    p = Path(path)
    existed = p.exists()
    try:
        with open(p, "a"):
            pass
    except OSError as e:
        raise _write_error(e, flag, p, "a writable file path") from None
    if not existed:
        p.unlink()


def cmd_compare(args) -> int:
    from attnbench.compare import main as compare_main

    if args.csv:
        _check_writable(args.csv, "--csv")
    return compare_main(args)  # 0 same, 1 regressed or broken; bad input: one line on stderr, 2


def cmd_train(args) -> int:
    from attnbench.train.command import cmd_train as train

    return train(args)


def cmd_data(args) -> int:
    from attnbench.train.command import cmd_data as data

    return data(args)


def cmd_stats(args) -> int:
    from attnbench.stats.command import cmd_stats as stats

    return stats(args)


def cmd_compact(args) -> int:
    from attnbench.compact import cmd_compact as compact

    return compact(args)


COMMANDS = {"list": cmd_list, "run": cmd_run, "check": cmd_check, "train": cmd_train, "data": cmd_data,
            "report": cmd_report, "compare": cmd_compare, "stats": cmd_stats, "compact": cmd_compact}


def load_plugin(path: str) -> None:
    from attnbench.catalog import load_plugin as load

    load(path)


def _parse(argv: list[str]) -> argparse.Namespace:
    """Options and ``key=value`` overrides in any order (argparse alone takes positionals once)."""
    args, extra = build_parser().parse_known_args(argv)
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    rest = [e for e in extra if e not in overrides]
    if rest or (overrides and args.cmd not in ("run", "train", "stats")):
        raise UsageError(f"{args.cmd}: unrecognized arguments: {' '.join(rest or overrides)}")
    if args.cmd in ("run", "train", "stats"):
        args.overrides = [*args.overrides, *overrides]
    args.argv = argv
    return args


def _failure(e: BaseException) -> tuple[int, str]:
    """(exit status, the one line) for an exception that ends the command."""
    from attnbench.catalog import PluginError
    from attnbench.compact import CompactError
    from attnbench.config import ConfigError
    from attnbench.params import ParamError
    from attnbench.registry import UnknownVariant
    from attnbench.results import StoreError
    from attnbench.train.command import TrainUsageError
    from attnbench.train.tasks import TaskError
    from attnbench.data.base import DataError
    from attnbench.modelbench.inputs import InputsError
    from attnbench.modelbench.plan import ModelBenchError
    from attnbench.stats.command import StatsError
    from attnbench.stats.sources import SourceError

    if isinstance(e, (UsageError, ConfigError, UnknownVariant, ParamError, PluginError, TaskError, TrainUsageError,
                      DataError, ModelBenchError, InputsError, StatsError, SourceError, CompactError)):
        return EXIT_USAGE, f"error: {e}"
    bench = sys.modules.get("attnbench.bench")  # only a run can be interrupted with a resume line
    model = sys.modules.get("attnbench.modelbench.runner")
    if isinstance(e, KeyboardInterrupt) or any(m is not None and isinstance(e, m.Interrupted) for m in (bench, model)):
        return EXIT_INTERRUPTED, str(e) or "interrupted"
    if isinstance(e, StoreError):
        return EXIT_ENVIRONMENT, f"error: {e}"
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        return EXIT_ENVIRONMENT, f"error: {where}{e.strerror or e}; check the path, its permissions and free space"
    return EXIT_ENVIRONMENT, (f"error: unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback; "
                              "please report it)")


MULTIRUN = ("-m", "--multirun")  # COMMAND -m ...: the command as a hydra multirun (attnbench.sweep)
SWEEPABLE = ("run", "train", "stats")


def _sweep(argv: list[str]) -> int:
    from attnbench.sweep.command import main as sweep

    return sweep(argv[0], [a for a in argv[1:] if a not in MULTIRUN], parser=build_parser(), run=main)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SWEEPABLE and any(a in MULTIRUN for a in argv[1:]):
        return _sweep(argv)
    try:
        args = _parse(argv)
        for p in getattr(args, "plugin", []) or []:
            load_plugin(p)  # before the command: report and compare read the plugin's metadata
        return COMMANDS[args.cmd](args)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure is one line
        status, line = _failure(e)
        if "--debug" in argv:
            traceback.print_exc()
        print(f"attnbench: {' '.join(line.split())}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
