"""``python -m attnbench stats``: where layers' queries and keys sit, the three sources, the rows
of a setting (values, and a row with the reason for whatever cannot be computed), the command
line and the report of its rows."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch

from attnbench import catalog
from attnbench.cli import main
from attnbench.models import build_model
from attnbench.report import stats_rows
from attnbench.results import read_rows
from attnbench.stats import STATISTICS, capture, runner, sources
from attnbench.stats.base import lookup
from attnbench.train import tasks
from attnbench.train.loop import model_config
from attnbench.train.runner import build_data


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one torch thread (conftest.one_thread)."""


VISION = ["data.side=8", "model.d_model=16", "model.heads=2", "model.layers=2", "model.mlp=32", "model.patch=2"]
LISTOPS = ["model.d_model=16", "model.heads=2", "model.layers=2", "model.mlp=32"]


@functools.lru_cache(maxsize=None)
def _data(task: str, overrides: tuple[str, ...]):
    """A task's config and data, built once per module (ListOps' generator takes seconds)."""
    cfg = tasks.load(task, "small", list(overrides))
    return cfg, build_data(cfg, Path("/nonexistent"))


def _model(task: str, variant: str, overrides: list[str]):
    cfg, data = _data(task, tuple(o for o in overrides if not o.startswith("model.")))
    cfg = tasks.load(task, "small", overrides)
    pattern = variant.split("@")[0]
    model = build_model(data.kind, model_config(cfg, data, variant, cfg["variant_params"].get(pattern, {})))
    return cfg, data, model


def _rows(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


# -- geometry ---------------------------------------------------------------------------------
def test_line_and_raster_positions():
    pos = capture.line(4, prefix=1)  # CLS then tokens 0, 1, 2
    assert math.isnan(pos[0, 0]) and pos[1:, 0].tolist() == [0.0, 1.0, 2.0]
    grid = capture.raster((2, 3))
    assert grid.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    cells = capture.raster((1, 2), cell=2)  # 2x2 cells of a 2x4 grid: centres at (0.5, 0.5), (0.5, 2.5)
    assert cells.tolist() == [[0.5, 0.5], [0.5, 2.5]]


def test_vit_layers_have_a_cls_prefix_and_the_patch_grid():
    _, data, model = _model("vision", "full", [*VISION, "model.arch=vit", "model.pool=cls"])
    layers = capture.capture(model, data.val.x[:3])
    assert len(layers) == 2
    g = layers[0].geometry
    assert g.prefix == 1 and g.grid == (4, 4) and g.pixels == 2.0
    assert layers[0].call.q.shape == (3, 2, 17, 8)  # CLS + 16 patches
    assert math.isnan(g.query_pos[0, 0]) and g.query_pos[1:3].tolist() == [[0, 0], [0, 1]]


def test_pvt_conv_keys_sit_at_their_cells_centres():
    _, data, model = _model("vision", "full", [*VISION, "model.arch=pvt", "model.depths=[1,1]",
                                                "model.sr_ratios=[2,1]"])
    layers = capture.capture(model, data.val.x[:2])
    first, second = layers[0].geometry, layers[1].geometry
    assert first.query_pos.shape == (16, 2) and first.key_pos.shape == (4, 2)  # 4x4 queries, 2x2 keys
    assert first.key_pos[0].tolist() == [0.5, 0.5] and first.pixels == 2.0
    assert second.stage == 1 and second.grid == (2, 2) and second.pixels == 4.0


def test_encoder_with_cls_has_one_prefix_token():
    _, data, model = _model("listops", "full", LISTOPS)
    layers = capture.capture(model, data.val.x[:2])
    assert model.record["pool"] == "cls"
    assert all(layer.geometry.prefix == 1 for layer in layers)
    assert layers[0].call.q.shape[2] == data.seq_len + 1


# -- rows of a setting --------------------------------------------------------------------------
def _random_rows(variant: str, n: int = 48, causal: bool = False, **params):
    src = sources.random_source(n, heads=2, head_dim=8, batch=2, kind="sharp", seed=0, causal=causal)
    st = runner.Setting(catalog.get(variant), params)
    return runner.setting_rows(st, src, list(STATISTICS.values()))


def test_exact_kernel_matches_exact_softmax_at_rounding_level():
    rows = _random_rows("full@sdpa")
    assert _rows(rows, stat="implied")[0]["value"] < 1e-12
    for r in _rows(rows, stat="error", column="rel_err"):
        assert r["value"] < 1e-12
    assert all(r["value"] < 1e-12 for r in _rows(rows, stat="divergence", column="tv"))
    heads = {r["head"] for r in _rows(rows, stat="entropy", column="entropy")}
    assert heads == {0, 1}


def test_sliding_window_keeps_part_of_the_exact_mass():
    rows = _random_rows("sliding_window@blocked", window=4)
    cov = [r["value"] for r in _rows(rows, stat="coverage", column="coverage")]
    assert len(cov) == 2 and all(0.0 < c < 1.0 for c in cov)
    assert all(r["value"] < 1e-9 for r in _rows(rows, stat="implied"))  # the kernel computes its implied weights
    dist = [r["value"] for r in _rows(rows, stat="distance", column="distance")]
    assert all(d <= 4.0 + 1e-9 for d in dist)


def test_performer_is_compared_and_its_weights_are_what_it_computes():
    rows = _random_rows("performer@favor", nb_features=16)
    assert all(r["value"] < 1e-6 for r in _rows(rows, stat="implied"))
    errs = [r["value"] for r in _rows(rows, stat="error", column="rel_err")]
    assert len(errs) == 2 and all(e > 1e-3 for e in errs)


def test_a_variant_that_cannot_run_the_case_is_a_row_per_statistic_with_the_reason():
    rows = _random_rows("xl@segment", causal=False)  # Transformer-XL is causal only
    bad = [r for r in rows if r["status"] != "ok"]
    assert bad and all(r["status"] == "unsupported" and r["reasons"] for r in bad)
    assert "causal" in " ".join(bad[0]["reasons"])


def test_rollout_needs_every_layer_over_the_same_tokens():
    _, data, model = _model("vision", "full", [*VISION, "model.arch=swin", "model.depths=[1,1]"])
    src = sources.Source("task", "vision", capture.capture(model, data.val.x[:2]), "vision", "swin", "full@sdpa",
                         hierarchical=True)
    rows = runner.setting_rows(runner.Setting(catalog.get("full@sdpa"), {}), src,
                               [lookup("rollout")])
    roll = _rows(rows, stat="rollout")
    assert len(roll) == 1 and roll[0]["status"] == "unsupported" and roll[0]["layer"] is None
    assert "every layer" in roll[0]["reasons"][0]


# -- the command line ---------------------------------------------------------------------------
def test_cli_random_writes_rows_run_json_and_a_report(tmp_path, capsys):
    out = tmp_path / "s"
    code = main(["stats", "--random", "--variants", "full,sliding_window[window=4,8]", "--seq-len", "24,40",
                 "--heads", "2", "--head-dim", "8", "--out", str(out)])
    assert code == 0
    rows = read_rows(out / "results.jsonl")
    assert {r["seq_len"] for r in rows} == {24, 40}
    assert {r["param_label"] for r in rows if r["variant"] == "sliding_window@blocked"} == {"window=4", "window=8"}
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "stats" and len(info["commands"]) == 1
    assert "attention statistics" in capsys.readouterr().out
    assert main(["report", str(out), "--out", str(tmp_path / "r"), "--no-figures"]) == 0  # figures: test_stats_report
    assert "statistic" in (tmp_path / "r" / "README.md").read_text().lower()
    capsys.readouterr()
    assert main(["compare", str(out), str(out)]) == 2  # nothing timed to judge: said, not a table of blanks
    assert "attention statistics" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["--random", "--input", "noise"], ["--input 'noise'", "gaussian"]),
    (["--random", "--variants", "own"], ["own", "--checkpoint"]),
    (["--random", "--stats", "entropie"], ["entropie", "entropy"]),
    (["--checkpoint", "/no/such/job"], ["/no/such/job", "best.pt"]),
    (["--task", "listops", "--seq-len", "100000", *LISTOPS], ["--seq-len 100000", "allowed"]),
])
def test_bad_input_is_one_line_naming_it(tmp_path, capsys, argv, words):
    assert main(["stats", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err


def test_checkpoint_source_reads_a_trained_job(tmp_path):
    cfg, data, model = _model("vision", "full", [*VISION, "model.arch=vit", "model.pool=cls"])
    job = tmp_path / "run" / "jobs" / "j"
    job.mkdir(parents=True)
    torch.save(model.state_dict(), job / "best.pt")
    (job / "job.json").write_text(json.dumps({"job": "j", "variant": "full@sdpa", "params": {}, "seed": 0,
                                              "config": cfg}, default=str))
    src = sources.checkpoint_source(str(job), None, batch=3, seed=0)
    assert src.kind == "checkpoint" and src.model_variant == "full@sdpa" and len(src.checkpoint_sha) == 12
    assert src.image is not None and list(src.image.shape) == list(data.meta["image"])
    out = tmp_path / "o"
    assert main(["stats", "--checkpoint", str(job), "--variants", "own,sliding_window[window=3]",
                 "--out", str(out)]) == 0
    rows = read_rows(out / "results.jsonl")
    assert _rows(rows, stat="input") and _rows(rows, stat="cls_map", status="ok")
    assert _rows(rows, stat="rollout", status="ok")
    assert {r["model_variant"] for r in rows} == {"full@sdpa"}
    groups = stats_rows.groups(rows)
    assert len(groups) == 1 and len(groups[0].inputs) == 1  # the image sits with the rows it is drawn under
