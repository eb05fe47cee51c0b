"""The causal language model: x [B, N] int64 -> (logits [B, N, V], state), kind 'tokens'
(next-byte LM, MQAR). V = ``num_classes``, the data's target vocabulary.

What a position sees:

* a variant with memory (Transformer-XL, ``xl@segment``) sees its own segments plus the memory
  of earlier ones. The trainer feeds consecutive windows of a stream and passes back the state
  (one memory per layer, detached); ``state=None`` starts a stream. Absolute positions, if the
  config asks for them beside XL's relative terms, restart at 0 in every call.
* any other causal variant sees, by ``lm_context``: ``full``, the whole input of the call; or
  ``segment``, each block of ``segment_len`` tokens alone (the input is cut into segments, the
  last padded with PAD at its end, which no earlier position can see). It returns state None.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from attnbench import catalog
from attnbench.data.base import PAD
from attnbench.models.attention import Skeleton, carries_state, model_record, positions_used, require_supported
from attnbench.models.config import ModelConfig
from attnbench.models.encoder import Block, init_weights
from attnbench.models.positions import AbsolutePositions


class CausalLM(Skeleton):
    def __init__(self, cfg: ModelConfig, *, device: str = "cpu", check: bool = True):
        super().__init__()
        cfg.validate()
        spec = catalog.get(cfg.variant)
        self.stateful = carries_state(spec)
        # the context unit: a segment alone, or the whole input (memory variants: their segments)
        self.segment = cfg.segment_len if cfg.lm_context == "segment" and not self.stateful else None
        if check:
            require_supported(cfg, self.segment or cfg.segment_len or cfg.max_len, True, device=device)
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = AbsolutePositions(positions_used(cfg, spec), cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, causal=True) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)
        self.apply(init_weights)
        context = "memory" if self.stateful else cfg.lm_context
        self.record = model_record(cfg, True, lm_context=context, segment_len=cfg.segment_len)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        B, N = x.shape
        if self.segment:
            L = self.segment
            ns = -(-N // L)
            x = F.pad(x, (0, ns * L - N), value=PAD).view(B * ns, L)  # [B ns, L]: segments alone
        h = self.drop(self.pos(self.tok(x)))  # [B', N', C]
        states = []
        for i, block in enumerate(self.blocks):
            h, s = block(h, state[i] if self.stateful and state is not None else None)
            states.append(s)
        logits = self.head(self.ln(h))  # [B', N', V]
        if self.segment:
            logits = logits.view(B, -1, logits.shape[-1])[:, :N]  # [B, N, V]
        return logits, (tuple(states) if self.stateful else None)
