"""Vision skeletons (ViT / DeiT, Swin, PVT): every pattern's default kernel trains in every arch
(iterated from the registry), within the fairness limit of full attention in the same arch;
Swin's shift alternation, patch merging and learned bias; PVT's conv and pool reductions;
ViT's prefix tokens and DeiT's heads; positions; bad configs."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from attnbench import catalog
from attnbench.case import Unsupported
from attnbench.models import FAIRNESS_LIMIT, PVT, ModelConfig, SwinNet, ViT, build_model, param_report
from attnbench.models.encoder import EncoderClassifier
from attnbench.models.patches import images, learns_swin_bias
from attnbench.models.swin_net import PatchMerging
from attnbench.patterns import PATTERNS
from attnbench.patterns.swin import swin_geometry


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one torch thread (conftest.one_thread)."""


IMAGE = (1, 8, 8)  # patch 2 -> a 4x4 grid of 16 tokens
ARCHS = ("vit", "swin", "pvt")
LAYOUT = {"vit": {}, "swin": {"depths": (2, 2)},  # 4x4 -> 2x2
          "pvt": {"depths": (1, 1), "sr_ratios": (2, 1)}}  # 4x4 (keys 2x2) -> 2x2


def _cfg(arch: str, variant: str = "full", **kw) -> ModelConfig:
    base = dict(arch=arch, variant=variant, image=IMAGE, patch=2, d_model=16, heads=2, layers=2, mlp=64,
                num_classes=3, pool="mean", positions="sinusoidal", **LAYOUT[arch])
    return ModelConfig(**{**base, **kw})


def _x(b: int = 3, image=IMAGE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, image[0] * image[1] * image[2]), generator=g)


def _defaults():
    return sorted({catalog.get(s.pattern).name for s in catalog.all_specs() if s.family != "test"})


def _example(name: str) -> dict:
    p = PATTERNS.get(catalog.get(name).pattern)
    return dict(p.examples[0]) if p is not None and p.examples else {}


def _grid_variants():
    """Default kernels that attend over a token grid (they declare ``grid``)."""
    return [n for n in _defaults() if "grid" in catalog.get(n).params]


# ---------------------------------------------------------------------------------------------
# Every default kernel in every arch: a finite training step, parameters within the limit
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,sr", [("vit", "conv"), ("swin", "conv"), ("pvt", "conv"), ("pvt", "pool")])
@pytest.mark.parametrize("variant", _defaults())
def test_every_default_kernel_trains_in_every_arch_within_fairness(arch, sr, variant):
    cfg = _cfg(arch, variant, params=_example(variant), sr=sr)
    try:  # the registry's reasons (xl is causal only; a grid-only kernel cannot cross-attend PVT's conv keys)
        report = param_report("classify", cfg)
    except Unsupported as e:
        pytest.skip(str(e))
    assert report["within_limit"] == (abs(report["deviation"]) <= FAIRNESS_LIMIT)
    if catalog.get(variant).kv_heads_rule is None:
        assert report["within_limit"], report
    else:  # MQA / GQA save K/V projections: outside the limit in some archs, and the trainer refuses them there
        assert report["deviation"] < 0 and report["own_params"] == 0
    torch.manual_seed(0)
    model = build_model("classify", cfg)
    logits, state = model(_x())
    assert logits.shape == (3, 3) and state is None
    loss = F.cross_entropy(logits, torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    embed = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))  # the first patch embedding
    assert embed.weight.grad is not None and torch.isfinite(embed.weight.grad).all()
    assert model.record["arch"] == arch and model.record["variant"] == catalog.get(variant).name


def test_the_grid_kernels_are_there_and_run_where_expected():
    grid = _grid_variants()
    assert {catalog.get(n).pattern for n in grid} >= {"swin", "sra"}
    for name in grid:
        for arch in ARCHS:
            build_model("classify", _cfg(arch, name, params=_example(name), sr="pool"))
        with pytest.raises(Unsupported, match="N != M"):  # PVT's conv keys: cross attention
            build_model("classify", _cfg("pvt", name, params=_example(name), sr="conv"))


# ---------------------------------------------------------------------------------------------
# ViT / DeiT
# ---------------------------------------------------------------------------------------------
def test_vit_prefix_tokens_and_deit_heads():
    assert ViT(_cfg("vit", pool="cls")).record["tokens"] == 1 + 16
    deit = ViT(_cfg("vit", pool="cls", distill=True)).eval()
    assert deit.record["tokens"] == 2 + 16 and deit.record["distill_token"]
    x = _x()
    c, d = deit.heads(x)
    torch.testing.assert_close(deit(x)[0], (c + d) / 2)  # DeiT's prediction: the mean of both heads
    assert not torch.allclose(c, d)  # two tokens, two heads
    mean = ViT(_cfg("vit", distill=True)).eval()  # pool mean: both heads read the mean of the patches
    feats = mean.features(x)
    torch.testing.assert_close(feats[0], feats[1])
    assert mean.record["tokens"] == 16 and not mean.record["distill_token"]
    with pytest.raises(ValueError, match="distill"):
        ViT(_cfg("vit")).heads(x)


@pytest.mark.parametrize("variant", _grid_variants())
def test_vit_grid_variant_sees_the_patch_grid_and_refuses_cls(variant):
    model = ViT(_cfg("vit", variant, params=_example(variant)))
    for i, a in enumerate(model.attentions()):
        assert a.params["grid"] == (4, 4)
        if "shift" in a.spec.params:
            assert a.params["shift"] == (i % 2 == 1)
    with pytest.raises(Unsupported, match="no CLS or distillation token"):
        ViT(_cfg("vit", variant, pool="cls"))
    one_d = ViT(_cfg("vit", "sliding_window", params={"window": 3}, pool="cls"))
    assert all("grid" not in a.params for a in one_d.attentions())


def test_images_are_normalized_channels_first_in_raster_order():
    C, H, W = 3, 2, 4
    x = torch.arange(C * H * W).view(1, -1) * 10  # pixel c*H*W + r*W + col holds its index x 10
    img = images(x, (C, H, W), torch.float64)
    assert img.shape == (1, C, H, W)
    for c, r, col in [(0, 0, 0), (1, 1, 2), (2, 0, 3)]:
        assert img[0, c, r, col] == ((c * H * W + r * W + col) * 10 / 255 - 0.5) / 0.5
    ends = images(torch.tensor([[0, 255]]), (1, 1, 2), torch.float32)
    assert ends.flatten().tolist() == [-1.0, 1.0]


# ---------------------------------------------------------------------------------------------
# Swin: shifted windows alternating, learned bias, patch merging
# ---------------------------------------------------------------------------------------------
def test_swin_blocks_alternate_shift_on_their_stage_grid():
    model = SwinNet(_cfg("swin", "swin", params={"window": 2}))
    stages = model.record["stages"]
    assert [s["grid"] for s in stages] == [[4, 4], [2, 2]] and [s["dim"] for s in stages] == [16, 32]
    for stage, s in zip(model.stages, stages):
        shifts = [b.attn.params["shift"] for b in stage]
        assert shifts == [False, True] and all(b.attn.params["grid"] == tuple(s["grid"]) for b in stage)
        for b in stage:
            geo = swin_geometry(s["grid"][0] * s["grid"][1], b.attn.params)
            assert b.attn.extra["bias_table"].shape == (s["heads"], (2 * geo["win"] - 1) ** 2)
    # the shift matters on the 4x4 grid with 2x2 windows: all blocks unshifted give other logits
    model.eval()
    x = _x()
    with torch.no_grad():
        alternating = model(x)[0]
        with model.variant_params(shift=False):
            plain = model(x)[0]
    assert not torch.allclose(alternating, plain)


def _swin_kernels_with_cpu_backward():
    return [s.name for s in catalog.all_specs() if learns_swin_bias(s) and "cpu" in s.backward]


@pytest.mark.parametrize("variant", _swin_kernels_with_cpu_backward())
def test_learned_bias_table_gets_gradients_and_is_used(variant):
    torch.manual_seed(0)
    model = SwinNet(_cfg("swin", variant, params={"window": 2}))
    tables = [b.attn.extra["bias_table"] for stage in model.stages for b in stage]
    assert len(tables) == 4 and all(t.requires_grad for t in tables)
    x = _x()
    logits, _ = model(x)
    logits.square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tables)
    with torch.no_grad():
        tables[0].add_(torch.randn(tables[0].shape, generator=torch.Generator().manual_seed(1)))  # not a constant
        assert not torch.allclose(model(x)[0], logits)
    report = param_report("classify", _cfg("swin", variant, params={"window": 2}))
    assert report["own_params"] == sum(t.numel() for t in tables)


def test_patch_merging_concatenates_2x2_neighbourhoods():
    C = 2
    merge = PatchMerging(C, (4, 4))
    seen = {}
    merge.norm.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    x = torch.arange(16.0).view(1, 16, 1).expand(1, 16, C).contiguous()  # token t holds t
    out = merge(x)
    assert out.shape == (1, 4, 2 * C) and merge.out_grid() == (2, 2)
    cat = seen["x"].view(2, 2, 4, C)[..., 0]  # [2, 2, 4]: Swin's x0, x1, x2, x3 per merged token
    for i in range(2):
        for j in range(2):
            r, c = 2 * i, 2 * j
            assert cat[i, j].tolist() == [r * 4 + c, (r + 1) * 4 + c, r * 4 + c + 1, (r + 1) * 4 + c + 1]
    odd = PatchMerging(C, (3, 5))  # odd sides padded with zeros
    assert odd(torch.randn(2, 15, C)).shape == (2, 6, 2 * C) and odd.out_grid() == (2, 3)


# ---------------------------------------------------------------------------------------------
# PVT: spatial reduction by a learned convolution or by the kernel's pooling
# ---------------------------------------------------------------------------------------------
def test_pvt_conv_reduction_shapes():
    model = PVT(_cfg("pvt"))
    first, last = model.stages
    assert first.case == (16, 4) and last.case == (4, 4)
    assert all(b.reduce is not None for b in first.blocks) and all(b.reduce is None for b in last.blocks)
    h = torch.randn(3, 16, 16)
    assert first.blocks[0].reduce(h).shape == (3, 4, 16)  # 4x4 tokens -> 2x2 keys
    assert [s["kv_tokens"] for s in model.record["stages"]] == [4, 4] and model.record["sr"] == "conv"


def test_pvt_pool_reduction_is_the_kernels():
    pool = PVT(_cfg("pvt", "sra", sr="pool"))
    assert all(b.reduce is None for s in pool.stages for b in s.blocks)
    assert [[b.attn.params["ratio"] for b in s.blocks] for s in pool.stages] == [[2], [1]]
    assert [[b.attn.params["grid"] for b in s.blocks] for s in pool.stages] == [[(4, 4)], [(2, 2)]]
    assert [s.case for s in pool.stages] == [(16, 16), (4, 4)]
    full = PVT(_cfg("pvt", "full", sr="pool"))  # full attention: PVT without reduction
    assert all(b.attn.params == {} for s in full.stages for b in s.blocks)
    assert pool(_x())[0].shape == (3, 3)


def test_pvt_conv_refuses_a_self_attention_only_kernel():
    with pytest.raises(Unsupported, match="N != M"):
        PVT(_cfg("pvt", "sra"))


# ---------------------------------------------------------------------------------------------
# Positions, dispatch, bad configs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["none", "learned", "sinusoidal", "rotary"])
@pytest.mark.parametrize("arch", ARCHS)
def test_positions_in_every_arch(arch, positions):
    if arch == "pvt" and positions == "rotary":
        with pytest.raises(ValueError, match="positions 'rotary' not allowed with arch 'pvt'"):
            build_model("classify", _cfg(arch, positions=positions))
        return
    model = build_model("classify", _cfg(arch, positions=positions))
    assert model(_x())[0].shape == (3, 3) and model.record["positions"] == positions
    swin = build_model("classify", _cfg(arch, "swin", params={"window": 2}, positions=positions, sr="pool"))
    assert swin.record["positions"] == "none"  # Swin's relative bias replaces absolute positions


def test_build_model_dispatches_on_arch_and_keeps_the_encoder():
    assert ModelConfig().arch == "encoder"
    enc = build_model("classify", ModelConfig(d_model=16, heads=2, vocab_size=11, max_len=8))
    assert isinstance(enc, EncoderClassifier)
    assert [type(build_model("classify", _cfg(a))) for a in ARCHS] == [ViT, SwinNet, PVT]


@pytest.mark.parametrize("change,match", [
    (dict(arch="resnet"), r"arch 'resnet' not allowed; allowed: encoder, vit, swin, pvt"),
    (dict(image=None), r"image None not allowed with arch 'vit'; allowed: \(C, H, W\)"),
    (dict(patch=3), r"patch 3 not allowed with image 1x8x8; allowed: a positive divisor of H and W"),
    (dict(layout="huge"), r"layout 'huge' not allowed; allowed: small, paper"),
    (dict(sr="learned"), r"sr 'learned' not allowed; allowed: conv, pool"),
])
def test_bad_vision_configs(change, match):
    with pytest.raises(ValueError, match=match):
        build_model("classify", replace(_cfg("vit"), **change))


def test_bad_vision_combinations():
    with pytest.raises(ValueError, match="distill True not allowed with arch 'swin'; allowed: arch 'vit'"):
        build_model("classify", _cfg("swin", distill=True))
    with pytest.raises(ValueError, match="kind 'tokens' not allowed with arch 'vit'; allowed: classify"):
        build_model("tokens", _cfg("vit"))
    with pytest.raises(ValueError, match="sr_ratios .* not allowed with depths"):
        build_model("classify", _cfg("pvt", sr_ratios=(2,)))
    with pytest.raises(ValueError, match="stage 2's grid is 2x2"):
        build_model("classify", _cfg("pvt", sr_ratios=(2, 4)))


def test_tokens_positions_and_bias_tables_are_not_decayed():
    from attnbench.train.loop import optimizer

    tc = {"lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 0.05}
    for model in (ViT(_cfg("vit", pool="cls", distill=True, positions="learned")),
                  SwinNet(_cfg("swin", "swin", params={"window": 2})), PVT(_cfg("pvt", positions="learned"))):
        decayed, kept = (g["params"] for g in optimizer(model, tc).param_groups)
        names = {id(p): n for n, p in model.named_parameters()}
        skip = {names[id(p)] for p in kept if p.dim() >= 2}
        assert skip == model.no_weight_decay() and skip, skip
        assert all(names[id(p)] not in skip for p in decayed)
