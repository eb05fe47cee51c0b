"""xformers' ``memory_efficient_attention`` (``full@xformers``), imported lazily.

xformers chooses among its own fmha operators (cutlass, flash, ck, ...). When none accepts a
case — on CPU none does — its dispatch error lists each operator's reasons; that text becomes
the row's reasons, so the user sees xformers' own explanation rather than ours.
"""
from __future__ import annotations

import logging
import re

import torch

from attnbench.case import Shape, Unsupported
from attnbench.costs import fused_bytes
from attnbench.patterns import BLOCK_LOCAL, SLIDING
from attnbench.registry import AttnOutput, VariantSpec, add
from attnbench.variants.masked import pattern_kernel_fields


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


def xformers_reasons(shape: Shape, params=None) -> list[str]:
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
    extra_reasons=xformers_reasons, memory_fn=fused_bytes,
    doc="xformers.ops.memory_efficient_attention (xformers picks the fmha operator)",
    paper="Lefaudeux et al. 2022, xFormers",
))


# ---------------------------------------------------------------------------------------------
# Patterns xformers has a bias type for. Its fmha kernels skip the key blocks such a bias masks
# out, so these run in O(n w d) on CUDA. Elsewhere xformers has no bias type for the pattern:
# dilated windows, Longformer's / BigBird's global and random blocks, Swin's shifted windows
# and arbitrary block layouts are not expressible, so no @xformers kernel is registered for
# them (their @flex kernel is the fused option).
# ---------------------------------------------------------------------------------------------
def sliding_bias(fmha, n: int, m: int, causal: bool, window: int):
    """xformers' bias for |i + M - N - j| <= window (causal: 0 <= i + M - N - j <= window).

    ``LocalAttentionFromBottomRightMask`` allows q - left <= k + (N - M) <= q + right, our band
    with left = right = window; the causal form keeps distances 0 .. window_size - 1.
    """
    if causal:
        return fmha.attn_bias.LowerTriangularFromBottomRightLocalAttentionMask(window + 1)
    return fmha.attn_bias.LocalAttentionFromBottomRightMask(window_left=window, window_right=window)


def block_local_bias(fmha, batch: int, n: int, causal: bool, block: int):
    """Block-diagonal bias over the batch folded into one sequence of B * N tokens:
    blocks of ``block`` tokens (the last one of each sequence shorter), causal within a block."""
    seqlens = [block] * (n // block) + ([n % block] if n % block else [])
    cls = fmha.attn_bias.BlockDiagonalCausalMask if causal else fmha.attn_bias.BlockDiagonalMask
    return cls.from_seqlens(seqlens * batch)


def _run_xformers(q, k, v, bias, fold_batch: bool = False):
    xops, _ = _import_xformers()
    b, h, n, d = q.shape
    qx, kx, vx = _to_xformers(q, k, v)
    if fold_batch:  # block-diagonal biases index one long sequence
        qx, kx, vx = (t.reshape(1, b * t.shape[1], *t.shape[2:]) for t in (qx, kx, vx))
    try:
        out = xops.memory_efficient_attention(qx, kx, vx, attn_bias=bias)
    except NotImplementedError as e:
        raise Unsupported(_reason(e)) from e
    return AttnOutput(out=out.reshape(b, n, h, d).transpose(1, 2))


def sliding_window_xformers(q, k, v, *, causal=False, state=None, need_weights=False, window):
    """q [B, H, N, D], k/v [B, Hkv, M, D] -> [B, H, N, D]; O(N w D) on CUDA."""
    _, fmha = _import_xformers()
    return _run_xformers(q, k, v, sliding_bias(fmha, q.shape[2], k.shape[2], causal, int(window)))


def block_local_xformers(q, k, v, *, causal=False, state=None, need_weights=False, block, prev):
    """q [B, H, N, D], k/v [B, Hkv, N, D] -> [B, H, N, D]; O(N b D) on CUDA."""
    if prev or q.shape[2] != k.shape[2]:
        raise Unsupported(_block_local_limits(bool(prev), q.shape[2], k.shape[2])[0])
    _, fmha = _import_xformers()
    bias = block_local_bias(fmha, q.shape[0], q.shape[2], causal, int(block))
    return _run_xformers(q, k, v, bias, fold_batch=True)


def _block_local_limits(prev: bool, n: int, m: int) -> list[str]:
    r = []
    if prev:
        r.append("block_local with prev=True has no xformers bias type (BlockDiagonalMask covers one block)")
    if n != m:
        r.append(f"block_local@xformers needs N == M (got {n} vs {m}): its block-diagonal bias pairs query and key blocks")
    return r


for _pattern, _fwd, _extra in (
    (SLIDING, sliding_window_xformers, lambda s, p: []),
    (BLOCK_LOCAL, block_local_xformers, lambda s, p: _block_local_limits(bool(p["prev"]), s.seq_len, s.kv_len)),
):
    add(VariantSpec(
        name=f"{_pattern.name}@xformers", forward=_fwd, time="O(n w d)", memory="O(n d)", needs=("xformers",),
        memory_fn=fused_bytes, extra_reasons=lambda s, p, _x=_extra: _x(s, p) + xformers_reasons(s),
        doc=f"{_pattern.doc}; xformers memory_efficient_attention with its local / block-diagonal bias",
        **pattern_kernel_fields(_pattern),
    ))
