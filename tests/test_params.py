"""Parameters as inputs: the selection syntax, grids, validation, resolution once per case, and
the one-line errors of every subcommand that takes variants.

Everything is derived from the registry (declared params), so a new variant's parameters are
covered the moment it is registered.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench import params as P
from attnbench.case import Case, Shape
from attnbench.catalog import all_specs, get, names, select
from attnbench.params import ParamError

ROOT = Path(__file__).resolve().parents[1]


def attnbench(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnbench", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


# --------------------------------------------------------------------------- the syntax
def test_parse_items_grids_and_globs():
    sel = P.parse_selection("full@sdpa, sliding_window@blocked[window=64,256,1024],bigbird[block=32,64,seed=1],full@[fm]*")
    assert [s.name for s in sel] == ["full@sdpa", "sliding_window@blocked", "bigbird", "full@[fm]*"]
    assert sel[1].grid == {"window": [64, 256, 1024]}
    assert sel[2].grid == {"block": [32, 64], "seed": [1]}
    assert sel[3].grid == {}  # a character class, not a parameter grid
    assert sel[2].settings() == [{"block": 32, "seed": 1}, {"block": 64, "seed": 1}]


@pytest.mark.parametrize("text, value", [("none", None), ("null", None), ("true", True), ("False", False),
                                         ("12", 12), ("-3", -3), ("0.5", 0.5), ("1e-6", 1e-6),
                                         ("auto", "auto"), ("32x64", "32x64")])
def test_values_are_read_by_type(text, value):
    assert P.parse_value(text) == value and type(P.parse_value(text)) is type(value)


@pytest.mark.parametrize("bad", ["a[window=]", "a[=3]", "a[window=1,window=2]", "a[window=1"])
def test_malformed_brackets_are_one_clear_error(bad):
    with pytest.raises(ParamError) as e:
        P.parse_selection(bad)
    assert "\n" not in str(e.value) and "[" in str(e.value)


def test_grid_expands_to_one_case_per_setting():
    (choice,) = select("sliding_window@blocked[window=64,256,1024]")
    assert choice.overrides() == [{"window": 64}, {"window": 256}, {"window": 1024}]
    (perf,) = select("performer@favor[nb_features=16,64,seed=0,1]")
    assert len(perf.overrides()) == 4


def test_config_params_by_pattern_apply_to_kernels_that_declare_them():
    chosen = select("longformer@blocked,longformer@dense", {"longformer": {"block": [16, 32]}})
    by = {c.spec.name: c.overrides() for c in chosen}
    assert by["longformer@blocked"] == [{"block": 16}, {"block": 32}]
    assert by["longformer@dense"] == [{}]  # @dense has no block: its one setting is the defaults
    with pytest.raises(ParamError, match="unknown parameter 'blok'"):
        select("longformer@blocked", {"longformer": {"blok": 16}})


def test_a_glob_grid_keeps_the_variants_that_declare_the_key():
    got = names("*@blocked[window=64]")
    assert "sliding_window@blocked" in got and "longformer@blocked" in got
    assert "block_local@blocked" not in got and "bigbird@blocked" not in got


# --------------------------------------------------------------------------- validation
def _declared_cases():
    """(variant, key, a value the declaration refuses) for every declared parameter that has one."""
    bad_for = {"an integer": -1, "a number": -1.0, "true or false": "maybe", "one of": "nonsense",
               "'auto'": 0, "none (most nearly square": "3x", "or a bool matrix": "diagonal"}
    out = []
    for spec in all_specs():
        for key, p in spec.params.items():
            for words, value in bad_for.items():
                if p.allowed.startswith(words) or words in p.allowed:
                    out.append((spec.name, key, value))
                    break
    return out


@pytest.mark.parametrize("variant, key, value", _declared_cases())
def test_every_declared_parameter_refuses_a_bad_value_in_one_line(variant, key, value):
    spec = get(variant)
    with pytest.raises(ParamError) as e:
        spec.resolve_params({key: value})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{variant}: {key}=") and "allowed:" in msg


def test_unknown_key_suggests_and_lists_the_parameters():
    with pytest.raises(ParamError) as e:
        get("sliding_window@blocked").resolve_params({"windw": 3})
    msg = str(e.value)
    assert "unknown parameter 'windw'" in msg and "did you mean 'window'?" in msg and "window (default 256)" in msg


@pytest.mark.parametrize("variant", ["sliding_window@dense", "sliding_window@flex", "sliding_window@sdpa_mask",
                                     "sliding_window@blocked"])
def test_a_misspelled_parameter_is_an_error_in_every_kernel(variant):
    """Once silently ignored by @dense/@sdpa_mask/@flex (the default ran) and a TypeError in @blocked."""
    import torch

    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ParamError, match=f"{variant}: unknown parameter 'widow'"):
        get(variant)(q, q, q, widow=3)


def test_defaults_are_declared_once_and_resolution_fills_every_key():
    for spec in all_specs():
        resolved = spec.resolve_params({})
        assert list(resolved) == list(spec.params) and resolved == spec.defaults


# --------------------------------------------------------------------------- one case object
def test_the_case_carries_exactly_what_the_kernel_receives(monkeypatch):
    spec = get("sliding_window@blocked")
    case = Case.make(spec, Shape(1, 2, 2, 64, 64, 8), {"window": 5})
    assert case.kwargs == {"window": 5}
    seen = {}
    real = spec.forward

    def spy(q, k, v, **kw):
        seen.update(kw)
        return real(q, k, v, **kw)

    from attnbench.harness.execute import calls
    from attnbench.harness.inputs import make_inputs

    monkeypatch.setattr(type(spec), "forward", property(lambda self: spy), raising=False)
    _, call = calls(spec, case.shape, *make_inputs(case.shape), case.kwargs)
    call()
    assert {k: v for k, v in seen.items() if k in spec.params} == case.kwargs
    # the costs read the same params: a smaller window, fewer FLOPs and bytes
    small, big = case, Case.make(spec, case.shape, {"window": 40})
    assert small.flops() < big.flops() and small.predicted_peak_bytes() <= big.predicted_peak_bytes()


# --------------------------------------------------------------------------- the CLI
BAD = {
    "run-window": (["run", "--variants", "sliding_window@blocked[window=-1]", "--out", "OUT"],
                   ["sliding_window@blocked", "window=-1", "allowed: an integer >= 0"]),
    "run-unknown-key": (["run", "--variants", "performer@favor[nb_feature=64]", "--out", "OUT"],
                        ["performer@favor", "unknown parameter 'nb_feature'", "did you mean 'nb_features'"]),
    "run-features": (["run", "--variants", "performer@favor[nb_features=-8]", "--out", "OUT"],
                     ["performer@favor", "nb_features=-8", "allowed: an integer >= 1"]),
    "run-block": (["run", "--variants", "bigbird@blocked[block=0]", "--out", "OUT"],
                  ["bigbird@blocked", "block=0", "allowed: an integer >= 1"]),
    "run-hydra-form": (["run", "--variants", "sliding_window@blocked", "--out", "OUT", "+params.sliding_window.window=0.5"],
                       ["sliding_window@blocked", "window=0.5", "allowed"]),
    "check": (["check", "swin@blocked[window=0]"], ["swin@blocked", "window=0", "allowed: an integer >= 1"]),
    "compare-syntax": (["compare", "A", "B", "--variants", "x[window=]"], ["no value for 'window'"]),
}


# Every case in process (``cli_in_process``: the same ``main()``, without ~2 s of imports each);
# this one also as a real ``python -m attnbench`` in a bare environment.
IN_A_FRESH_PROCESS = ["run-window"]


@pytest.mark.parametrize("case, fresh", [pytest.param(c, False, id=c) for c in BAD]
                         + [pytest.param(c, True, id=f"{c}-process") for c in IN_A_FRESH_PROCESS])
def test_bad_parameters_are_one_line_exit_2_nothing_written(case, fresh, tmp_path, cli_in_process):
    argv, needles = BAD[case]
    for d in ("A", "B"):  # compare needs two readable runs to reach its --variants
        (tmp_path / d).mkdir()
        (tmp_path / d / "results.jsonl").write_text(json.dumps({"variant": "full@sdpa", "status": "ok"}) + "\n")
    out = tmp_path / "out"
    p = (attnbench if fresh else cli_in_process)(*[str(out) if a == "OUT" else a for a in argv], cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.startswith("attnbench: error:") and p.stderr.count("\n") == 1, p.stderr
    for n in needles:
        assert n in p.stderr, (n, p.stderr)
    assert not out.exists()
