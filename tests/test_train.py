"""The trainer's mechanics on a trivially learnable task (the class is the first token): loss
falls, a resumed job ends with exactly the uninterrupted job's numbers, the best-validation
weights are the ones tested, and every failure is a row while the other jobs go on."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attnbench.results import read_rows
from attnbench.train import tasks
from attnbench.train.loop import Job

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "fixtures" / "tasks"


def spec(variant: str = "full", seed: int = 0, **train) -> dict:
    cfg = tasks.load("tiny", "small", [f"train.{k}={v}" for k, v in train.items()], TASKS)
    return {"variant": variant, "params": {}, "seed": seed, "config": cfg}


def trained(tmp: Path, s: dict, stop_after: int | None = None) -> Job:
    tmp.mkdir(parents=True, exist_ok=True)
    job = Job(s, tmp)
    if stop_after is not None:
        real, calls = job._step, []

        def step(i):
            if len(calls) == stop_after:
                raise KeyboardInterrupt("killed")  # what a kill between two checkpoints leaves
            calls.append(i)
            return real(i)

        job._step = step
    job.run()
    return job


def test_loss_falls_and_the_best_checkpoint_is_tested(tmp_path):
    job = trained(tmp_path, spec())
    res = job.finish()
    curve = res["curve"]
    assert [c[0] for c in curve] == [10, 20, 30, 40] and res["steps"] == 40
    assert curve[-1][1] < 0.5 * curve[0][1], curve  # mean training loss per window
    assert res["best_val"] == max(c[2] for c in curve) and res["best_val"] > 0.9
    assert curve[[c[2] for c in curve].index(res["best_val"])][0] == res["best_step"]
    assert 0 <= res["test"] <= 1 and res["test_count"] == 64
    assert res["test_se"] == pytest.approx((res["test"] * (1 - res["test"]) / 64) ** 0.5)
    assert res["param_deviation"] == 0.0 and res["extra_metrics"]["chance"] == 0.25


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path):
    whole = trained(tmp_path / "whole", spec())
    a = whole.finish()
    with pytest.raises(KeyboardInterrupt):
        trained(tmp_path / "cut", spec(), stop_after=17)  # checkpoint at step 10, killed in step 18
    job = Job(spec(), tmp_path / "cut")
    assert job.restore() and job.st.step == 10
    job.run()
    b = job.finish()
    assert b["resumed"] == 1 and a["resumed"] == 0
    for k in ("curve", "best_val", "best_step", "test", "final_loss", "steps"):
        assert a[k] == b[k], k
    for (name, p), q in zip(whole.model.state_dict().items(), job.model.state_dict().values()):
        assert torch.equal(p, q), name


def test_divergence_is_a_status(tmp_path):
    from attnbench.train.loop import Diverged

    with pytest.raises(Diverged, match="training loss"):
        trained(tmp_path, spec(lr=1e4, clip_norm="null", warmup_steps=1, diverge_factor=1.5))


def _train_cli(out: Path, *extra: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "attnbench", "train", "--task", "tiny", "--tasks-dir", str(TASKS), "--out", str(out),
           "--threads", "1", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **popen)


def test_train_cli_failures_are_rows_and_others_go_on(tmp_path):
    out = tmp_path / "run"
    # a fairness limit that MQA's smaller K/V projections break: refused before training, a row
    p = _train_cli(out, "--variants", "full,xl,mqa", "--seeds", "0", "train.steps=10", "train.eval_every=5",
                   "train.fairness_limit=0.001")
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr
    rows = read_rows(out / "results.jsonl")
    by = {(r["variant"], r["seed"]): r for r in rows}
    assert set(by) == {(v, 0) for v in ("full@sdpa", "xl@segment", "mqa@sdpa")}
    assert by[("full@sdpa", 0)]["status"] == "ok"
    xl = by[("xl@segment", 0)]
    assert xl["status"] == "unsupported" and "causal" in " ".join(xl["reasons"])  # an encoder is not causal
    mqa = by[("mqa@sdpa", 0)]
    assert mqa["status"] == "unsupported" and "fairness rule" in mqa["reasons"][0]
    assert "| full |" in stdout and "mqar" not in stdout
    assert (out / "results.parquet").is_file() and json.loads((out / "run.json").read_text())["kind"] == "train"


@pytest.mark.slow
def test_train_cli_kill_and_resume_equals_uninterrupted(tmp_path):
    """SIGKILL of the whole command once the job wrote its first checkpoint; --resume ends with
    the numbers of an uninterrupted run (steps after the checkpoint are recomputed from it)."""
    over = ["train.steps=300", "train.eval_every=20"]
    ref = _train_cli(tmp_path / "ref", "--variants", "full", *over)
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    cut = _train_cli(tmp_path / "cut", "--variants", "full", *over)
    ckpt = next((tmp_path / "cut").glob("jobs/*/last.pt"), None)
    deadline = time.monotonic() + 300
    while ckpt is None and time.monotonic() < deadline:
        time.sleep(0.05)
        ckpt = next((tmp_path / "cut").glob("jobs/*/last.pt"), None)
    os.killpg(cut.pid, signal.SIGKILL)
    cut.wait()
    assert not (tmp_path / "cut" / "results.jsonl").exists(), "the job finished before the kill"
    res = _train_cli(tmp_path / "cut", "--resume")
    assert res.wait(timeout=600) == 0, res.stderr.read()
    a, = read_rows(tmp_path / "ref" / "results.jsonl")
    b, = read_rows(tmp_path / "cut" / "results.jsonl")
    assert b["resumed"] == 1 and a["resumed"] == 0
    for k in ("curve", "best_val", "best_step", "test", "final_loss", "steps", "config_hash"):
        assert a[k] == b[k], k


@pytest.mark.parametrize("args, message", [
    (["--task", "listopz"], "--task 'listopz': no such task (did you mean 'listops'?)"),
    (["--task", "listops", "--size", "huge"], "--size 'huge': allowed: small, paper"),
    (["--task", "listops", "train.lrr=1"], "has no key 'train.lrr' (did you mean train.lr or"),
    (["--task", "listops", "--variants", "sliding_window[window=-1]"], "window=-1 is not allowed"),
    (["--task", "listops", "--seeds", "a"], "--seeds 'a': must be an integer"),
    (["--task", "text", "--size", "paper"], "aclImdb"),  # the release files are not here: path and layout
    (["--resume"], "needs --out"),
])
def test_train_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    from attnbench.cli import main

    out = [] if args == ["--resume"] else ["--out", str(tmp_path / "run")]
    assert main(["train", *out, *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnbench: error: ") and message in lines[-1], lines
    assert not (tmp_path / "run").exists()  # nothing written


def test_train_refuses_an_existing_run_without_resume(tmp_path, capsys):
    from attnbench.cli import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.jsonl").write_text("")
    assert main(["train", "--task", "listops", "--out", str(tmp_path / "run")]) == 2
    assert "holds a run already: continue it with --resume" in capsys.readouterr().err


def test_data_command_writes_the_release_format_and_train_reads_it_back(tmp_path, cli_in_process):
    from attnbench.data import listops

    r = cli_in_process("data", "listops", "--out", str(tmp_path / "lo"), "--seed", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "lo").iterdir()) == ["basic_test.tsv", "basic_train.tsv", "basic_val.tsv"]
    assert (tmp_path / "lo" / "basic_val.tsv").read_text().startswith("Source\tTarget")
    cfg = tasks.load("listops", "small", [f"data.root={tmp_path / 'lo'}"])
    knobs = {k: v for k, v in cfg["data"].items() if k not in ("_target_", "root")}
    read = listops.build(root=tmp_path / "lo", seq_len=knobs["seq_len"])
    made = listops.build(**{**knobs, "seed": 3})
    assert torch.equal(read.train.x, made.train.x) and torch.equal(read.test.y, made.test.y)


@pytest.mark.slow
def test_train_job_deaths_are_rows(tmp_path):
    """Kernels that segfault, hang, raise or ask for a PiB inside a training job: each is its
    job's row (crash, timeout, error, oom) and full attention's job beside them is ok."""
    out = tmp_path / "run"
    plugin = str(ROOT / "tests" / "fixtures" / "trust_kernels.py")
    p = _train_cli(out, "--plugin", plugin, "--variants", "test@segfault,test@hang,test@raise,test@oom,full",
                   "--timeout", "10", "train.steps=4", "train.eval_every=2")
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr
    status = {r["variant"]: (r["status"], " ".join(r["reasons"])) for r in read_rows(out / "results.jsonl")}
    assert status["test@segfault"][0] == "crash" and "SIGSEGV" in status["test@segfault"][1]
    assert status["test@hang"][0] == "timeout" and "--resume continues it" in status["test@hang"][1]
    assert status["test@raise"][0] == "error" and "boom" in status["test@raise"][1]
    assert status["test@oom"][0] == "oom"
    assert status["full@sdpa"][0] == "ok"
