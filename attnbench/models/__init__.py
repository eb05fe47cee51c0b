"""Model skeletons: every variant trains in the same model, its attention called by registry name.

    build_model(kind, cfg, *, device="cpu", check=True) -> nn.Module
        by ``cfg.arch``: 'encoder' (the default) by kind: 'classify' -> EncoderClassifier,
        'pair' -> DualEncoder, 'tokens' -> CausalLM; the vision archs classify images (kind
        'classify', pixels [B, C*H*W] with ``cfg.image`` = (C, H, W)): 'vit' -> ViT (DeiT with
        ``cfg.distill``), 'swin' -> SwinNet, 'pvt' -> PVT.
        Every model: model(x, state=None) -> (logits, state). A variant that cannot run the
        model's case (non-causal xl, swin in a causal LM, a kernel without a backward on
        ``device``) raises attnbench.case.Unsupported with the registry's reasons.
    count_params(model) -> int
    param_report(kind, cfg, *, device="cpu", check=True) -> {"params", "full_params", "deviation",
        "own_params", "within_limit", "limit", "positions", "kv_heads"}
    FAIRNESS_LIMIT = 0.10

Evaluation with other variant params: ``model.set_variant_params(mem_len=0)`` (from then on) or
``with model.variant_params(mem_len=0): ...`` (restored after); attention weights:
``with model.attention_weights() as ws: model(x)``; ``model.has_memory()``: whether state is
worth passing back. ``model.record`` says what was used (variant, resolved params, positions).
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from attnbench.data.base import KINDS
from attnbench.models import fairness
from attnbench.models.config import ARCHS, ModelConfig
from attnbench.models.encoder import DualEncoder, EncoderClassifier
from attnbench.models.fairness import FAIRNESS_LIMIT, count_params
from attnbench.models.lm import CausalLM
from attnbench.models.pvt import PVT
from attnbench.models.swin_net import SwinNet
from attnbench.models.vit import ViT

MODELS = {"classify": EncoderClassifier, "pair": DualEncoder, "tokens": CausalLM}
assert tuple(MODELS) == KINDS
VISION_MODELS = {"vit": ViT, "swin": SwinNet, "pvt": PVT}  # kind 'classify' only
assert ("encoder", *VISION_MODELS) == ARCHS


def build_model(kind: str, cfg: ModelConfig, *, device: str = "cpu", check: bool = True) -> nn.Module:
    """The skeleton of ``cfg.arch`` for data of ``kind`` (one of data.base.KINDS), on the CPU until moved."""
    if cfg.arch not in ARCHS:
        raise ValueError(f"arch {cfg.arch!r} not allowed; allowed: {', '.join(ARCHS)}")
    if kind not in MODELS:
        raise ValueError(f"kind {kind!r} not allowed; allowed: {', '.join(MODELS)}")
    if cfg.arch == "encoder":
        return MODELS[kind](cfg, device=device, check=check)
    if kind != "classify":
        raise ValueError(f"kind {kind!r} not allowed with arch {cfg.arch!r}; allowed: classify (images)")
    return VISION_MODELS[cfg.arch](cfg, device=device, check=check)


def param_report(kind: str, cfg: ModelConfig, *, device: str = "cpu", check: bool = True) -> dict[str, Any]:
    """The config's parameter count against full attention's in the same skeleton (Unsupported,
    with the registry's reasons, for a variant that cannot run the model's case on ``device``)."""
    return fairness.param_report(kind, cfg, build_model, device=device, check=check)


__all__ = ["FAIRNESS_LIMIT", "MODELS", "PVT", "VISION_MODELS", "CausalLM", "DualEncoder", "EncoderClassifier",
           "ModelConfig", "SwinNet", "ViT", "build_model", "count_params", "param_report"]
