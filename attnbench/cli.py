"""``python -m attnbench``: one CLI, one subcommand per job (list, run, check, report, compare).

Bad input prints one line naming the value and what is allowed, exits 2, and writes nothing.
Every subcommand that takes variants reads the same selection syntax (``attnbench.params``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # is_available() without a CUDA context


class UsageError(Exception):
    pass


VARIANTS_HELP = ("all | names | bare patterns | globs, comma separated, each with an optional parameter grid in "
                 "brackets: 'full@*,mqa', 'sliding_window@blocked[window=64,256,1024]', "
                 "'bigbird[block=32,64,random_blocks=0,3]' (quote it: brackets are shell globs)")


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line, exit 2 (argparse prints the whole usage)
        raise UsageError(message if self.prog == "attnbench" else f"{self.prog.split(' ', 1)[-1]}: {message}")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="import a Python file that registers variants (repeatable)")


def build_parser() -> Parser:
    ap = Parser(prog="attnbench", description="Benchmark and analysis suite for efficient attention.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    p = sub.add_parser("list", help="every registered variant, its metadata and availability here")
    _add_common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default="auto", help="availability for this device (cpu|cuda|auto)")
    p.add_argument("--dtype", default="float32")

    p = sub.add_parser("run", help="time and memory of variants over a grid of sequence lengths")
    _add_common(p)
    p.add_argument("--variants", help=VARIANTS_HELP)
    p.add_argument("--seq-lens", help="A..B (powers of two inclusive) or a list 512,1000,2048")
    p.add_argument("--batch")
    p.add_argument("--heads")
    p.add_argument("--kv-heads", help="K/V heads (< heads: MQA/GQA for every full kernel)")
    p.add_argument("--head-dim")
    p.add_argument("--dtype", help="float32 | float64 | bfloat16 | float16")
    p.add_argument("--device", help="cpu | cuda | auto")
    p.add_argument("--causal", action="store_true", default=None)
    p.add_argument("--mode", help="comma list of fwd, bwd, fwd+bwd, decode")
    p.add_argument("--out", help="run directory (default results/runs/<UTC time>)")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --out: finished cases are kept, the rest run")
    p.add_argument("--timeout", help="wall-clock limit per case in seconds")
    p.add_argument("--mem-budget-gb", help="skip cases predicted to need more memory than this")
    p.add_argument("--time-budget", help="seconds of timed repeats per case")
    p.add_argument("--threads", help="CPU threads per worker")
    p.add_argument("--seed")
    p.add_argument("--no-check", action="store_true", help="skip the sampled-row check before timing")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="hydra overrides of attnbench/conf/bench.yaml, e.g. timing.budget_s=2 or "
                        "'+params.sliding_window.window=[64,256]' (a parameter grid by pattern or variant)")

    p = sub.add_parser("check", help="correctness of variants against the dense reference")
    _add_common(p)
    p.add_argument("variants", nargs="*", default=["all"],
                   help=VARIANTS_HELP + " (default: all; patterns at their defaults and their small check settings)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", action="append", help="dtypes to check (default: float32 and float64 on CPU)")
    p.add_argument("--quick", action="store_true", help="a smaller grid of shapes")
    p.add_argument("--no-grad", action="store_true", help="outputs only")

    from attnbench.report.build import add_arguments as report_arguments

    p = sub.add_parser("report", help="tables (Markdown, LaTeX, CSV) and figures from stored results; never re-measures")
    report_arguments(p)

    from attnbench.compare import add_arguments as compare_arguments

    p = sub.add_parser("compare", help="regression verdicts between two runs: slower beyond a threshold, or broken")
    compare_arguments(p)
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


def run_config(args):
    from attnbench.config import compose, validate

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise UsageError(f"unexpected argument {bad[0]!r}: overrides are key=value (see attnbench/conf/bench.yaml)")
    base = None
    if args.resume and args.out and (Path(args.out) / "run.json").exists():
        base = json.loads((Path(args.out) / "run.json").read_text()).get("config")
    raw = compose(list(args.overrides), base)
    for key in ("variants", "seq_lens", "dtype", "device", "out"):
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
    if args.resume:
        raw["resume"] = True
    if args.no_check:
        raw["check"] = False
    raw["plugins"] = list(raw.get("plugins") or []) + list(args.plugin)
    return validate(raw)


def cmd_list(args) -> int:
    from rich.table import Table

    from attnbench.catalog import all_specs
    from attnbench.case import Shape
    from attnbench.config import resolve_device
    from attnbench.params import describe
    from attnbench.report.console import make_console

    device = resolve_device(args.device)
    shape = Shape(batch=1, heads=8, kv_heads=8, seq_len=1024, kv_len=1024, head_dim=64,
                  dtype=args.dtype, device=device)
    rows = []
    for s in all_specs():
        d = s.describe()
        d["reasons_here"] = s.not_supported_reasons(shape)
        d["available_here"] = not d["reasons_here"]
        rows.append((s, d))
    if args.json:
        print(json.dumps([d for _, d in rows], indent=2, default=str))
        return 0
    t = Table(title=f"attnbench variants — availability on {device}, {args.dtype}", show_lines=False)
    for c in ("variant", "family", "exact", "time", "memory", "params (default)", "here"):
        t.add_column(c)
    for s, d in rows:
        here = "yes" if d["available_here"] else f"no: {d['reasons_here'][0][:70]}"
        t.add_row(d["name"], d["family"], "yes" if d["exact"] else "approx", d["time"], d["memory"],
                  describe(s.params), here)
    make_console().print(t)
    return 0


def cmd_run(args) -> int:
    from attnbench.bench import run_benchmark

    cfg = run_config(args)
    run_benchmark(cfg)
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

    from attnbench.catalog import select
    from attnbench.check import check_settings, shapes_for, standard_shapes
    from attnbench.config import ConfigError, resolve_device
    from attnbench.params import label
    from attnbench.report.console import make_console
    from attnbench.case import DTYPES

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
    with console.status("checking ...") as status:
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


def cmd_report(args) -> int:
    from attnbench.report.build import main as report_main

    return report_main(args)  # prints bad input as one line and returns 2 itself


def cmd_compare(args) -> int:
    from attnbench.compare import main as compare_main

    return compare_main(args)  # 0 same, 1 regressed or broken; bad input: one line on stderr, 2


def main(argv: list[str] | None = None) -> int:
    from attnbench.catalog import load_plugin
    from attnbench.config import ConfigError
    from attnbench.params import ParamError
    from attnbench.registry import UnknownVariant

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        for p in getattr(args, "plugin", []) or []:
            try:
                load_plugin(p)
            except FileNotFoundError as e:
                raise ConfigError(str(e)) from None
        return {"list": cmd_list, "run": cmd_run, "check": cmd_check, "report": cmd_report,
                "compare": cmd_compare}[args.cmd](args)
    except (UsageError, ConfigError, UnknownVariant, ParamError) as e:
        print(f"attnbench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
