"""Model skeletons (attnbench.models): shapes of every kind, positions (RoPE by hand), pooling
over non-PAD tokens, the pair heads, kernels of one pattern training alike (iterated from the
registry), parameter counts (fairness), the causal LM's memory and causality, bad configs."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from attnbench import catalog
from attnbench.case import Shape, Unsupported
from attnbench.data.base import KINDS, PAD
from attnbench.models import FAIRNESS_LIMIT, ModelConfig, build_model, count_params, param_report
from attnbench.models.positions import Rotary
from attnbench.patterns import PATTERNS


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one torch thread (conftest.one_thread)."""


V, N = 11, 24  # tiny vocabulary and length


def _cfg(**kw) -> ModelConfig:
    base = dict(d_model=16, heads=2, layers=2, mlp=32, max_len=64, vocab_size=V, num_classes=3)
    return ModelConfig(**{**base, **kw})


def _x(kind: str, b: int = 3, n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (b, 2, n) if kind == "pair" else (b, n)
    return torch.randint(1, V, shape, generator=g)


def _specs():
    return [s for s in catalog.all_specs() if s.family != "test"]


def _defaults():
    return sorted({catalog.get(s.pattern).name for s in _specs()})


# ---------------------------------------------------------------------------------------------
# Shapes, positions, pooling, pair heads
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["none", "learned", "sinusoidal", "rotary"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_builds_with_right_shapes(kind, positions):
    cfg = _cfg(positions=positions, num_classes=V if kind == "tokens" else 3)
    model = build_model(kind, cfg)
    logits, state = model(_x(kind))
    assert logits.shape == ((3, N, V) if kind == "tokens" else (3, 3))
    assert state is None and model.record["positions"] == positions
    assert model.record["variant"] == catalog.get("full").name


def test_rotary_scores_depend_on_offset_only_and_match_hand_rotation():
    rot = Rotary(8)
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)
    qs, ks = q.expand(1, 1, 20, 8), k.expand(1, 1, 20, 8)  # the same vectors at positions 0..19
    s = rot(qs) @ rot(ks).transpose(-1, -2)  # [1, 1, 20, 20]: score(q at i, k at j)
    for i, j, shift in [(5, 2, 7), (0, 9, 10), (3, 3, 16)]:
        torch.testing.assert_close(s[0, 0, i, j], s[0, 0, i + shift, j + shift], rtol=1e-5, atol=1e-5)
    # by hand: channel 0 pairs with channel 4, frequency 10000^0 = 1: rotation by angle t
    e0 = torch.zeros(1, 1, 4, 8)
    e0[..., 0] = 1.0
    r = rot(e0)[0, 0]  # [4, 8]
    t = torch.arange(4.0)
    torch.testing.assert_close(r[:, 0], torch.cos(t))
    torch.testing.assert_close(r[:, 4], torch.sin(t))
    # frequency of pair 1: 10000^(-2/8)
    e1 = torch.zeros(1, 1, 4, 8)
    e1[..., 1] = 1.0
    torch.testing.assert_close(rot(e1)[0, 0, :, 5], torch.sin(t * 10000 ** (-2 / 8)))


def test_mean_pooling_excludes_pad():
    model = build_model("classify", _cfg(pool="mean")).eval()
    seen = {}
    model.encoder.ln.register_forward_hook(lambda m, i, o: seen.update(h=o))
    x = torch.tensor([[3, 4, PAD, PAD, 5], [PAD, PAD, PAD, PAD, PAD]])
    pooled = model.encoder(x)
    h = seen["h"]  # [2, 5, C], final hidden states
    torch.testing.assert_close(pooled[0], (h[0, 0] + h[0, 1] + h[0, 4]) / 3)
    torch.testing.assert_close(pooled[1], torch.zeros_like(pooled[1]))  # nothing to average
    assert model.encoder.tok.num_embeddings == V  # no CLS row with mean pooling
    assert build_model("classify", _cfg()).encoder.tok.num_embeddings == V + 1  # CLS id V


@pytest.mark.parametrize("pair_head,width", [("uv", 2), ("uvmd", 4)])
def test_pair_heads(pair_head, width):
    model = build_model("pair", _cfg(pair_head=pair_head)).eval()
    assert model.head.fc.in_features == width * 16 and model.record["pair_head"] == pair_head
    seen = {}
    model.head.register_forward_pre_hook(lambda m, a: seen.update(feats=a[0]))
    x = _x("pair")
    logits, _ = model(x)
    u, v = model.encoder(x[:, 0]), model.encoder(x[:, 1])
    want = [u, v] if pair_head == "uv" else [u, v, u * v, u - v]
    torch.testing.assert_close(seen["feats"], torch.cat(want, -1))
    assert logits.shape == (3, 3)


def test_relative_position_variants_add_no_absolute_positions_unless_told():
    assert catalog.get("swin").relative_positions and catalog.get("xl").relative_positions
    swin = build_model("classify", _cfg(variant="swin"))
    assert swin.record["positions"] == "none" and swin.encoder.pos.table is None
    both = build_model("classify", _cfg(variant="swin", positions_with_relative=True))
    assert both.record["positions"] == "learned" and both.encoder.pos.table is not None


# ---------------------------------------------------------------------------------------------
# Two kernels of one pattern compute the same function: same loss after a training step
# ---------------------------------------------------------------------------------------------
def _kernel_pairs():
    out = []
    for s in _specs():
        d = catalog.get(s.pattern)
        if s.name != d.name and sum(t.pattern == s.pattern for t in _specs()) >= 2:
            out.append(pytest.param(d.name, s.name, id=s.name))
    return out


def _loss_after_step(variant: str, params: dict, x, y) -> float:
    torch.manual_seed(0)
    model = build_model("classify", _cfg(variant=variant, params=params, layers=1)).double()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = torch.nn.functional.cross_entropy(model(x)[0], y)
    loss.backward()
    opt.step()
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(x)[0], y))


@pytest.mark.parametrize("default,other", _kernel_pairs())
def test_kernels_of_one_pattern_give_the_same_loss_after_a_step(default, other):
    d, o = catalog.get(default), catalog.get(other)
    if not (d.exact and o.exact):
        pytest.skip(f"{other} is not exact: its own function, not {default}'s (approximations differ)")
    p = PATTERNS.get(d.pattern)
    params = dict(p.examples[0]) if p is not None and p.examples else {}
    try:  # the registry's reasons (no CPU backward for @flex, xformers has no CPU kernels, ...)
        build_model("classify", _cfg(variant=other, params=params, layers=1))
    except Unsupported as e:
        pytest.skip(str(e))
    x, y = _x("classify", b=4, n=N - 1), torch.tensor([0, 1, 2, 1])
    a, b = _loss_after_step(default, params, x, y), _loss_after_step(other, params, x, y)
    assert a == pytest.approx(b, rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Fairness: parameter counts
# ---------------------------------------------------------------------------------------------
SMALL = dict(d_model=16, heads=2, layers=2, mlp=64, positions="sinusoidal", vocab_size=257, max_len=64)


def _runs_noncausal(spec) -> bool:
    shape = Shape(batch=1, heads=2, kv_heads=2, seq_len=16, kv_len=16, head_dim=8, causal=False)
    return not spec.not_supported_reasons(shape)


@pytest.mark.parametrize("variant", _defaults())
def test_every_default_kernel_within_fairness_limit(variant):
    """A small config (sinusoidal positions, MLP 4 d): every pattern's default kernel is within
    the limit, XL's own u, v_bias, W_r and MQA's smaller K/V projections counted."""
    causal = not _runs_noncausal(catalog.get(variant))
    r = param_report("tokens" if causal else "classify", ModelConfig(variant=variant, causal=causal, **SMALL))
    assert abs(r["deviation"]) <= FAIRNESS_LIMIT, r
    assert r["within_limit"] and r["limit"] == FAIRNESS_LIMIT


def test_param_counts_by_hand_xl_and_mqa():
    H, D, C, layers = 2, 8, 16, 2
    xl = param_report("tokens", ModelConfig(variant="xl", causal=True, **SMALL))
    own = layers * (2 * H * D + H * (H * D) * D)  # u, v_bias [H, D]; w_r [H, d_pos = H D, D]
    assert xl["own_params"] == own and xl["params"] - xl["full_params"] == own
    mqa = param_report("classify", ModelConfig(variant="mqa", **SMALL))
    assert mqa["kv_heads"] == 1
    saved = layers * 2 * (C * (H - 1) * D + (H - 1) * D)  # K and V projections for one head, not H
    assert mqa["full_params"] - mqa["params"] == saved and mqa["own_params"] == 0
    # a learned position table is the skeleton's: a relative-position variant goes without it
    swin = param_report("classify", ModelConfig(variant="swin", **{**SMALL, "positions": "learned"}))
    assert swin["full_params"] - swin["params"] == (64 + 1) * C and swin["positions"] == "none"
    model = build_model("tokens", ModelConfig(variant="xl", causal=True, **SMALL))
    assert count_params(model) == xl["params"]


# ---------------------------------------------------------------------------------------------
# Causal LM: memory across calls, causality, context
# ---------------------------------------------------------------------------------------------
def test_xl_stream_in_two_windows_equals_one_call():
    cfg = _cfg(variant="xl", params={"segment_len": 8, "mem_len": 8}, causal=True, num_classes=V)
    model = build_model("tokens", cfg).eval()
    x = _x("tokens", n=32)
    whole, _ = model(x)
    first, state = model(x[:, :16])
    second, state2 = model(x[:, 16:], state)
    assert len(state) == cfg.layers and len(state2) == cfg.layers and model.has_memory()
    assert not build_model("tokens", replace(cfg, variant="full", params={})).has_memory()
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-5, atol=1e-5)
    # evaluation without memory (what memory buys): the state is then ignored; back afterwards
    with model.variant_params(mem_len=0):
        alone, _ = model(x[:, 16:], state)
        torch.testing.assert_close(alone, model(x[:, 16:])[0], rtol=1e-5, atol=1e-5)
        assert model.record["params"]["mem_len"] == 0
    assert not torch.allclose(alone, second, atol=1e-4)
    torch.testing.assert_close(model(x[:, 16:], state)[0], second, rtol=1e-5, atol=1e-5)
    assert model.record["params"]["mem_len"] == 8


def _causal_defaults():
    out = []
    for name in _defaults():
        s = catalog.get(name)
        marks = ()
        if s.family == "lsh":
            marks = pytest.mark.skip(reason="Reformer LSH: which earlier keys share a query's chunk "
                                            "depends on later tokens' buckets (its docstring)")
        out.append(pytest.param(name, marks=marks))
    return out


@pytest.mark.parametrize("variant", _causal_defaults())
def test_causal_lm_logits_do_not_see_the_future(variant):
    spec = catalog.get(variant)
    p = PATTERNS.get(spec.pattern)
    params = dict(p.examples[0]) if p is not None and p.examples else {}
    try:
        model = build_model("tokens", _cfg(variant=variant, params=params, causal=True, num_classes=V)).eval()
    except Unsupported as e:
        pytest.skip(str(e))
    x = _x("tokens", n=N)
    y = x.clone()
    y[:, 15:] = torch.randint(1, V, y[:, 15:].shape, generator=torch.Generator().manual_seed(9))
    a, b = model(x)[0], model(y)[0]
    torch.testing.assert_close(a[:, :15], b[:, :15], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_lm_context_segment_sees_each_segment_alone():
    model = build_model("tokens", _cfg(lm_context="segment", segment_len=8, num_classes=V, positions="rotary")).eval()
    x = _x("tokens", n=20)  # segments 0..7, 8..15, 16..19 (padded)
    y = x.clone()
    y[:, :8] = 1  # change the whole first segment
    a, b = model(x)[0], model(y)[0]
    assert a.shape == (3, 20, V) and model.record["lm_context"] == "segment"
    torch.testing.assert_close(a[:, 8:], b[:, 8:], rtol=1e-5, atol=1e-5)
    full = build_model("tokens", _cfg(num_classes=V, positions="rotary")).eval()
    assert not torch.allclose(full(x)[0][:, 8:], full(y)[0][:, 8:])


def test_unsupported_cases_raise_with_the_registry_reasons():
    with pytest.raises(Unsupported, match="causal by construction"):
        build_model("classify", _cfg(variant="xl"))
    with pytest.raises(Unsupported, match="causal masking not supported"):
        build_model("tokens", _cfg(variant="swin", causal=True))
    flex = catalog.get("sliding_window@flex")
    with pytest.raises(Unsupported, match="no backward pass on cpu"):
        build_model("classify", _cfg(variant=flex.name))


def test_attention_weights_only_when_asked():
    model = build_model("classify", _cfg(variant="full@naive")).eval()
    with model.attention_weights() as ws:
        model(_x("classify"))
    assert len(ws) == 2 and ws[0].shape == (3, 2, N + 1, N + 1)
    torch.testing.assert_close(ws[0].sum(-1), torch.ones(3, 2, N + 1))
    assert all(a.weights is None and not a.need_weights for a in model.attentions())


# ---------------------------------------------------------------------------------------------
# Bad configs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,match", [
    ("positions", "rope", r"positions 'rope' not allowed; allowed: none, learned, sinusoidal, rotary"),
    ("pool", "max", r"pool 'max' not allowed; allowed: cls, mean"),
    ("pair_head", "cat", r"pair_head 'cat' not allowed; allowed: uv, uvmd"),
    ("lm_context", "all", r"lm_context 'all' not allowed; allowed: full, segment"),
    ("heads", 3, r"d_model 16 not allowed with heads=3; allowed: a multiple of heads"),
    ("dropout", 1.5, r"dropout 1.5 not allowed; allowed: a number in \[0, 1\)"),
    ("kv_heads", 0, r"kv_heads 0 not allowed; allowed: a positive integer or None"),
])
def test_bad_config_values_raise(field, value, match):
    with pytest.raises(ValueError, match=match):
        build_model("classify", replace(_cfg(), **{field: value}))


def test_bad_kind_variant_and_params():
    with pytest.raises(ValueError, match=r"kind 'seq' not allowed; allowed: classify, pair, tokens"):
        build_model("seq", _cfg())
    with pytest.raises(KeyError, match="did you mean"):
        build_model("classify", _cfg(variant="sliding_windw"))
    with pytest.raises(ValueError, match="window"):
        build_model("classify", _cfg(variant="sliding_window", params={"window": -1}))
    model = build_model("tokens", _cfg(variant="xl", causal=True, num_classes=V))
    with pytest.raises(ValueError, match="w_r"):
        model.set_variant_params(d_pos=4)
    with torch.no_grad():
        assert math.isfinite(float(model(_x("tokens"))[0].sum()))
