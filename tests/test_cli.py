"""The CLI as a user meets it: bad input is one clear line and exit 2, list/--json, plugins.

Every call is a fresh ``python -m attnbench`` (about two seconds each: torch and hydra imports).
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
    "check-unknown": (["check", "nope"], ["'nope'", "known variants"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path):
    argv, must = BAD_INPUT[case]
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else a for a in argv]
    p = attnbench(*argv, cwd=tmp_path)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.startswith("attnbench: error:"), p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.endswith("\n"), f"not one line:\n{p.stderr}"
    assert "Traceback" not in p.stderr
    for s in must:
        assert s in p.stderr, f"{s!r} not in {p.stderr!r}"
    assert not out.exists(), "bad input created the --out directory"
    assert not (tmp_path / "results").exists(), "bad input created the default results directory"
    assert p.stdout == ""


def test_list_table(tmp_path):
    p = attnbench("list", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for name in ("full@sdpa", "mqa@sdpa", "gqa@sdpa"):
        assert name in p.stdout


def test_list_json(tmp_path):
    p = attnbench("list", "--json", cwd=tmp_path)
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


def test_plugin_run(plugin_file, tmp_path):
    out = tmp_path / "run"
    p = attnbench("run", "--variants", "mine@plugtest", "--plugin", str(plugin_file), "--seq-lens", "32",
                  "--heads", "2", "--head-dim", "16", "--threads", "1", "--time-budget", "0.2",
                  "--out", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 1
    r = rows[0]
    assert (r["variant"], r["seq_len"], r["status"]) == ("mine@plugtest", 32, "ok"), r["reasons"]
    assert r["time_ms_median"] > 0 and r["repeats"] >= 3
    assert r["max_abs_err"] <= r["allowed_err"]
