"""xformers' ``memory_efficient_attention`` (``full@xformers``), imported lazily.

xformers chooses among its own fmha operators (cutlass, flash, ck, ...). When none accepts a
case — on CPU none does — its dispatch error lists each operator's reasons; that text becomes
the row's reasons, so the user sees xformers' own explanation rather than ours.
"""
from __future__ import annotations

import logging
import re

import torch

from attnbench.registry import AttnOutput, Shape, Unsupported, VariantSpec, add
from attnbench.variants.sdpa import _fused_bytes


def _to_xformers(q, k, v):
    """[B, H, N, D] -> xformers' [B, N, H, D], or [B, N, Hkv, G, D] for grouped K/V (views only)."""
    b, h, n, d = q.shape
    hkv, m = k.shape[1], k.shape[2]
    if hkv == h:
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    g = h // hkv
    qx = q.reshape(b, hkv, g, n, d).permute(0, 3, 1, 2, 4)
    kx = k.transpose(1, 2).unsqueeze(3).expand(b, m, hkv, g, d)
    vx = v.transpose(1, 2).unsqueeze(3).expand(b, m, hkv, g, d)
    return qx, kx, vx


def _import_xformers():
    """Import xformers quietly: its warning that the C++/CUDA extensions did not load is
    repeated, per operator, in the dispatch reasons we report."""
    log = logging.getLogger("xformers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import xformers.ops  # noqa: F401
        from xformers.ops import fmha
    finally:
        log.setLevel(level)
    return xformers.ops, fmha


def _reason(e: Exception) -> str:
    """xformers' dispatch message without the echo of our input shapes."""
    text = " ".join(str(e).split())
    return re.sub(r" with inputs: .*? p : [0-9.]+", ":", text)


def xformers_forward(q, k, v, *, causal=False, state=None, need_weights=False) -> AttnOutput:
    """q [B, H, N, D], k/v [B, Hkv, M, D] -> out [B, H, N, D]."""
    xops, fmha = _import_xformers()
    b, h, n, d = q.shape
    bias = None
    if causal and n > 1:
        bias = fmha.attn_bias.LowerTriangularFromBottomRightMask()
    qx, kx, vx = _to_xformers(q, k, v)
    try:
        out = xops.memory_efficient_attention(qx, kx, vx, attn_bias=bias)
    except NotImplementedError as e:
        raise Unsupported(_reason(e)) from e
    if out.dim() == 5:  # [B, N, Hkv, G, D]
        out = out.reshape(b, n, h, d)
    return AttnOutput(out=out.transpose(1, 2))


def _xformers_reasons(shape: Shape) -> list[str]:
    """xformers' own dispatch verdict for a CPU case (checked on tiny tensors, no CUDA init)."""
    if shape.device != "cpu":
        return []  # decided in the worker, which is allowed to touch CUDA
    _, fmha = _import_xformers()
    dt = shape.torch_dtype
    q = torch.zeros(1, 4, 1, shape.head_dim, dtype=dt)
    try:
        fmha._dispatch_fw(fmha.Inputs(query=q, key=q, value=q), shape.needs_grad)
    except NotImplementedError as e:
        return [_reason(e)]
    return []


add(VariantSpec(
    name="full@xformers", forward=xformers_forward, family="dense", exact=True,
    time="O(n^2 d)", memory="O(n d)", needs=("xformers",),
    extra_reasons=_xformers_reasons, memory_fn=_fused_bytes,
    doc="xformers.ops.memory_efficient_attention (xformers picks the fmha operator)",
    paper="Lefaudeux et al. 2022, xFormers",
))
