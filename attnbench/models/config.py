"""One config for every skeleton: the attention variant, the sizes and the choices, with reasons.

A task gives every variant this same config but ``variant`` and ``params`` (the Long Range
Arena's rule); :func:`attnbench.models.param_report` then checks that the parameter counts stay
within 10% of full attention's. ``validate()`` refuses a bad value with one line naming it and
what is allowed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

POSITIONS = ("none", "learned", "sinusoidal", "rotary")
POOLS = ("cls", "mean")
PAIR_HEADS = ("uv", "uvmd")
LM_CONTEXTS = ("full", "segment")


@dataclass
class ModelConfig:
    variant: str = "full"  # registry name or bare pattern (its default kernel: accuracy is the pattern's)
    params: dict[str, Any] = field(default_factory=dict)  # the variant's parameters ({"window": 16})
    d_model: int = 64  # LRA's small models use 64..512; 64 trains on a 2-core CPU in minutes
    heads: int = 4  # query heads H; head_dim = d_model / heads
    kv_heads: int | None = None  # K/V heads (None: H); mqa / gqa fix their own (registry rule)
    layers: int = 2
    mlp: int = 128  # hidden width of each block's MLP and of the classifier head (LRA: mlp_dim)
    dropout: float = 0.0  # embeddings, residual branches, MLP, head
    # Fused kernels expose no attention probabilities to drop, and dropping them only where a
    # kernel returns weights would give variants different skeletons. So, for every variant
    # alike: elementwise dropout on the attention OUTPUT [B, H, N, D] before the output
    # projection (recorded as such in ``model.record``), not on the probabilities.
    attn_dropout: float = 0.0
    positions: str = "learned"  # none | learned | sinusoidal | rotary (RoPE on q and k)
    # Variants with their own relative positions (Swin's bias, XL's relative terms) get no
    # absolute positions unless this is set.
    positions_with_relative: bool = False
    pool: str = "cls"  # cls (a CLS token id vocab_size, prepended) | mean (over non-PAD tokens)
    pair_head: str = "uv"  # uv = [u, v] (LRA's released code) | uvmd = [u, v, u*v, u-v] (LRA's paper)
    lm_context: str = "full"  # causal LM without memory: full (the whole input) | segment (each segment_len block alone)
    segment_len: int | None = None  # causal LM: the context unit for lm_context='segment'
    max_len: int = 1024  # longest input (learned positions have this many rows, CLS aside)
    vocab_size: int = 257  # token ids [0, vocab_size), PAD = 0 (data.base)
    num_classes: int = 2  # classes (classify, pair) or the target vocabulary (tokens)
    causal: bool = False  # encoders: causal attention inside the tower (the LM is always causal)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def validate(self) -> "ModelConfig":
        """Raise ValueError naming the bad value and what is allowed; return self."""
        for name, allowed in (("positions", POSITIONS), ("pool", POOLS), ("pair_head", PAIR_HEADS),
                              ("lm_context", LM_CONTEXTS)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} {value!r} not allowed; allowed: {', '.join(allowed)}")
        for name in ("d_model", "heads", "layers", "mlp", "max_len", "vocab_size", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} {value!r} not allowed; allowed: a positive integer")
        for name in ("kv_heads", "segment_len"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} {value!r} not allowed; allowed: a positive integer or None")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} {value!r} not allowed; allowed: a number in [0, 1)")
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} not allowed with heads={self.heads}; "
                             f"allowed: a multiple of heads")
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise ValueError(f"kv_heads {self.kv_heads} not allowed with heads={self.heads}; "
                             f"allowed: a divisor of heads")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"positions 'rotary' not allowed with head_dim={self.head_dim}; "
                             f"allowed: an even head_dim (d_model / heads)")
        if self.lm_context == "segment" and self.segment_len is None:
            raise ValueError("lm_context 'segment' not allowed without segment_len; "
                             "allowed: lm_context 'full', or set segment_len")
        if not isinstance(self.params, dict):
            raise ValueError(f"params {self.params!r} not allowed; allowed: a mapping of the variant's parameters")
        return self
