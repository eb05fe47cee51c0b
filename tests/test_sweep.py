"""Sweeps as hydra multiruns (attnbench.sweep): the words sorted without hydra, core slots,
and tiny ``stats`` / ``run`` sweeps through hydra's basic, joblib and submitit_local launchers:
every other job's rows kept, a failed job's ``sweep_job`` row, ``report`` of the sweep
directory, ``--resume`` rerunning only what is not ok."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from attnbench import cli, results
from attnbench.report import build, sweep_jobs
from attnbench.sweep import command, cores, jobs
from attnbench.sweep.argv import Flag, SweepUsageError, translate
from attnbench.sweep.collect import results_files, sweep_files
from attnbench.sweep.job import JobSpec, job_argv
from attnbench.sweep.schema import is_sweep_job_row, make_row

TINY = ["--random", "--heads", "2", "--head-dim", "8", "--seq-len", "16", "--batch", "1", "--stats", "entropy"]
GRID = ["variants=full,sliding_window,nosuch", "seed=0,1"]  # 6 jobs: 4 ok, 2 fail (an unknown variant, exit 2)


@pytest.fixture(scope="module")
def parser():
    return cli.build_parser()


def sweep(parser, cmd: str, words: list[str]) -> int:
    return command.main(cmd, words, parser=parser, run=cli.main)


def records(d: Path) -> dict[int, dict]:
    return {r["job"]: r for r in jobs.settle(d)}


# -- the words, without hydra -----------------------------------------------------------------
def test_flags_overrides_and_hydra_words_are_told_apart(parser):
    s = translate("run", ["--mode", "fwd", "--causal", "variants=full,sliding_window", "seq_lens=1024,2048",
                          "+params.sliding_window.window=64,256", "timing.budget_s=2", "hydra/launcher=joblib",
                          "hydra.launcher.n_jobs=2", "--out", "d", "--resume", "~check"], parser)
    assert s.fixed == ("--mode", "fwd", "--causal", "~check")
    assert s.swept == ("+flag.variants=full,sliding_window", "+flag.seq_lens=1024,2048",
                       "+set.params.sliding_window.window=64,256", "+set.timing.budget_s=2")
    assert s.hydra == ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert s.prefixes == {"params.sliding_window.window": "+", "timing.budget_s": ""}
    assert (s.out, s.resume) == ("d", True)
    assert "--out" not in s.words and "hydra/launcher=joblib" not in s.words
    t = translate("train", ["--task=listops", "seeds=0,1,2", "train.lr=1e-3,3e-4"], parser)
    assert t.fixed == ("--task", "listops") and t.swept == ("+flag.seeds=0,1,2", "+set.train.lr=1e-3,3e-4")


@pytest.mark.parametrize("words, says", [
    (["--bogus", "1"], "unknown option '--bogus'"),
    (["seq-len=1,2"], "did you mean seq_len=1,2"),
    (["out=a,b"], "out cannot be swept"),
    (["--seed", "1", "seed=2,3"], "--seed is given as a flag and swept"),
    (["stray"], "unexpected argument 'stray'"),
    (["--heads"], "--heads needs a value"),
])
def test_bad_words_are_one_line_naming_them(parser, words, says):
    with pytest.raises(SweepUsageError, match=says.replace("[", r"\[")):
        translate("stats", words, parser)


def test_flag_words_and_a_jobs_command_line(tmp_path, parser):
    assert Flag("seq_lens", "--seq-lens", True).words([1024, 2048]) == ["--seq-lens", "1024,2048"]
    assert Flag("causal", "--causal", False).words(True) == ["--causal"]
    assert Flag("causal", "--causal", False).words(False) == []
    repeated = Flag("checkpoint", "--checkpoint", True, repeat=True)
    assert repeated.words(["a", "b"]) == ["--checkpoint", "a", "--checkpoint", "b"]
    s = translate("run", ["--mode", "fwd", "variants=full", "+params.x.window=64", "timing.budget_s=2"], parser)
    spec = JobSpec("run", s.fixed, s.flags, s.prefixes)
    cfg = OmegaConf.create({"flag": {"variants": "full"}, "set": {"params": {"x": {"window": 64}}}})
    argv = job_argv(spec, cfg, ["+flag.variants=full", "+set.params.x.window=64", "+set.timing.budget_s=2"], tmp_path)
    assert argv == ["run", "--mode", "fwd", "--variants", "full", "--out", str(tmp_path), "+params.x.window=64",
                    "timing.budget_s=2"]
    (tmp_path / "run.json").write_text("{}")  # an earlier attempt left a run: continue it
    assert "--resume" in job_argv(spec, cfg, [], tmp_path)


def test_usage_errors_exit_2_before_anything_runs(tmp_path, parser, capsys):
    assert sweep(parser, "stats", ["--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
    (tmp_path / "x").write_text("")
    assert sweep(parser, "stats", [*TINY, "seed=0,1", "--out", str(tmp_path)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert sweep(parser, "stats", ["--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no sweep to resume" in capsys.readouterr().err
    assert sweep(parser, "stats", [*TINY, "seed=0,1", "hydra/launcher=nosuch", "--out", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnbench: error: hydra:") and "nosuch" in err and err.count("\n") == 1
    assert not (tmp_path / "h").exists()  # nothing ran: no sweep left behind


# -- core slots -------------------------------------------------------------------------------
def _overlaps(spans: list[tuple[int, float, float]]) -> list:
    return [(a, b) for a in spans for b in spans if a is not b and a[0] == b[0] and a[1] < b[2] and b[1] < a[2]]


def test_concurrent_threads_never_share_a_slot_and_are_pinned(tmp_path):
    core = min(os.sched_getaffinity(0))
    pool, spans, pinned = (core,) * 3, [], []

    def hold():
        with cores.hold_slot(tmp_path, pool, 1, poll_s=0.01) as slot:
            t0 = time.monotonic()
            pinned.append(os.sched_getaffinity(0) == set(slot.cores))
            time.sleep(0.05)
            spans.append((slot.index, t0, time.monotonic()))

    before = os.sched_getaffinity(0)
    threads = [threading.Thread(target=hold) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(spans) == 8 and all(pinned) and not _overlaps(spans)
    assert {i for i, _, _ in spans} <= {0, 1, 2}
    assert os.sched_getaffinity(0) == before  # restored after the slot


HOLDER = """
import importlib.util, os, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("cores", sys.argv[2])  # the module alone: no torch to import
cores = sys.modules["cores"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cores)
core = min(os.sched_getaffinity(0))
with cores.hold_slot(Path(sys.argv[1]), (core, core), 1, poll_s=0.01) as slot:
    t0 = time.time()
    ok = os.sched_getaffinity(0) == set(slot.cores)
    time.sleep(0.4)
    print(slot.index, t0, time.time(), ok)
"""


def test_concurrent_processes_never_share_a_slot(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), cores.__file__], stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    spans = [(int(o[0]), float(o[1]), float(o[2])) for o in outs]
    assert all(o[3] == "True" for o in outs) and not _overlaps(spans)


def test_cores_per_job_and_jobs_at_once():
    assert cores.cores_per_job((0, 1, 2, 3), 2, None) == 2
    assert cores.cores_per_job((0, 1, 2, 3), 8, None) == 1
    assert cores.cores_per_job((0, 1, 2, 3), 2, 3) == 3
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert cores.parallel_jobs(joblib, -1, 10, (0, 1, 2, 3)) == 4
    assert cores.parallel_jobs(joblib, 2, 10, (0, 1, 2, 3)) == 2
    assert cores.parallel_jobs("x.SlurmLauncher", None, 10, (0, 1)) is None
    assert cores.parallel_jobs("hydra._internal.core_plugins.basic_launcher.BasicLauncher", None, 10, (0, 1)) == 1
    assert cores.parallel_jobs("x.LocalLauncher", None, 6, (0, 1)) == 6


# -- job records, rows, the report's list ------------------------------------------------------
def test_a_job_whose_process_died_becomes_a_crash_row(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "0").mkdir()
    jobs.write_job(tmp_path / "0", {"command": "run", "job": 0, "status": jobs.RUNNING, "host": os.uname().nodename,
                                    "pid": dead.pid, "overrides": ["+flag.seed=1"], "argv": ["run"]})
    [r] = jobs.settle(tmp_path)
    assert r["status"] == "crash"
    [row] = results.read_rows(tmp_path / "0" / "results.jsonl")
    assert is_sweep_job_row(row) and row["status"] == "crash" and "killed" in row["reasons"][0]


def test_results_files_in_job_order_and_the_failed_jobs_section(tmp_path):
    for n in (0, 2, 10):
        (tmp_path / str(n)).mkdir()
        (tmp_path / str(n) / "results.jsonl").write_text("")
    assert [f.parent.name for f in results_files(tmp_path)] == ["0", "2", "10"]
    assert sweep_files(tmp_path) == []  # not a sweep: no sweep.json
    (tmp_path / "sweep.json").write_text("{}")
    assert sweep_files(tmp_path) == results_files(tmp_path)
    row = make_row(command="stats", job=2, overrides=["+flag.seed=-1"], status="error",
                   reasons=["--seed -1: must be | at least 0", "exit code 2"], exit_code=2, wall_s=0.2)
    (tmp_path / "2" / "results.jsonl").write_text(json.dumps(row) + "\n")
    text = "\n".join(sweep_jobs.lines_for([tmp_path]))
    assert "## Sweep jobs that failed" in text and "seed=-1" in text and "must be \\| at least 0" in text
    assert sweep_jobs.lines([]) == []


# -- tiny sweeps through hydra ----------------------------------------------------------------
def _report_loads(d: Path, monkeypatch):
    """report's loader over the sweep directory. Until build.py sets sweep_job rows apart itself
    (the hook: ``raw = [r for r in read_rows(f) if not is_sweep_job_row(r)]`` in ``_read_run``),
    the hook is put in place here."""
    with monkeypatch.context() as m:
        if "is_sweep_job_row" not in inspect.getsource(build):
            read = results.read_rows
            m.setattr(results, "read_rows", lambda p: [r for r in read(p) if not is_sweep_job_row(r)])
        return build.load([d])


def _check_sweep(d: Path, code: int, monkeypatch) -> dict[int, dict]:
    assert code == 1  # two jobs failed
    recs = records(d)
    assert len(recs) == 6
    failed = {n for n, r in recs.items() if r["status"] != "ok"}
    assert len(failed) == 2
    for n, r in recs.items():
        rows = results.read_rows(d / str(n) / "results.jsonl")
        if n in failed:
            [row] = [x for x in rows if is_sweep_job_row(x)]
            assert row["status"] == "error" and row["exit_code"] == 2 and "nosuch" in row["reasons"][0]
            assert "variants=nosuch" in " ".join(r["swept"])
        else:
            assert rows and all(x.get("row_kind") == "stats" for x in rows) and r["rows_written"] == len(rows)
            assert r["argv"][r["argv"].index("--out") + 1] == str(d / str(n))  # its own directory
    loaded = _report_loads(d, monkeypatch)
    assert {(x["variant"].split("@")[0], x["seed"]) for x in loaded.stats_rows} == \
        {(v, s) for v in ("full", "sliding_window") for s in (0, 1)}
    assert sum(line.startswith("| `") for line in sweep_jobs.lines_for([d])) == 2  # a row per failed job
    return recs


def test_stats_sweep_joblib_keeps_every_other_job_and_resume_reruns_only_what_is_not_ok(tmp_path, parser, monkeypatch):
    d = tmp_path / "s"
    code = sweep(parser, "stats", [*TINY, *GRID, "--out", str(d), "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    recs = _check_sweep(d, code, monkeypatch)
    ok = sorted(n for n, r in recs.items() if r["status"] == "ok")
    (d / str(ok[0]) / "job.json").unlink()  # as if that job had never ended
    kept = {n: [(d / str(n) / f).stat().st_mtime_ns for f in ("job.json", "results.jsonl")] for n in ok[1:]}
    assert sweep(parser, "stats", ["--out", str(d), "--resume", "hydra/launcher=basic"]) == 1  # replaces joblib
    again = records(d)
    assert {n: [(d / str(n) / f).stat().st_mtime_ns for f in ("job.json", "results.jsonl")] for n in ok[1:]} == kept
    assert again[ok[0]]["status"] == "ok" and again[ok[0]]["launcher"] == "BasicLauncher"
    for n, r in again.items():
        if recs[n]["status"] != "ok":  # rerun, failed again: the earlier attempt in job.json, one row in the file
            assert len(r["attempts"]) == 1 and r["attempts"][0]["sweep_job_rows"]
            assert sum(map(is_sweep_job_row, results.read_rows(d / str(n) / "results.jsonl"))) == 1
    sweep_json = json.loads((d / "sweep.json").read_text())
    assert [x["resume"] for x in sweep_json["launches"]] == [False, True]


@pytest.mark.slow
def test_stats_sweep_submitit_local(tmp_path, parser, monkeypatch):
    d = tmp_path / "s"
    code = sweep(parser, "stats", [*TINY, *GRID, "--out", str(d), "hydra/launcher=submitit_local",
                                   "hydra.launcher.timeout_min=2", "hydra.launcher.gpus_per_node=0"])
    recs = _check_sweep(d, code, monkeypatch)
    assert {r["launcher"] for r in recs.values()} == {"LocalLauncher"}
    assert len({r["pid"] for r in recs.values()}) == 6  # a process per job


@pytest.mark.slow
def test_run_sweep_jobs_hold_core_slots(tmp_path, parser):
    d = tmp_path / "r"
    code = sweep(parser, "run", ["--variants", "full@naive", "--seq-lens", "64", "--mode", "fwd", "--heads", "2",
                                 "--head-dim", "8", "--batch", "1", "--no-check", "timing.budget_s=0.05", "seed=0,1",
                                 "--out", str(d), "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert code == 0
    pool = sorted(os.sched_getaffinity(0))
    per_job = max(1, len(pool) // 2)
    for r in records(d).values():
        assert r["status"] == "ok" and r["slot"] is not None and len(r["cores"]) == per_job
        assert set(r["cores"]) <= set(pool) and r["threads"] == per_job
        assert r["argv"][r["argv"].index("--threads") + 1] == str(per_job)
        [row] = results.read_rows(d / str(r["job"]) / "results.jsonl")
        assert row["status"] == "ok" and row["threads"] == per_job
