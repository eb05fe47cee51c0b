"""scripts/peers.py (issue 15, side by side with the public peers): the table from rows, the
row writer and its child processes; no peer package needed."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import peers  # noqa: E402
import peers_impls  # noqa: E402
import peers_rows  # noqa: E402
import peers_table  # noqa: E402
from peers_table import FASTER_LEANER, MATCH, verdict  # noqa: E402

COMMITTED = ROOT / "results" / "cpu-epyc-2core" / "peers"


def _speed(impl: str, n: int, ms: float | None, mb: float | None, status: str = "ok", reasons=(), **kw) -> dict:
    i = peers_impls.IMPLS[impl]
    return peers_rows.new_row(kind="speed", impl=impl, algorithm=i.algorithm, role=i.role, package=i.package,
                              package_version="1.0", n=n, status=status, reasons=list(reasons),
                              time_ms_median=ms, peak_rss_mb=mb, threads=2, pattern=i.pattern, **kw)


FIXTURE = [
    _speed("sliding_window@blocked", 4096, 100.0, 100.0),
    _speed("local-attention", 4096, 400.0, 500.0),  # 4x / 5x: the goal holds
    _speed("longformer@blocked", 4096, 100.0, 100.0),
    _speed("hf-longformer", 4096, 200.0, 400.0, noisy=True),  # 2x faster only
    _speed("bigbird@blocked", 4096, 50.0, 60.0),
    _speed("hf-bigbird", 4096, None, None, "oom", ["killed by SIGKILL (likely the kernel's OOM killer)"]),
    _speed("sliding_window@flex", 4096, 95.0, 100.0),  # within 10%: matched
    _speed("sliding_window@blocked", 2048, 40.0, 50.0),
    _speed("local-attention", 2048, 80.0, 100.0),
    peers_rows.new_row(kind="check", impl="local-attention", algorithm="sliding_window", role="peer", n=1024,
                       status="ok", check_max_abs_diff=2.4e-7, check_tol=1e-4, check_note="same inputs",
                       pattern="window |i - j| <= 256"),
]


def _line(text: str, label: str, n: int) -> str:
    section = text.split(f"## At n = {n}\n", 1)[1].split("\n## ", 1)[0]
    return next(ln for ln in section.splitlines() if ln.startswith(f"| {label} |"))


def test_table_ratios_and_goal_column():
    text = peers_table.render(FIXTURE, {"cpu_model": "AMD EPYC", "cpu_count": 2, "command": "x"})
    sw = _line(text, "sliding window ±256", 4096)
    assert "| 100 / 100 |" in sw and "| 400 / 500 |" in sw and "| 4.0x / 5.0x |" in sw and sw.endswith("| met |")
    lf = _line(text, "Longformer", 4096)
    assert "200~ / 400" in lf and "| 2.0x / 4.0x |" in lf and "not met (time 2.0x < 3x)" in lf
    bb = _line(text, "BigBird", 4096)
    assert "oom: killed by SIGKILL (likely the kernel's OOM killer)" in bb and bb.endswith("| — |")
    fx = _line(text, "sliding window, compiled FlexAttention", 4096)
    assert "| 0.95x / 1.0x |" in fx and fx.endswith("| met |")
    assert "| 2.0x / 2.0x |" in _line(text, "sliding window ±256", 2048)  # the smaller n: a table of its own
    assert "Machine: AMD EPYC, 2 cores" in text  # a run from before the CPU record
    zen3 = {"family": "25", "model": "1", "isa": "AVX2", "l2": 512 << 10, "l3": 32 << 20}
    text = peers_table.render(FIXTURE, {"cpu_model": "AMD EPYC", "cpu": zen3, "cpu_count": 2, "command": "x"})
    assert "Machine: AMD EPYC (family 25 model 1, AVX2, L2 512 KiB, L3 32 MiB), 2 cores" in text
    assert text.index("## At n = 4096") < text.index("## At n = 2048")  # the largest n first
    check = "| local-attention | sliding_window@blocked | 1024 | same attention | 2.4e-07 | window \\|i - j\\| <= 256"
    assert check in text  # a | in a cell is escaped
    failed = text.split("## Cases without a number", 1)[1]
    assert "| speed | hf-bigbird | 4096 | oom | killed by SIGKILL" in failed
    assert peers_table.render(FIXTURE, {}) == peers_table.render(FIXTURE, {})  # no clock, no machine state


def test_verdict_names_what_falls_short():
    assert verdict(FASTER_LEANER, (3.0, 3.0)) == "met"
    assert verdict(FASTER_LEANER, (3.5, 2.9)) == "not met (memory 2.9x < 3x)"
    assert verdict(FASTER_LEANER, (0.5, 12.0)) == "not met (time 0.5x < 3x)"
    assert verdict(FASTER_LEANER, (2.0, 2.5)) == "not met (time 2.0x < 3x, memory 2.5x < 3x)"
    assert verdict(MATCH, (0.89, 1.0)) == "not met (time 0.89x < 0.9x)"
    assert verdict(MATCH, None) == "—"


def test_comparisons_name_registered_implementations_and_pinned_peers():
    pins = peers.pinned()
    for c in peers_table.COMPARISONS:
        assert peers_impls.IMPLS[c.ours].role == "ours"
        peer = peers_impls.IMPLS[c.peer]
        assert peer.role == "peer" and peer.algorithm == peers_impls.IMPLS[c.ours].algorithm
        assert peer.check_against in peers_impls.IMPLS
        assert peer.package == "torch" or peer.package in pins, (peer.package, pins)
    assert "torch" not in pins  # constraints-cpu.txt pins torch, not the peers' file


def test_rows_have_every_field_and_known_statuses():
    row = peers_rows.new_row(kind="speed", impl="x", status="missing")
    assert set(row) == set(peers_rows.FIELDS) and row["reasons"] == [] and row["time_ms_median"] is None
    with pytest.raises(ValueError, match="allowed"):
        peers_rows.new_row(status="gone")
    with pytest.raises(ValueError, match="unknown row fields"):
        peers_rows.new_row(speed=1)


def test_bad_only_says_what_exists(capsys):
    assert peers.main(["--only", "bigbrd"]) == 2
    err = capsys.readouterr().err
    assert "--only 'bigbrd'" in err and "did you mean 'bigbird'" in err


@pytest.mark.skipif(importlib.util.find_spec("local_attention") is not None, reason="local-attention is installed")
def test_missing_peer_is_a_row_with_the_pip_hint(tmp_path, capsys):
    out = tmp_path / "results" / "m" / "peers"
    assert peers.main(["--only", "local-attention", "--seq-lens", "256", "--out", str(out)]) == 0
    rows = peers_rows.read_rows(out / "rows.jsonl")
    assert [(r["kind"], r["status"]) for r in rows] == [("check", "missing"), ("speed", "missing")]
    assert "local-attention==1.11.2" in rows[1]["reasons"][0] and "pip install" in rows[1]["reasons"][1]
    run = json.loads((out / "run.json").read_text())
    assert run["cpu_model"] and run["command"].endswith("scripts/peers.py --only local-attention --seq-lens 256 "
                                                        f"--out {out}")
    report = (tmp_path / "reports" / "m" / "peers" / "README.md").read_text()
    assert "missing: 'local-attention' is not installed" in report
    assert peers.main(["--only", "local-attention", "--seq-lens", "256,512", "--out", str(out), "--resume"]) == 0
    rows = peers_rows.read_rows(out / "rows.jsonl")  # resumed: only the case it lacked was added
    assert [(r["kind"], r["n"]) for r in rows] == [("check", 1024), ("speed", 256), ("speed", 512)]


def test_timeout_kills_the_child_and_is_a_row():
    case = {"kind": "speed", "impl": "sliding_window@blocked", "n": 64, "batch": 1, "heads": 1, "head_dim": 8,
            "budget_s": 0.01}
    res = peers.spawn(case, timeout=0.2)  # still importing torch
    assert res["status"] == "timeout" and "0.2 s" in res["reasons"][0]


@pytest.mark.slow
def test_ours_measured_in_a_child_and_a_broken_child_is_a_crash_row(tmp_path):
    out = tmp_path / "results" / "m" / "peers"
    argv = ["--only", "sliding_window@blocked", "--seq-lens", "128", "--heads", "2", "--head-dim", "16",
            "--budget", "0.05", "--out", str(out)]
    assert peers.main(argv) == 0
    (row,) = peers_rows.read_rows(out / "rows.jsonl")
    assert row["status"] == "ok" and row["role"] == "ours" and row["params"] == {"window": 256}
    assert row["time_ms_median"] > 0 and row["repeats"] >= 3 and row["threads"] >= 1
    assert row["peak_rss_mb"] == pytest.approx(row["inputs_mb"] + row["call_peak_mb"])
    assert row["inputs_mb"] > 0 and row["package"] == "attnbench" and row["torch"]
    res = peers.spawn({"kind": "speed", "impl": "no-such-impl", "n": 64}, timeout=120)
    assert res["status"] == "crash" and "KeyError" in res["reasons"][0]


@pytest.mark.skipif(not (COMMITTED / "rows.jsonl").is_file(), reason="no committed peers run")
def test_committed_report_is_what_the_rows_make():
    rows = peers_rows.read_rows(COMMITTED / "rows.jsonl")
    run = json.loads((COMMITTED / "run.json").read_text())
    committed = ROOT / "reports" / "cpu-epyc-2core" / "peers" / "README.md"
    assert peers_table.render(rows, run) == committed.read_text()
