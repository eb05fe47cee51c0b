"""Encoders: the pre-LN block, the tower, the classifier and the dual encoder for retrieval.

    EncoderClassifier  x [B, N] int64      -> (logits [B, C], None)   kind 'classify'
    DualEncoder        x [B, 2, N] int64   -> (logits [B, C], None)   kind 'pair'

Token ids are in [0, vocab_size), PAD = 0 (``attnbench.data.base``); with ``pool='cls'`` the
tower prepends its own CLS id, ``vocab_size`` (the embedding has vocab_size + 1 rows). Attention
sees PAD tokens (``attention`` module docstring); mean pooling averages the non-PAD tokens only.
Encoders carry no state: a stateful variant (Transformer-XL) is causal only and is refused at
build time with the registry's reasons.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from attnbench import catalog
from attnbench.data.base import PAD
from attnbench.models.attention import Attention, Skeleton, model_record, positions_used, require_supported
from attnbench.models.config import ModelConfig
from attnbench.models.positions import AbsolutePositions


def init_weights(module: nn.Module) -> None:
    """nanoGPT's: normal(0, 0.02) for linear and embedding weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp)
        self.act = nn.GELU()
        self.proj = nn.Linear(cfg.mlp, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Pre-LN: x + attn(ln(x)), then x + mlp(ln(x)). Returns the variant's state too."""

    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg, causal)
        self.drop = nn.Dropout(cfg.dropout)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        a, state = self.attn(self.ln1(x), state)
        x = x + self.drop(a)
        return x + self.mlp(self.ln2(x)), state


class Encoder(nn.Module):
    """The tower: x [B, N] -> pooled [B, C] (CLS token or mean over non-PAD tokens)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg, self.cls = cfg, cfg.pool == "cls"
        self.tok = nn.Embedding(cfg.vocab_size + self.cls, cfg.d_model)  # + the CLS id, vocab_size
        self.pos = AbsolutePositions(positions_used(cfg, catalog.get(cfg.variant)), cfg.max_len + self.cls,
                                     cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, cfg.causal) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N = x.shape
        keep = x != PAD  # [B, N]
        if self.cls:
            x = torch.cat([x.new_full((B, 1), self.cfg.vocab_size), x], 1)  # [B, 1 + N]
        h = self.drop(self.pos(self.tok(x)))  # [B, N', C]
        for block in self.blocks:
            h, _ = block(h)
        h = self.ln(h)
        if self.cls:
            return h[:, 0]  # [B, C]
        w = keep.unsqueeze(-1).to(h.dtype)  # [B, N, 1]
        return (h * w).sum(1) / w.sum(1).clamp(min=1.0)  # [B, C]


class Head(nn.Module):
    """LRA's classifier head: dense (mlp) -> relu -> dense (classes)."""

    def __init__(self, cfg: ModelConfig, d_in: int):
        super().__init__()
        self.fc = nn.Linear(d_in, cfg.mlp)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.mlp, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.relu(self.fc(x))))


class EncoderClassifier(Skeleton):
    """x [B, N] -> (logits [B, C], None)."""

    def __init__(self, cfg: ModelConfig, *, device: str = "cpu", check: bool = True):
        super().__init__()
        cfg.validate()
        if check:
            require_supported(cfg, cfg.max_len + (cfg.pool == "cls"), cfg.causal, device=device)
        self.encoder = Encoder(cfg)
        self.head = Head(cfg, cfg.d_model)
        self.apply(init_weights)
        self.record = model_record(cfg, cfg.causal, pool=cfg.pool)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, None]:
        return self.head(self.encoder(x)), None


class DualEncoder(Skeleton):
    """x [B, 2, N] -> (logits [B, C], None): one shared tower encodes both sequences (u, v); the
    head reads [u, v] (``pair_head='uv'``, LRA's released code) or [u, v, u*v, u-v] ('uvmd', the
    LRA paper's description)."""

    def __init__(self, cfg: ModelConfig, *, device: str = "cpu", check: bool = True):
        super().__init__()
        cfg.validate()
        if check:
            require_supported(cfg, cfg.max_len + (cfg.pool == "cls"), cfg.causal, device=device)
        self.pair_head = cfg.pair_head
        self.encoder = Encoder(cfg)
        self.head = Head(cfg, (2 if cfg.pair_head == "uv" else 4) * cfg.d_model)
        self.apply(init_weights)
        self.record = model_record(cfg, cfg.causal, pool=cfg.pool, pair_head=cfg.pair_head)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, None]:
        B, _, N = x.shape
        uv = self.encoder(x.reshape(B * 2, N)).view(B, 2, -1)  # [B, 2, C]
        u, v = uv[:, 0], uv[:, 1]  # [B, C] each
        feats = [u, v] if self.pair_head == "uv" else [u, v, u * v, u - v]
        return self.head(torch.cat(feats, -1)), None  # head over [B, 2C] or [B, 4C]
