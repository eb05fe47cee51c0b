"""The CLI as a user meets it: bad input is one clear line and exit 2, list/--json, plugins,
results on stdout and progress on stderr, --help and --version, the --seq-lens rule.

A fresh ``python -m attnbench`` costs about two seconds (torch and hydra imports): the table of
bad inputs runs in process (``cli_in_process``: the same ``main()``), with a few of its cases also
as real processes; list, plugins and run are real processes; --help, --version and --seq-lens are
read in process.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from attnbench.results import read_rows


def attnbench(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnbench", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


# (argv after "attnbench", substrings the error line must contain); "OUT" becomes a tmp path
BAD_INPUT = {
    "compare-threshold": (["compare", "OUT", "OUT", "--threshold", "5x"], ["--threshold '5x'", "5%"]),
    "report-missing": (["report", "no/such/dir"], ["no/such/dir"]),
    "seq-lens-abc": (["run", "--seq-lens", "abc", "--out", "OUT"], ["--seq-lens", "'abc'"]),
    "seq-lens-zero": (["run", "--seq-lens", "0", "--out", "OUT"], ["--seq-lens", "'0'", "positive"]),
    "seq-lens-reversed": (["run", "--seq-lens", "64..32", "--out", "OUT"], ["'64..32'"]),
    "variant-unknown": (["run", "--variants", "nope", "--out", "OUT"], ["'nope'", "known variants", "full@sdpa"]),
    "variant-typo": (["run", "--variants", "ful@sdpa", "--out", "OUT"], ["'ful@sdpa'", "did you mean 'full@sdpa'"]),
    "device-cuda": (["run", "--device", "cuda", "--out", "OUT"], ["--device cuda", "CUDA is not available"]),
    "batch-negative": (["run", "--batch", "-1", "--out", "OUT"], ["--batch -1", ">= 1"]),
    "heads-not-int": (["run", "--heads", "x", "--out", "OUT"], ["--heads 'x'", "integer"]),
    "kv-heads-not-divisor": (["run", "--kv-heads", "3", "--heads", "8", "--out", "OUT"],
                             ["--kv-heads 3", "--heads 8", "[1, 2, 4, 8]"]),
    "dtype-float8": (["run", "--dtype", "float8", "--out", "OUT"], ["'float8'", "float32"]),
    "mode-sideways": (["run", "--mode", "sideways", "--out", "OUT"], ["'sideways'", "fwd", "decode"]),
    "timeout-negative": (["run", "--timeout", "-5", "--out", "OUT"], ["--timeout", "-5", "positive"]),
    "resume-without-out": (["run", "--resume"], ["--resume", "--out"]),
    "plugin-missing": (["run", "--plugin", "no_such_plugin.py", "--out", "OUT"], ["no_such_plugin.py"]),
    "override-unknown": (["run", "nosuchkey=1", "--out", "OUT"], ["nosuchkey"]),
    "override-not-key-value": (["run", "stray", "--out", "OUT"], ["'stray'", "key=value"]),
    "override-after-options": (["run", "timing.budget_s=1", "--out", "OUT", "memory=maybe"], ["memory=maybe"]),
    "unknown-flag": (["run", "--out", "OUT", "--nope"], ["unrecognized arguments: --nope"]),
    "check-unknown": (["check", "nope"], ["'nope'", "known variants"]),
}


# Also run as a real process (exit status through ``__main__``, nothing else on a fresh
# interpreter's stderr): a refusal by the registry (every builtin variant module imported) and one
# by hydra's config composition.
IN_A_FRESH_PROCESS = ["variant-typo", "override-unknown"]


@pytest.mark.parametrize("case, fresh", [pytest.param(c, False, id=c) for c in BAD_INPUT]
                         + [pytest.param(c, True, id=f"{c}-process") for c in IN_A_FRESH_PROCESS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, fresh, tmp_path, cli_in_process):
    argv, must = BAD_INPUT[case]
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else a for a in argv]
    p = attnbench(*argv, cwd=tmp_path) if fresh else cli_in_process(*argv, cwd=tmp_path)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.startswith("attnbench: error:"), p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.endswith("\n"), f"not one line:\n{p.stderr}"
    assert "Traceback" not in p.stderr
    for s in must:
        assert s in p.stderr, f"{s!r} not in {p.stderr!r}"
    assert not out.exists(), "bad input created the --out directory"
    assert not (tmp_path / "results").exists(), "bad input created the default results directory"
    assert p.stdout == ""


def test_list_table_fits_100_columns_one_line_per_variant(tmp_path, cli_in_process):
    from attnbench.catalog import names

    p = cli_in_process("list", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert max(len(ln.rstrip()) for ln in lines) <= 100
    for name in names("all"):
        assert sum(ln.split()[:1] == [name] for ln in lines) == 1, name  # its row, on one line
    assert any(ln.startswith("parameters") for ln in lines)


def test_list_for_cuda_on_any_machine(tmp_path, cli_in_process):
    """The README's ``list --device cuda`` example: availability as declared, without a GPU."""
    p = cli_in_process("list", "--device", "cuda", "--dtype", "bfloat16", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "availability on cuda, bfloat16" in p.stdout and "full@flash" in p.stdout


@pytest.mark.parametrize("cmd", ["list", "run", "check", "report", "compare"])
def test_help_shows_defaults_and_examples(cmd, capsys):
    from attnbench.cli import main

    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and text.count(f"python -m attnbench {cmd}") >= 2
    assert "default" in text and "--plugin" in text
    if cmd == "run":
        for shown in ("(default: 512..2048)", "(default: 240)", "(default: auto)", "--extend"):
            assert shown in " ".join(text.split()), shown


def test_version(capsys):
    from attnbench import __version__
    from attnbench.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"attnbench {__version__}\n"


@pytest.mark.parametrize("text, expected", [
    ("512..2048", [512, 1024, 2048]),
    ("64..1000", [64, 128, 256, 512]),  # doubles from A while <= B
    ("100..1000", [100, 200, 400, 800]),  # from A, whatever A is
    ("64..64", [64]),
    ("2048,512,1000,512", [512, 1000, 2048]),  # a list: sorted, each once
    ([64, 128], [64, 128]),  # a YAML list (seq_lens=[64,128])
])
def test_seq_lens_rule(text, expected):
    from attnbench.config import parse_seq_lens

    assert parse_seq_lens(text) == expected


def test_list_json(tmp_path, cli_in_process):
    """In process; ``list --json`` as a real process is test_plugin_list_json."""
    p = cli_in_process("list", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    entries = json.loads(p.stdout)
    assert isinstance(entries, list) and entries
    for e in entries:
        for key in ("name", "family", "exact", "time", "memory", "available_here", "reasons_here"):
            assert key in e, (e.get("name"), key)
        assert isinstance(e["available_here"], bool) and isinstance(e["reasons_here"], list)
        # available exactly when there is no reason against it, and every reason is said
        assert e["available_here"] == (not e["reasons_here"]), e["name"]
        assert all(isinstance(r, str) and r for r in e["reasons_here"])
    by_name = {e["name"]: e for e in entries}
    assert len(by_name) == len(entries), "a variant is listed twice"
    for name in ("full@sdpa", "mqa@sdpa", "gqa@sdpa"):
        assert name in by_name
        assert by_name[name]["available_here"] is True  # SDPA runs on any CPU torch
    assert not any(e["family"] == "test" for e in entries), "test kernels leaked into the registry"


PLUGIN_SRC = '''
from attnbench import AttnOutput, register
from attnbench.variants.sdpa import sdpa_attention


@register("mine@plugtest", family="dense", exact=True, time="O(n^2 d)", memory="O(n d)",
          devices=("cpu", "cuda"), dtypes=("float32", "float64"), causal=True,
          doc="a plugin kernel for the CLI tests")
def mine(q, k, v, *, causal=False, state=None, need_weights=False):
    return AttnOutput(out=sdpa_attention(q, k, v, causal=causal))
'''


@pytest.fixture
def plugin_file(tmp_path) -> Path:
    f = tmp_path / "my_kernel.py"
    f.write_text(textwrap.dedent(PLUGIN_SRC))
    return f


def test_plugin_check(plugin_file, tmp_path):
    p = attnbench("check", "mine@plugtest", "--plugin", str(plugin_file), "--quick", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "mine@plugtest" in p.stdout and "FAILED" not in p.stdout


def test_plugin_list_json(plugin_file, tmp_path):
    p = attnbench("list", "--json", "--plugin", str(plugin_file), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    e = {e["name"]: e for e in json.loads(p.stdout)}["mine@plugtest"]
    assert e["family"] == "dense" and e["available_here"] is True
    assert e["source"].startswith("plugin") and "my_kernel.py" in e["source"]


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory) -> dict:
    """A run of the plugin kernel at n=32, 64 beside xl@segment (not causal: it cannot run)."""
    d = tmp_path_factory.mktemp("plugin_run")
    plugin = d / "my_kernel.py"
    plugin.write_text(textwrap.dedent(PLUGIN_SRC))
    out = d / "run"
    p = attnbench("run", "--variants", "mine@plugtest,xl@segment", "--plugin", str(plugin), "--seq-lens", "32,64",
                  "--heads", "2", "--head-dim", "16", "--threads", "1", "--time-budget", "0.05",
                  "--out", str(out), cwd=d)
    assert p.returncode == 0, p.stderr[-3000:]
    return {"dir": d, "out": out, "plugin": plugin, "stdout": p.stdout, "stderr": p.stderr}


def test_plugin_run(plugin_run):
    rows = read_rows(plugin_run["out"] / "results.jsonl")
    assert len(rows) == 4
    by = {(r["variant"], r["seq_len"]): r for r in rows}
    for n in (32, 64):
        r = by[("mine@plugtest", n)]
        assert r["status"] == "ok", r["reasons"]
        assert r["time_ms_median"] > 0 and r["repeats"] >= 3
        assert r["max_abs_err"] <= r["allowed_err"]
        assert by[("xl@segment", n)]["status"] == "unsupported"


def test_run_prints_results_on_stdout_progress_on_stderr(plugin_run):
    """``run > file`` keeps the table and where the rows are; progress and logs stay on the terminal.
    The table has one line per variant; what cannot run here is one line with its whole reason."""
    out, err = plugin_run["stdout"], plugin_run["stderr"]
    table = [ln for ln in out.splitlines() if ln.split()[:1] == ["mine@plugtest"]]
    assert len(table) == 1 and table[0].count(" ms") == 2, out  # one line, a time per n
    cannot = [ln for ln in out.splitlines() if ln.startswith("cannot run on cpu float32:")]
    assert len(cannot) == 1 and "xl@segment: Transformer-XL is causal" in cannot[0], out
    assert cannot[0].rstrip().endswith("run it with causal=True / --causal"), "the reason was cut"
    assert "4 new rows (4 in all)" in out and str(plugin_run["out"] / "results.jsonl") in out
    assert "probing" in err and "probing" not in out
    assert "slope t/mem" not in err and "new rows" not in err and "cannot run" not in err


def test_report_and_compare_take_plugin(plugin_run, tmp_path, cli_in_process):
    """The plugin's metadata (its complexity) reaches the report; compare loads it too. In process
    (the plugin is not registered here before: cli_in_process removes what a call loads);
    ``--plugin`` in a fresh process is test_plugin_check, test_plugin_list_json and plugin_run."""
    p = cli_in_process("report", str(plugin_run["out"]), "--out", str(tmp_path / "rep"), "--baseline",
                       "mine@plugtest", "--no-figures", "--plugin", str(plugin_run["plugin"]), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    scaling = next((tmp_path / "rep" / "tables").glob("scaling_*.md")).read_text()
    assert "O(n^2 d)" in next(ln for ln in scaling.splitlines() if "mine@plugtest" in ln)
    p = cli_in_process("compare", str(plugin_run["out"]), str(plugin_run["out"]), "--plugin",
                       str(plugin_run["plugin"]), "--csv", str(tmp_path / "cmp.csv"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "mine@plugtest" in (tmp_path / "cmp.csv").read_text()
