"""The statistics of ``python -m attnbench stats`` against truths checkable by hand: uniform,
identity, band and causal attention, hand-sized prefix, rollout and fidelity cases (float64,
no models). Every registered statistic is run on a complete sample and on samples lacking each
thing it needs, and must be named by at least one test here.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import sys

import pytest
import torch

from attnbench.stats import base
from attnbench.stats.base import NEEDS, STATISTICS, LayerAttention, Result, Sample, lookup
from attnbench.stats.rollout import rollout

B, H = 2, 3


def run(name: str, s: Sample) -> Result:
    return lookup(name).fn(s)


def value(name: str, column: str, s: Sample) -> torch.Tensor:
    return run(name, s).values[column]


def layer(w: torch.Tensor, allowed: torch.Tensor | None = None, **kw) -> LayerAttention:
    """A layer from one matrix [N, M] (copied to B x H) or from [B, H, N, M]."""
    w = w.to(torch.float64)
    if w.dim() == 2:
        w = w.expand(B, H, *w.shape).clone()  # [B, H, N, M]
    if allowed is None:
        allowed = torch.ones(w.shape[-2:], dtype=torch.bool)  # [N, M]
    return LayerAttention(weights=w, allowed=allowed, **kw)


def line(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float64).unsqueeze(-1)  # [n, 1]


def close(x: torch.Tensor, expected, tol: float = 1e-12) -> None:
    x = x.to(torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64).expand_as(x)
    torch.testing.assert_close(x, expected, rtol=0, atol=tol)


# --- uniform, identity, band, causal ---------------------------------------------------------

@pytest.mark.parametrize("n", [10, 16, 33])
def test_uniform_attention(n):
    s = Sample(layer(torch.full((n, n), 1 / n, dtype=torch.float64), query_pos=line(n), key_pos=line(n)))
    close(value("entropy", "entropy", s), math.log(n))
    close(value("entropy", "entropy_norm", s), 1.0)
    close(value("spectrum", "effective_rank", s), 1.0, tol=1e-6)
    close(value("spectrum", "rank_90", s), 1.0)
    close(value("concentration", "top_k_mass", s), 8 / n)
    close(value("concentration", "keys_90", s), math.ceil(0.9 * n))  # 9, 15, 30
    close(value("concentration", "keys_90_frac", s), math.ceil(0.9 * n) / n)


@pytest.mark.parametrize("n", [10, 33])
def test_identity_attention(n):
    s = Sample(layer(torch.eye(n, dtype=torch.float64), query_pos=line(n), key_pos=line(n)))
    close(value("entropy", "entropy", s), 0.0)
    close(value("entropy", "entropy_norm", s), 0.0)
    close(value("distance", "distance", s), 0.0)
    spec = run("spectrum", s)
    close(spec.values["effective_rank"], float(n), tol=1e-9)  # all singular values 1: full rank
    close(spec.values["rank_90"], math.ceil(0.9 * n))  # c_k = k / n first reaches 0.9 at ceil(0.9 n)
    close(spec.values["cum_at_16"], min(16, n) / n)
    close(spec.series["cumulative"], torch.arange(1, n + 1, dtype=torch.float64) / n)
    assert spec.series["cumulative"].shape == (H, n)
    close(value("concentration", "keys_90", s), 1.0)
    close(value("concentration", "top_k_mass", s), 1.0)


def band(n: int, w: int) -> torch.Tensor:
    i = torch.arange(n)
    near = ((i[:, None] - i[None, :]).abs() <= w).to(torch.float64)  # [n, n]
    return near / near.sum(dim=-1, keepdim=True)


def test_band_distance_by_hand():
    # n = 5, w = 1: the end rows average |0|, |1| -> 1/2; the three inner rows |1|, 0, |1| -> 2/3;
    # mean (2 * 1/2 + 3 * 2/3) / 5 = 3/5.
    s = Sample(layer(band(5, 1), query_pos=line(5), key_pos=line(5)))
    r = run("distance", s)
    close(r.values["distance"], 0.6)
    assert set(r.values) == {"distance"}  # no pixels, no prefix: no distance_px, no prefix_mass
    wide = Sample(layer(band(50, 3), query_pos=line(50), key_pos=line(50)))
    assert (value("distance", "distance", wide) <= 3).all()


def test_causal_uniform_entropy_norm():
    n = 6
    allowed = torch.ones(n, n, dtype=torch.bool).tril()  # [n, n]: row i sees keys 0..i
    s = Sample(layer(allowed.double() / allowed.sum(dim=-1, keepdim=True), allowed=allowed))
    close(value("entropy", "entropy_norm", s), 1.0)  # ln(i+1) / ln(i+1); row 0 (one key) left out
    close(value("entropy", "entropy", s), math.log(720) / 6)  # (ln 1 + ... + ln 6) / 6


# --- positions: 2-D grid, pixels, prefix tokens ------------------------------------------------

def test_grid_distance_sqrt2_and_pixels():
    pos = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.float64)  # [4, 2] (row, col)
    opposite = torch.eye(4, dtype=torch.float64).flip(-1)  # each patch attends the diagonally opposite one
    r = run("distance", Sample(layer(opposite, query_pos=pos, key_pos=pos, pixels=16.0)))
    close(r.values["distance"], math.sqrt(2))
    close(r.values["distance_px"], 16 * math.sqrt(2))


def test_prefix_dropped_and_rows_renormalized():
    # CLS then tokens at 0, 1, 2. Token 0: [0.5 CLS, 0.25, 0.25, 0] -> renormalized [0.5, 0.5, 0]:
    # distance 0.5 (without renormalizing it would read 0.25). Token 1 attends token 2: 1.
    # Token 2 puts all on CLS: no mass left, excluded. distance = (0.5 + 1) / 2 = 0.75.
    # prefix_mass over the three token rows: (0.5 + 0 + 1) / 3 = 0.5. CLS's own row is dropped.
    w = torch.tensor([[0, 0, 0, 1], [0.5, 0.25, 0.25, 0], [0, 0, 0, 1], [1, 0, 0, 0]],
                     dtype=torch.float64)
    pos = torch.tensor([[math.nan], [0], [1], [2]], dtype=torch.float64)  # [4, 1]
    s = Sample(layer(w, query_pos=pos, key_pos=pos, query_prefix=1, key_prefix=1))
    r = run("distance", s)
    close(r.values["distance"], 0.75)
    close(r.values["prefix_mass"], 0.5)


# --- rollout -------------------------------------------------------------------------------------

def test_rollout_of_identity_layers_is_identity():
    eye = torch.eye(5, dtype=torch.float64).expand(B, H, 5, 5)  # [B, H, 5, 5]
    close(rollout([eye, eye, eye]), torch.eye(5).expand(B, 5, 5))


def test_rollout_two_layers_by_hand():
    # Layer 1, two heads: [[1,0,0],[1,0,0],[0,1,0]] and the identity; mean [[1,0,0],[.5,.5,0],[0,.5,.5]];
    # Â1 = .5 mean + .5 I = [[1,0,0],[.25,.75,0],[0,.25,.75]].
    # Layer 2, one head [[0,0,1],[0,1,0],[0,0,1]]: Â2 = [[.5,0,.5],[0,1,0],[0,0,1]].
    # R = Â2 Â1: row 0 = .5 [1,0,0] + .5 [0,.25,.75] = [.5,.125,.375]; rows 1, 2 those of Â1.
    a1 = torch.tensor([[[1, 0, 0], [1, 0, 0], [0, 1, 0]], [[1, 0, 0], [0, 1, 0], [0, 0, 1]]])
    a2 = torch.tensor([[[0, 0, 1], [0, 1, 0], [0, 0, 1]]])
    layers = [a1.unsqueeze(0).double(), a2.unsqueeze(0).double()]  # [1, 2, 3, 3], [1, 1, 3, 3]
    R = rollout(layers)[0]  # [3, 3]
    close(R, [[0.5, 0.125, 0.375], [0.25, 0.75, 0], [0, 0.25, 0.75]])
    close(R.sum(dim=-1), 1.0)


def test_rollout_renormalizes_rows_not_columns():
    # Token 1 attends nothing (a zero row): Â = .5 A + .5 I = [[1,0,0],[0,.5,0],[0,.5,.5]].
    # Rows renormalized: [[1,0,0],[0,1,0],[0,.5,.5]]. Dividing by column sums instead gives
    # [[1,0,0],[0,.5,0],[0,.5,1]], whose rows do not sum to 1: this test catches it.
    a = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 1, 0]], dtype=torch.float64)
    R = rollout([a.expand(1, 1, 3, 3)])[0]  # [3, 3]
    close(R, [[1, 0, 0], [0, 1, 0], [0, 0.5, 0.5]])
    wrong = 0.5 * a + 0.5 * torch.eye(3, dtype=torch.float64)
    wrong = wrong / wrong.sum(dim=0, keepdim=True)  # the column-normalizing bug
    assert not torch.allclose(wrong, R)


def test_rollout_stat_cls_on_grid():
    # CLS + a 2 x 2 grid, uniform layers: the four patches are interchangeable, so the CLS row of
    # the rollout, renormalized over them, is uniform over 4: entropy ln 4.
    n = 5
    uniform = layer(torch.full((n, n), 1 / n, dtype=torch.float64), query_prefix=1, key_prefix=1, grid=(2, 2))
    r = run("rollout", Sample(uniform, layers=[uniform, uniform]))
    assert r.series["rollout_map"].shape == (1, n, n)
    assert r.series["rollout_cls"].shape == (1, 2, 2)
    assert r.series["rollout_cls_first"].shape == (1, 2, 2)
    close(r.values["rollout_cls_entropy"], math.log(4))
    plain = layer(torch.full((40, 40), 1 / 40, dtype=torch.float64))
    r = run("rollout", Sample(plain, layers=[plain]))
    assert r.values == {} and set(r.series) == {"rollout_map"}
    assert r.series["rollout_map"].shape == (1, 32, 32)


# --- fidelity against exact softmax --------------------------------------------------------------

def test_coverage_full_and_hand_mask():
    exact = layer(torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]], dtype=torch.float64))
    full = layer(exact.weights, support=torch.ones(2, 3, dtype=torch.bool))
    close(value("coverage", "coverage", Sample(full, exact=exact)), 1.0)
    mask = torch.tensor([[True, False, True], [False, True, False]])  # keeps 0.2 + 0.5, then 0.1
    sparse = layer(exact.weights, support=mask)
    close(value("coverage", "coverage", Sample(sparse, exact=exact)), (0.7 + 0.1) / 2)
    dense = layer(exact.weights)  # no support: a variant that restricts no key (full, Performer)
    assert dense.support is None
    close(value("coverage", "coverage", Sample(dense, exact=exact)), 1.0)


def test_kl_and_tv_by_hand():
    e = layer(torch.tensor([[0.25, 0.75], [0.5, 0.5], [0.5, 0.5]], dtype=torch.float64))
    close(value("divergence", "kl", Sample(e, exact=e)), 0.0)
    close(value("divergence", "tv", Sample(e, exact=e)), 0.0)
    # Row 0: KL = .5 ln(.5/.25) + .5 ln(.5/.75) = .5 ln(4/3) = 0.143841..., TV = .5 (.25 + .25) = .25.
    # Row 1: KL = 1 ln(1/.5) = ln 2, TV = .5. Row 2 attends nothing: out of KL, TV .5 (.5 + .5) = .5.
    v = layer(torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    r = run("divergence", Sample(v, exact=e))
    close(r.values["kl"], (0.14384103622589045 + 0.6931471805599453) / 2)
    close(r.values["tv"], (0.25 + 0.5 + 0.5) / 3)


def test_rel_err_identical_and_by_hand():
    exact_out = torch.zeros(1, 2, 2, 2, dtype=torch.float64)  # [B, H, N, D]
    exact_out[0, :] = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # Frobenius norm 5 per head
    s = Sample(layer(torch.eye(2)), out=exact_out.clone(), exact_out=exact_out)
    close(value("error", "rel_err", s), 0.0)
    out = exact_out.clone()
    out[0, 0, 1, 1] += 1.0  # head 0 off by 1: 1 / 5; head 1 exact
    close(value("error", "rel_err", dataclasses.replace(s, out=out)), [0.2, 0.0])


# --- maps ----------------------------------------------------------------------------------------

def test_cls_map_shapes_with_grid():
    n = 1 + 6  # CLS + a 2 x 3 grid
    w = torch.rand(B, H, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = w / w.sum(dim=-1, keepdim=True)  # [B, H, n, n]
    r = run("cls_map", Sample(layer(w, query_prefix=1, key_prefix=1, grid=(2, 3))))
    assert r.series["cls"].shape == (H, 2, 3) and r.series["cls_first"].shape == (H, 2, 3)
    close(r.series["cls_first"], w[0, :, 0, 1:].reshape(H, 2, 3))
    close(r.series["cls"], w[:, :, 0, 1:].mean(dim=0).reshape(H, 2, 3))
    flat = run("cls_map", Sample(layer(w, query_prefix=1, key_prefix=1)))
    assert flat.series["cls"].shape == (H, 6)
    deit = run("cls_map", Sample(layer(w, query_prefix=2, key_prefix=2, grid=(1, 5))))
    assert deit.series["cls"].shape == (H, 1, 5)  # CLS and distillation keys dropped


def test_map_pools_to_at_most_32():
    w = torch.rand(B, H, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    close(run("map", Sample(layer(w))).series["map"], w.mean(dim=0))  # small: unpooled
    big = layer(torch.full((40, 70), 1 / 70, dtype=torch.float64))
    pooled = run("map", Sample(big)).series["map"]
    assert pooled.shape == (H, 32, 32)
    close(pooled, 1 / 70)


# --- every registered statistic: runs, explains what it lacks, is documented and tested ----------

def complete_sample() -> Sample:
    """A sample with everything any statistic needs: CLS + a 2 x 2 grid, self-attention."""
    g, n, D = torch.Generator().manual_seed(2), 5, 4

    def probs() -> torch.Tensor:
        return torch.rand(B, H, n, n, dtype=torch.float64, generator=g).softmax(dim=-1)  # [B, H, n, n]

    pos = torch.tensor([[math.nan, math.nan], [0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.float64)
    geo = dict(query_pos=pos, key_pos=pos, pixels=16.0, query_prefix=1, key_prefix=1, grid=(2, 2))
    attn = layer(probs(), support=torch.rand(n, n, generator=g) > 0.3, **geo)
    out = torch.randn(B, H, n, D, dtype=torch.float64, generator=g)
    return Sample(attn, exact=layer(probs(), **geo), out=out, exact_out=out + 0.1,
                  layers=[layer(probs(), **geo), attn])


def lacking(s: Sample, need: str) -> Sample:
    """``s`` without one thing a statistic may need."""
    a = s.attn
    attn = {
        "weights": lambda: dataclasses.replace(a, weights=None),
        "positions": lambda: dataclasses.replace(a, query_pos=None, key_pos=None),
        "support": lambda: dataclasses.replace(a, support=None),
        "prefix": lambda: dataclasses.replace(a, query_prefix=0, key_prefix=0),
        "grid": lambda: dataclasses.replace(a, grid=None),
    }
    if need in attn:
        return dataclasses.replace(s, attn=attn[need]())
    other = {"exact": dict(exact=None), "output": dict(out=None), "self": dict(self_attention=False),
             "layers": dict(hierarchical=True)}
    return dataclasses.replace(s, **other[need])


@pytest.mark.parametrize("name", sorted(STATISTICS))
def test_every_statistic_runs_on_a_complete_sample(name):
    stat = STATISTICS[name]
    s = complete_sample()
    assert stat.reasons(s) == []
    r = stat.fn(s)
    rows = 1 if stat.scope == "model" else H
    assert r.values or r.series
    for col, x in {**r.values, **r.series}.items():
        assert x.shape[0] == rows, (col, x.shape)
        assert torch.isfinite(x).all(), col


@pytest.mark.parametrize("name", sorted(STATISTICS))
def test_every_statistic_names_what_it_lacks(name):
    stat = STATISTICS[name]
    for need in stat.needs:
        reasons = stat.reasons(lacking(complete_sample(), need))
        assert f"{name} needs {NEEDS[need]}" in reasons, (need, reasons)


def test_reasons_in_words():
    s = complete_sample()
    assert any("positions" in r for r in lookup("distance").reasons(lacking(s, "positions")))
    assert any("hierarchy" in r for r in lookup("rollout").reasons(lacking(s, "layers")))
    staged = dataclasses.replace(s, layers=[s.attn, layer(torch.eye(3))])  # a stage changes N
    assert lookup("rollout").reasons(staged) == [f"rollout needs {NEEDS['layers']}"]
    both = lacking(lacking(s, "exact"), "output")
    assert len(lookup("error").reasons(both)) == 1 and len(lookup("divergence").reasons(both)) == 1
    assert len(lookup("distance").reasons(lacking(lacking(s, "positions"), "weights"))) == 2  # every reason at once


REGISTRY_TESTS = ("test_every_statistic_runs_on_a_complete_sample",
                  "test_every_statistic_names_what_it_lacks", "test_every_statistic_is_documented_and_tested")


def test_every_statistic_is_documented_and_tested():
    module = sys.modules[__name__]
    tests = [inspect.getsource(f) for n, f in vars(module).items()
             if n.startswith("test_") and n not in REGISTRY_TESTS]
    for name, stat in STATISTICS.items():
        assert stat.doc.strip(), name
        assert (inspect.getmodule(stat.fn).__doc__ or "").strip(), name
        assert any(f'"{name}"' in src for src in tests), f"no test here runs statistic {name!r}"
    assert base.SCOPES == ("head", "model")
