"""The run's second GEMM probe, after its cases: run.json records it and the change, the run
summary says it in one line (a warning past GEMM_DRIFT_WARN), the report's inputs show both."""
from __future__ import annotations

import json

import pytest

from attnbench.bench import drift_line
from attnbench.harness.flops import GEMM_DRIFT_WARN
from attnbench.report.build import _peak_cell


def test_a_run_probes_the_gemm_peak_again_after_its_cases(tiny_run):
    info = json.loads((tiny_run / "run.json").read_text())
    start, end = info["gemm_peak_gflops"], info["gemm_peak_end_gflops"]
    assert start > 0 and end > 0 and info["gemm_end_noisy"] in (True, False)
    assert info["gemm_drift"] == pytest.approx(end / start - 1)


@pytest.mark.parametrize("end, warns", [(100.0, False), (105.0, False), (91.0, False),
                                        (80.0, True), (100.0 * (1 + GEMM_DRIFT_WARN) + 1, True)])
def test_the_summary_line_warns_only_past_the_threshold(end, warns):
    text, warned = drift_line({"gemm_peak_gflops": 100.0, "gemm_peak_end_gflops": end, "gemm_drift": end / 100 - 1})
    assert warned is warns
    assert f"{end:.0f} after ({end / 100 - 1:+.0%})" in text and text.startswith("warning" if warns else "GEMM peak")


def test_runs_without_the_second_probe_say_nothing_new():
    assert drift_line({"gemm_peak_gflops": 100.0}) is None  # a run stored before the second probe
    assert drift_line({}) is None
    assert _peak_cell({"gemm_peak_gflops": 100.0}) == "100"
    assert _peak_cell({}) == "?"


def test_the_report_inputs_show_both_probes_and_mark_a_drift():
    assert _peak_cell({"gemm_peak_gflops": 200.0, "gemm_peak_end_gflops": 190.0, "gemm_drift": -0.05}) == "200 → 190 (-5%)"
    assert _peak_cell({"gemm_peak_gflops": 200.0, "gemm_peak_end_gflops": 120.0,
                       "gemm_drift": -0.4}) == "200 → 120 (-40%) (drifted)"


def test_a_failed_closing_probe_keeps_the_run(cli_in_process, monkeypatch, tmp_path):
    """The closing probe's worker dies: the run still ends with its rows, says so in one line,
    and run.json has no second probe (rather than a made-up one)."""
    from attnbench.bench import Runner
    from attnbench.harness.isolate import WorkerDied

    first = Runner.probe

    def probe(self, gemm_only=False):
        if gemm_only:
            raise WorkerDied("crash", ["worker died with SIGKILL"])
        return first(self)

    monkeypatch.setattr(Runner, "probe", probe)
    res = cli_in_process("run", "--out", tmp_path / "run", "--variants", "full@naive", "--seq-lens", "32",
                         "--threads", "1", "--heads", "2", "--head-dim", "16", "timing.budget_s=0.01", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "the closing GEMM probe failed (worker died with SIGKILL)" in res.stdout + res.stderr
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "gemm_peak_end_gflops" not in info and info["gemm_peak_gflops"] > 0
    assert (tmp_path / "run" / "results.jsonl").read_text().count("\n") == 1
