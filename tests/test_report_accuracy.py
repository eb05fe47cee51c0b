"""``attnbench report`` on training rows: the accuracy section against numbers known by hand.

Training rows (2 tasks x 3 variants x 2 seeds, accuracy):
  task a: full 0.50, 0.70 | linear 0.40, diverged | window 0.55, 0.65
  task b: full 0.80, 0.90 | linear 0.60, 0.70     | window refused by the fairness rule (both seeds)
  averages: full (0.60 + 0.85) / 2 = 0.725, linear (0.40 + 0.65) / 2 = 0.525, window none
Kernel rows on the same machine (fwd, cpu): full@sdpa t = 1e-6 n^2 ms, memory 1000 n bytes at
n = 512, 1024, 2048; linear@elu t = 2e-4 n ms, memory 500 n, OOM at 2048: its bubble sits at
n = 1024, speed 1e-6 * 1024^2 / (2e-4 * 1024) = 5.12.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from attnbench import schema as KS
from attnbench.cli import main as cli_main
from attnbench.report import build as B
from attnbench.train.schema import make_row

HOST, CPU = "testhost", "Test CPU"
FAIR_REASON = ("1180 parameters, +18.0% against full attention's 1000 in the same skeleton (position tables "
               "aside), outside LRA's fairness rule of ±10% (train.fairness_limit)")
TESTS = {("a", "full@sdpa"): (0.50, 0.70), ("a", "linear@elu"): (0.40, None), ("a", "window@blocked"): (0.55, 0.65),
         ("b", "full@sdpa"): (0.80, 0.90), ("b", "linear@elu"): (0.60, 0.70), ("b", "window@blocked"): None}
PARAMS = {"full@sdpa": (1000, 0), "linear@elu": (1050, 0), "window@blocked": (1080, 20)}  # n_params, own


def _train_row(task: str, variant: str, seed: int, test: float | None, status: str = "ok", **extra) -> dict:
    pattern, kernel = variant.split("@")
    n, own = PARAMS[variant]
    counted = dict(n_params=n, full_params=1000, param_deviation=n / 1000 - 1, own_params=own) \
        if status != "unsupported" else {}
    curve = [[10, 1.0, 0.3], [20, 0.8, (test or 0.4) - 0.05], [30, 0.7, test or 0.4]] if status == "ok" else None
    return make_row(job=f"{task}-small-{variant}-s{seed}", task=task, task_version=1, size="small", variant=variant,
                    pattern=pattern, kernel=kernel, family="dense", params={}, param_label="", seed=seed,
                    status=status, reasons=extra.pop("reasons", []), metric="accuracy", higher_is_better=True,
                    test=test, test_se=0.01 if test is not None else None, best_val=test, best_step=30 if test else None,
                    steps=30, steps_per_s=10.0 + seed, tokens_per_s=1000.0 * (10.0 + seed),
                    peak_mem_bytes=(100 + 10 * seed) * 2 ** 20, wall_s=3.0 + seed, device="cpu", curve=curve,
                    extra_metrics={"chance": 0.5, "majority": 0.55}, config_hash=f"cfg-{task}", **counted, **extra)


def train_rows() -> list[dict]:
    rows = []
    for (task, variant), tests in TESTS.items():
        for seed in (0, 1):
            if tests is None:
                rows.append(_train_row(task, variant, seed, None, "unsupported", reasons=[FAIR_REASON]))
            elif tests[seed] is None:
                rows.append(_train_row(task, variant, seed, None, "diverged", reasons=["loss became nan at step 12"]))
            else:
                rows.append(_train_row(task, variant, seed, tests[seed]))
    return rows


def _kernel_row(variant: str, n: int, t: float | None, mem: float | None, status: str = "ok") -> dict:
    pattern, kernel = variant.split("@")
    return KS.make_row(variant=variant, pattern=pattern, kernel=kernel, family="dense", exact=True, params={},
                       param_label="", mode="fwd", seq_len=n, q_len=n, kv_len=n, batch=1, heads=2, kv_heads=2,
                       head_dim=16, dtype="float32", device="cpu", causal=False, status=status,
                       reasons=[] if status == "ok" else [f"{status} at n={n}"], time_ms_median=t,
                       time_ms_iqr=0.01 * t if t else None, repeats=5, samples_ms=[t] * 5 if t else None,
                       peak_mem_bytes=mem, flops=4.0 * 2 * 16 * n * n, threads=2)


def kernel_rows() -> list[dict]:
    rows = []
    for n in (512, 1024, 2048):
        rows.append(_kernel_row("full@sdpa", n, 1e-6 * n * n, 1000.0 * n))
        rows.append(_kernel_row("linear@elu", n, 2e-4 * n, 500.0 * n) if n < 2048 else
                    _kernel_row("linear@elu", n, None, None, "oom"))
        rows.append(_kernel_row("window@blocked", n, 0.5e-6 * n * n, 800.0 * n))
    return rows


def write_rows(d: Path, rows: list[dict], info: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "run.json").write_text(json.dumps(info))
    return d


def train_run(d: Path) -> Path:
    return write_rows(d, train_rows(), {"kind": "train", "environment": {"hostname": HOST, "cpu_model": CPU}})


def kernel_run(d: Path, cpu: str = CPU) -> Path:
    return write_rows(d, kernel_rows(), {"schema_version": 3, "hostname": HOST, "cpu_model": cpu, "device": "cpu",
                                         "device_name": cpu, "started_at": "2026-01-01T00:00:00+00:00"})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A directory of two runs: training and kernel, same machine."""
    root = tmp_path_factory.mktemp("acc") / "sweep"
    train_run(root / "train")
    kernel_run(root / "kernel")
    return root


@pytest.fixture(scope="module")
def mixed(sweep, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rep") / "mixed"
    B.build_report([sweep], out, figures=True)
    return out


def _csv(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / "tables" / f"{name}.csv")


def test_training_only_report_has_no_kernel_tables_and_the_numbers_by_hand(tmp_path, capsys):
    run = train_run(tmp_path / "train")
    out = tmp_path / "rep"
    assert cli_main(["report", str(run), "--out", str(out), "--no-figures"]) == 0
    tables = sorted(p.name for p in (out / "tables").iterdir())
    assert tables == sorted(f"{n}.{e}" for n in ("accuracy", "accuracy_per_seed", "params", "train_cost")
                            for e in ("md", "tex", "csv"))
    acc = _csv(out, "accuracy").set_index(["label", "task"])
    assert acc.loc[("full", "a"), "mean"] == pytest.approx(0.6)
    assert acc.loc[("full", "a"), "std"] == pytest.approx(0.02 ** 0.5, rel=1e-5)
    assert acc.loc[("linear", "a"), ["mean", "n"]].tolist() == pytest.approx([0.4, 1])
    assert json.loads(acc.loc[("linear", "a"), "failed"]) == {"1": "diverged"}
    assert acc.loc[("window", "b"), "n"] == 0 and json.loads(acc.loc[("window", "b"), "failed"]) == \
        {"0": "unsupported", "1": "unsupported"}
    assert acc.loc[("full", "b"), "average"] == pytest.approx(0.725)
    assert acc.loc[("linear", "b"), "average"] == pytest.approx(0.525)
    assert pd.isna(acc.loc[("window", "a"), "average"])
    md = (out / "tables" / "accuracy.md").read_text()
    assert "| full | 1,000 | 60.00 ± 14.14 (n=2) | 85.00 ± 7.07 (n=2) | 72.50 |" in md
    assert "40.00 (n=1) [s1 diverged]" in md and "average: mean of the per-task means" in md.lower()
    assert "a: chance 50.0%, majority class 55.0% of test" in md

    params = _csv(out, "params").set_index(["task", "label"])
    assert params.loc[("a", "linear"), "param_deviation"] == pytest.approx(0.05)
    assert params.loc[("a", "window"), ["n_params", "own_params"]].tolist() == [1080, 20]
    assert params.loc[("a", "window"), "verdict"] == "within ±10%"
    assert params.loc[("b", "window"), "verdict"] == "refused (fairness rule)"
    assert params.loc[("b", "window"), "reason"] == FAIR_REASON and pd.isna(params.loc[("b", "window"), "n_params"])

    cost = _csv(out, "train_cost").set_index(["task", "label"])
    assert cost.loc[("a", "linear"), ["jobs", "ok", "wall_s_mean", "steps_per_s"]].tolist() == [2, 1, 3.5, 10.0]
    assert cost.loc[("a", "full"), "tokens_per_s"] == pytest.approx(10500.0)
    assert cost.loc[("a", "full"), "peak_mem_mib"] == pytest.approx(110.0)

    seeds = _csv(out, "accuracy_per_seed")
    assert len(seeds) == 12 and set(seeds["status"]) == {"ok", "diverged", "unsupported"}
    assert "| a | linear | 1 | diverged | div |" in (out / "tables" / "accuracy_per_seed.md").read_text()

    readme = (out / "README.md").read_text()
    assert "no kernel tables" in readme and "best-validation checkpoint" in readme
    assert "Average: mean of the per-task means" in readme and "No accuracy–speed–memory bubble chart" in readme
    assert not any(n.startswith(("time_", "speedup_")) for n in tables)


def test_mixed_report_draws_the_bubble_chart_at_the_rule_s_coordinates(mixed):
    figs = {p.name for p in (mixed / "figures").iterdir()}
    assert {"accuracy_bubble.png", "val_curve_a.png", "val_curve_b.png"} <= figs
    assert any(n.startswith("time_fwd") for n in figs)  # the kernel rows' own figures are still there
    pts = _csv(mixed, "accuracy_speed_memory").set_index("label")
    assert sorted(pts.index) == ["full", "linear"]  # window has no average: no bubble
    assert pts.loc["full", ["n", "speed_vs_baseline", "accuracy"]].tolist() == pytest.approx([2048, 1.0, 0.725])
    assert pts.loc["full", "peak_mem_mib"] == pytest.approx(1000 * 2048 / 2 ** 20, rel=1e-5)
    assert pts.loc["linear", ["n", "speed_vs_baseline", "accuracy"]].tolist() == pytest.approx([1024, 5.12, 0.525])
    assert pts.loc["linear", "peak_mem_mib"] == pytest.approx(500 * 1024 / 2 ** 20, rel=1e-5)
    md = (mixed / "tables" / "accuracy_speed_memory.md").read_text()
    assert "window: no bubble" in md and "Test CPU on host testhost" in md
    readme = (mixed / "README.md").read_text()
    assert "## Training runs: accuracy" in readme and "figures/accuracy_bubble.png" in readme
    assert (mixed / "figures" / "accuracy_bubble.png").stat().st_size > 10_000


def test_kernel_rows_of_another_machine_give_no_bubble_and_say_why(tmp_path):
    out = tmp_path / "rep"
    B.build_report([train_run(tmp_path / "t"), kernel_run(tmp_path / "k", cpu="Other CPU")], out, figures=False)
    assert not (out / "tables" / "accuracy_speed_memory.csv").exists()
    assert "no fwd kernel rows from the training machine (Test CPU on host testhost" in (out / "README.md").read_text()


def test_kernel_only_report_is_unchanged_by_the_training_path(tmp_path):
    out = tmp_path / "rep"
    B.build_report([kernel_run(tmp_path / "k")], out, figures=False)
    readme = (out / "README.md").read_text()
    assert "Training runs" not in readme and not (out / "tables" / "accuracy.csv").exists()


def test_curve_styles_keep_every_label_distinct_beyond_ten_colours():
    from attnbench.report.accuracy_figures import label_colors, label_linestyles

    labels = ["full"] + [f"v{i}" for i in range(14)]
    colors = label_colors(labels)
    styles = label_linestyles(colors)
    looks = {(colors[lab], styles[lab]) for lab in labels}
    assert len(looks) == len(labels)  # no two lines drawn alike
    assert [styles[f"v{i}"] for i in (0, 9, 10, 13)] == ["-", "-", "--", "--"]


def test_an_arch_other_than_the_encoder_names_its_own_task_column():
    from attnbench.report.accuracy import frame

    common = dict(task="vision", size="small", variant="full@sdpa", pattern="full", kernel="sdpa", params={},
                  param_label="", seed=0, status="ok", metric="accuracy", higher_is_better=True, test=0.9)
    rows = [make_row(arch="vit", **common), make_row(arch="swin", **common),
            make_row(**{**common, "task": "listops"}),  # a version-1 row: no arch, LRA's encoder
            make_row(arch="encoder", **{**common, "task": "image", "size": "paper"})]
    assert list(frame(rows)["task_label"]) == ["vision/vit", "vision/swin", "listops", "image (paper)"]


def test_a_job_replaced_by_one_of_another_task_config_is_said():
    from attnbench.report.build import _latest_train_rows

    base = {"row_kind": "train", "task": "vision", "size": "small", "arch": "vit", "variant": "full@sdpa",
            "params": {}, "seed": 0}
    resumed = [dict(base, config_hash="a", test=0.5), dict(base, config_hash="a", test=0.6)]
    kept, notes = _latest_train_rows(resumed)
    assert [r["test"] for r in kept] == [0.6] and len(notes) == 1  # a resume: the later row, said once
    other = resumed + [dict(base, config_hash="b", test=0.9)]
    kept, notes = _latest_train_rows(other)
    assert len(notes) == 2 and "1 of them" in notes[1] and "different task config" in notes[1]
