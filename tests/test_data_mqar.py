"""MQAR: every answer checked by a plain dict built from the context, the gap law against
Zoology's own sampler (numpy's choice without replacement), seeds, knobs, files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attnbench.data import mqar
from attnbench.data.base import IGNORE, DataError

KNOBS = dict(vocab_size=64, seq_len=48, num_kv_pairs=6, alpha=0.01, n_train=300, n_val=50,
             n_test=50)


@pytest.fixture(scope="module")
def data():
    return mqar.build(**KNOBS, seed=5)


def check_sample(x: list[int], y: list[int], V: int, P: int) -> None:
    """One sample against the rules, with a dict: keys, values, answers, token ranges."""
    C = 2 * P
    kv = dict(zip(x[0:C:2], x[1:C:2]))
    assert len(kv) == P, "keys repeat"
    assert len(set(kv.values())) == P, "values repeat"
    assert all(1 <= k < V // 2 for k in kv) and all(V // 2 <= v < V for v in kv.values())
    assert all(1 <= t < V for t in x), "a token outside [1, V)"
    answers = [i for i, t in enumerate(y) if t != IGNORE]
    assert len(answers) == P
    assert all(i >= C and (i - C) % 2 == 0 for i in answers), answers
    assert {x[i] for i in answers} == set(kv), "each key is queried once"
    for i in answers:
        assert y[i] == kv[x[i]], f"position {i}: key {x[i]} has value {kv[x[i]]}, target {y[i]}"


def test_every_target_is_the_value_of_the_key_at_its_position(data):
    V, P = KNOBS["vocab_size"], KNOBS["num_kv_pairs"]
    for split in data.splits().values():
        assert split.x.shape == split.y.shape == (len(split), KNOBS["seq_len"])
        for x, y in zip(split.x.tolist(), split.y.tolist()):
            check_sample(x, y, V, P)


def test_task_fields(data):
    assert (data.kind, data.vocab_size, data.num_classes, data.seq_len) == ("tokens", 64, 64, 48)
    assert data.name == "MQAR (Zoology's generator), V=64, N=48, pairs=6"
    assert data.source == "generated (seed 5)" and data.meta["answers_per_sample"] == 6
    assert data.majority_share() is None


def test_gap_law_matches_zoologys_sampler_and_favours_short_gaps():
    S, P, space = 3000, 4, 28
    ours = mqar.power_law_slots(np.random.default_rng(0), S, P, space, 0.01)  # [S, P]
    p = np.arange(1, space + 1) ** (0.01 - 1)
    p = p / p.sum()
    legacy = np.random.RandomState(0)  # Zoology's sampler, one sample at a time
    zoology = np.stack([legacy.choice(space, size=P, replace=False, p=p) for _ in range(S)])
    # the same law, draw order included: per-draw mean slot and the short-gap share agree
    assert np.allclose(ours.mean(axis=0), zoology.mean(axis=0), atol=0.8)
    assert abs((ours < 4).mean() - (zoology < 4).mean()) < 0.04
    assert abs((ours[:, 0] == 0).mean() - p[0]) < 0.03
    uniform = mqar.power_law_slots(np.random.default_rng(0), S, P, space, 1.0)
    assert ours.mean() < 0.7 * uniform.mean()  # about 7 vs 13.5
    assert (ours < 4).mean() > 2 * (uniform < 4).mean()  # about 0.46 vs 0.14
    assert all(len(set(row)) == P for row in ours.tolist())


def test_distinct_ints_are_distinct_and_uniform():
    draws = mqar.distinct_ints(np.random.default_rng(1), 4000, 3, 10, 16)  # [4000, 3]
    assert all(len(set(r)) == 3 for r in draws.tolist()) and draws.min() >= 10 and draws.max() < 16
    for column in draws.T:  # every position uniform over the 6 ids, order included
        share = np.bincount(column - 10, minlength=6) / len(column)
        assert np.all(np.abs(share - 1 / 6) < 0.03), share


def test_seed_reproducible_and_splits_independent():
    a = mqar.build(**KNOBS, seed=5)
    b = mqar.build(**{**KNOBS, "n_train": 10}, seed=5)
    c = mqar.build(**KNOBS, seed=6)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.train.x, c.train.x)
    assert not torch.equal(a.val.x, a.test.x)


@pytest.mark.parametrize("knobs, message", [
    (dict(seq_len=20), r"seq_len 20 too short for 6 pairs: need seq_len >= .* = 24"),
    (dict(vocab_size=12), r"vocab_size 12 too small for 6 pairs: need vocab_size >= .* = 14"),
    (dict(seq_len=49), r"seq_len 49: must be even"),
    (dict(alpha=0.0), r"alpha 0.0: must be > 0"),
    (dict(num_kv_pairs=0), r"num_kv_pairs 0: must be >= 1"),
])
def test_bad_knobs_name_value_and_what_is_allowed(knobs, message):
    with pytest.raises(ValueError, match=message):
        mqar.build(**{**KNOBS, **knobs})


def test_bad_knobs_reported_together():
    with pytest.raises(ValueError, match="seq_len 21: must be even.*too short.*vocab_size 8"):
        mqar.build(**{**KNOBS, "seq_len": 21, "vocab_size": 8})


def test_write_then_read_round_trip_and_missing_file(tmp_path, data):
    paths = mqar.write(tmp_path, **KNOBS, seed=5)
    assert [p.name for p in paths] == ["train.npz", "val.npz", "test.npz"]
    loaded = mqar.build(root=tmp_path)
    for split in ("train", "val", "test"):
        assert torch.equal(loaded.splits()[split].x, data.splits()[split].x)
        assert torch.equal(loaded.splits()[split].y, data.splits()[split].y)
    assert loaded.name == data.name and loaded.meta["knobs"] == data.meta["knobs"]
    assert loaded.source == str(tmp_path)
    paths[1].unlink()
    with pytest.raises(DataError, match=r"val\.npz: missing; expected .*train\.npz"):
        mqar.build(root=tmp_path)
