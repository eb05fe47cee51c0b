"""DeiT's hard distillation in the trainer: a teacher trained a few steps on a tiny vision task,
a student ViT that distills from it (loss finite and falling, the teacher's argmax its targets),
and the one-line errors for a missing or mismatched teacher."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnbench.models import build_model
from attnbench.results import read_rows
from attnbench.train import batches, distill, tasks
from attnbench.train.loop import Job, model_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one torch thread (conftest.one_thread)."""

# digits at 8x8, patch 2: a 4x4 grid; one block; 40 steps
TINY = ["data.side=8", "model.d_model=16", "model.heads=2", "model.layers=1", "model.mlp=32", "model.patch=2",
        "train.steps=40", "train.eval_every=20", "train.batch_size=32", "train.warmup_steps=5"]
PVT = ["model.arch=pvt", "model.depths=[1,1]", "model.sr_ratios=[2,1]"]  # any arch can teach


def _spec(variant: str, extra=()) -> dict:
    cfg = tasks.load("vision", "small", [*TINY, *extra])
    return {"job": "test", "variant": variant, "params": {}, "seed": 0, "config": cfg}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A PVT trained 40 steps, its directory laid out as a `train` job's (job.json, best.pt)."""
    d = tmp_path_factory.mktemp("teacher")
    spec = _spec("full", PVT)
    job = Job(spec, d)
    job.run()
    job.finish()
    (d / "job.json").write_text(json.dumps(spec, default=str))  # what the runner writes
    return d


def test_student_distills_from_the_teachers_argmax(tmp_path, teacher_dir, monkeypatch):
    seen = []
    real = distill.loss

    def spy(cls_logits, dist_logits, y, targets):
        seen.append(targets.clone())
        return real(cls_logits, dist_logits, y, targets)

    monkeypatch.setattr(distill, "loss", spy)
    job = Job(_spec("full", ["model.distill=true", f"train.teacher={teacher_dir}"]), tmp_path)
    job.run()
    res = job.finish()
    losses = [c[1] for c in res["curve"]]
    assert len(seen) == 40 and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    # step 0's targets: the teacher's argmax on step 0's batch, the teacher rebuilt here on its own
    t_spec = json.loads((teacher_dir / "job.json").read_text())
    teacher = build_model("classify", model_config(t_spec["config"], job.data, "full", {}))
    teacher.load_state_dict(torch.load(teacher_dir / "best.pt"))
    x, y = batches.take(job.data.train, batches.shuffled(len(job.data.train), 32, 0, 0))
    with torch.no_grad():
        want = teacher.eval()(x)[0].argmax(-1)
    assert torch.equal(seen[0], want) and not torch.equal(want, y)  # a weak teacher: not the labels
    info = res["extra_metrics"]["teacher"]
    assert info["arch"] == "pvt" and info["variant"] == "full" and 0 <= info["test"] <= 1
    assert res["extra_metrics"]["arch"] == "vit" and job.model.record["distill"]
    # the teacher is frozen: its weights are those of its best.pt
    best = torch.load(teacher_dir / "best.pt")
    assert all(torch.equal(best[k], v) for k, v in job.teacher.state_dict().items())


def test_teacher_errors_are_one_line(tmp_path, teacher_dir):
    with pytest.raises(distill.TeacherError, match=f"train.teacher {tmp_path / 'nope'}: .*best.pt missing; expected"):
        distill.read_teacher(tmp_path / "nope")
    with pytest.raises(distill.TeacherError, match="model.distill needs train.teacher"):
        Job(_spec("full", ["model.distill=true"]), tmp_path / "a")
    with pytest.raises(distill.TeacherError, match="needs model.distill=true"):
        Job(_spec("full", [f"train.teacher={teacher_dir}"]), tmp_path / "b")
    other = tmp_path / "other"  # the PVT's weights under a job.json describing a wider PVT
    other.mkdir()
    (other / "best.pt").write_bytes((teacher_dir / "best.pt").read_bytes())
    (other / "job.json").write_text(json.dumps(_spec("full", [*PVT, "model.d_model=32"]), default=str))
    with pytest.raises(distill.TeacherError, match=f"train.teacher {other / 'best.pt'}: its weights do not fit"):
        Job(_spec("full", ["model.distill=true", f"train.teacher={other / 'best.pt'}"]), tmp_path / "c")


def test_train_checks_arch_and_teacher_before_any_job(tmp_path):
    from attnbench.train.command import TrainUsageError, check_model_choices

    with pytest.raises(TrainUsageError, match=r"model.arch 'swim' not allowed \(did you mean 'swin'\?\); allowed: "
                                              r"encoder, vit, swin, pvt"):
        check_model_choices({"vision": tasks.load("vision", "small", ["model.arch=swim"])})
    with pytest.raises(TrainUsageError, match="train.teacher"):
        check_model_choices({"vision": tasks.load("vision", "small", [f"train.teacher={tmp_path}"])})


def test_train_cli_refuses_a_missing_teacher_before_any_job(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "attnbench", "train", "--task", "vision", "--variants", "full",
                        "--out", str(out), "model.distill=true", f"train.teacher={tmp_path / 'gone'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and str(tmp_path / "gone") in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.slow
def test_train_cli_teacher_from_an_earlier_run(tmp_path):
    """End to end: a Swin trained by `train`, then a DeiT student naming that job's directory."""
    def train(out: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "attnbench", "train", "--task", "vision", "--variants", "full", "--seeds", "0",
               "--threads", "1", "--out", str(out), *TINY, *extra]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr

    train(tmp_path / "teacher", "model.arch=swin", "model.depths=[1,1]")
    job_dir = next((tmp_path / "teacher" / "jobs").iterdir())
    train(tmp_path / "student", "model.distill=true", f"train.teacher={job_dir}")
    row = read_rows(tmp_path / "student" / "results.jsonl")[0]
    assert row["status"] == "ok", row["reasons"]
    assert row["extra_metrics"]["teacher"]["arch"] == "swin" and row["config"]["model"]["distill"]
