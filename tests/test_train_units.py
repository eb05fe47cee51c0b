"""The trainer's parts against answers known by hand: batch order, schedule, checkpoints,
task configs and their errors, the accuracy table."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from attnbench.report import accuracy
from attnbench.train import batches, checkpoint, tasks
from attnbench.train.loop import lr_lambda
from attnbench.train.schema import make_row


def test_shuffled_batches_cover_each_epoch_once_and_depend_only_on_seed_and_step():
    n, bs = 10, 4
    seen = torch.cat([batches.shuffled(n, bs, seed=3, step=s) for s in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(batches.shuffled(n, bs, 3, 2), batches.shuffled(n, bs, 3, 2))
    assert not torch.equal(torch.cat([batches.shuffled(n, bs, 3, s) for s in range(3)]),
                           torch.cat([batches.shuffled(n, bs, 4, s) for s in range(3)]))


def test_stream_batches_continue_each_stream():
    # 10 windows, 3 streams of 3 windows (the 10th is dropped): stream b reads 3b, 3b+1, 3b+2
    got = [batches.stream(10, 3, s) for s in range(4)]
    assert [g[0].tolist() for g in got] == [[0, 3, 6], [1, 4, 7], [2, 5, 8], [0, 3, 6]]
    assert [g[1] for g in got] == [True, False, False, True]
    with pytest.raises(ValueError, match="cannot feed a batch of 5"):
        batches.stream(4, 5, 0)


def test_schedule_warmup_then_cosine():
    f = lr_lambda(warmup=4, total=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    r = lr_lambda(warmup=100, total=0, min_ratio=0, kind="rsqrt")  # LRA: 0.05 x this
    assert r(49) == pytest.approx(0.5 / 10) and r(99) == pytest.approx(1 / 10) and r(399) == pytest.approx(1 / 20)
    with pytest.raises(ValueError, match="train.schedule 'linear'; allowed: cosine, rsqrt"):
        lr_lambda(1, 2, 0, "linear")


def test_checkpoint_is_atomic_and_restores_rng(tmp_path):
    p = tmp_path / "c.pt"
    checkpoint.save({"a": torch.arange(3)}, p)
    assert not (tmp_path / "c.pt.tmp").exists()
    assert torch.equal(checkpoint.load(p)["a"], torch.arange(3))
    checkpoint.seed_all(5)
    s = checkpoint.rng_state()
    a = (torch.rand(3), __import__("random").random())
    checkpoint.set_rng_state(s)
    assert torch.equal(torch.rand(3), a[0]) and __import__("random").random() == a[1]


def test_every_task_loads_at_both_sizes():
    for name in tasks.task_names():
        for size in tasks.SIZES:
            cfg = tasks.load(name, size)
            assert cfg["data"]["_target_"].startswith("attnbench.data.")
            assert cfg["metric"]["name"] in tasks.METRICS and cfg["size"] == size


def test_task_errors_name_the_value_and_what_is_allowed():
    name = tasks.task_names()[0]
    with pytest.raises(tasks.TaskError, match="no such task.*tasks: "):
        tasks.load("listopz")
    with pytest.raises(tasks.TaskError, match="--size 'huge': allowed: small, paper"):
        tasks.load(name, "huge")
    with pytest.raises(tasks.TaskError, match="has no key 'train.lrr'.*did you mean train.lr"):
        tasks.load(name, "small", ["train.lrr=0.1"])
    assert tasks.load(name, "small", ["train.lr=0.5"])["train"]["lr"] == 0.5  # an override wins over the size


def _row(variant, task, seed, test, status="ok", n_params=100):
    pattern = variant.split("@")[0]
    return make_row(job=f"{task}-{variant}-{seed}", task=task, size="small", variant=variant, pattern=pattern,
                    kernel=variant.split("@")[1], params={}, param_label="", seed=seed, status=status, reasons=[],
                    metric="accuracy", higher_is_better=True, test=test if status == "ok" else None,
                    n_params=n_params, param_deviation=0.0, wall_s=1.0, steps_per_s=2.0,
                    extra_metrics={"majority": 0.5, "chance": 0.1})


def test_accuracy_table_mean_std_and_average_by_hand():
    rows = [_row("full@sdpa", "a", 0, 0.5), _row("full@sdpa", "a", 1, 0.7), _row("full@sdpa", "b", 0, 0.9),
            _row("linear@elu", "a", 0, 0.4), _row("linear@elu", "a", 1, 0.0, status="diverged"),
            _row("linear@elu", "b", 0, 0.2)]
    t = accuracy.table(accuracy.frame(rows))
    body = {r[0]: r for r in t.rows}
    # full on a: mean 0.6, sample std sqrt(0.02) = 0.1414 -> 60.00 ± 14.14 (n=2)
    assert body["full"][2] == "60.00 ± 14.14 (n=2)"
    assert body["linear"][2] == "40.00 (n=1) [s1 diverged]"
    assert t.header[-1] == "average (%)"
    assert body["full"][-1] == "75.00" and body["linear"][-1] == "30.00"  # (60 + 90) / 2, (40 + 20) / 2
    assert accuracy.reference_lines(accuracy.frame(rows)) == ["a: chance 10.0%, majority class 50.0% of test",
                                                             "b: chance 10.0%, majority class 50.0% of test"]
    assert isinstance(t.csv, pd.DataFrame) and set(t.csv["n"]) == {1, 2}


def test_jobs_of_two_archs_neither_share_a_directory_nor_replace_each_others_rows():
    from attnbench import catalog
    from attnbench.train.runner import JobPlan
    from attnbench.train.schema import job_key

    cfg = {"version": 1, "model": {"arch": "vit"}}
    vit = JobPlan("vision", "small", catalog.get("full"), {}, 0, cfg)
    swin = JobPlan("vision", "small", catalog.get("full"), {}, 0, {**cfg, "model": {"arch": "swin"}})
    enc = JobPlan("listops", "small", catalog.get("full"), {}, 0, {"version": 1, "model": {}})
    assert vit.job_id == "vision-vit-small-full@sdpa-s0" and swin.job_id != vit.job_id
    assert vit.key() != swin.key()
    assert enc.job_id == "listops-small-full@sdpa-s0"  # encoder jobs keep the ids of runs made before arch
    old_row = {"task": "listops", "size": "small", "variant": "full@sdpa", "params": {}, "seed": 0}  # version 1
    assert job_key(old_row) == enc.key()
