"""Seeded inputs of a case: q [B, H, N, D], k, v [B, Hkv, M, D] on its device and dtype."""
from __future__ import annotations

import torch

from attnbench.case import Shape


def make_inputs(shape: Shape, seed: int = 0, requires_grad: bool = False):
    """Standard normal q, k, v drawn on the CPU from ``seed`` (the same numbers on every device),
    then moved and cast."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    dt = shape.torch_dtype

    def rnd(*s):
        t = torch.randn(*s, generator=g, dtype=torch.float32).to(device=shape.device, dtype=dt)
        return t.requires_grad_(requires_grad)

    q = rnd(shape.batch, shape.heads, shape.seq_len, shape.head_dim)
    k = rnd(shape.batch, shape.kv_heads, shape.kv_len, shape.head_dim)
    v = rnd(shape.batch, shape.kv_heads, shape.kv_len, shape.head_dim)
    return q, k, v
