"""FlexAttention (``torch.nn.attention.flex_attention``), compiled, for full attention and patterns.

``full@flex`` runs the fused kernel that ``torch.compile`` generates; the eager path
materializes scores and would be a silent lie, so the call is compiled with ``fullgraph=True``
and a recompile-limit hit raises instead of falling back. On CPU FlexAttention has no backward
and no float64; those cases are rows with reasons.

Compiles: one per (variant, shape) — static shapes. Dynamic shapes would compile once per
variant, but torch 2.13's CPU template fails to build with symbolic sizes as soon as a mask
reads a captured table (Longformer's global flags, BigBird's layout, Swin's groups; measured:
``CppCompileError ... 'cur_kvSplitSize7' was not declared``), so the suite keeps static shapes
and inductor's on-disk cache (``harness/env.py`` points it at one directory per user): a warm
compile is a cache hit (0.2 s instead of 4 s on a 2-core CPU).

Block masks are built without compiling (:func:`block_mask`): the mask is evaluated in chunks of
query blocks (O(N M) elementwise work in O(BUILD_ELEMS) memory) and the per-block verdicts
become a ``BlockMask`` through its public ``from_kv_blocks``. The compiled ``create_block_mask``
costs a 3 s compile per shape and mask (0.7 s warm); the eager chunked build costs ~1 s at
n = 16384 and nothing at small n. Causal is bottom-right, as everywhere in the suite.
"""
from __future__ import annotations

import functools

import torch

from attnbench.case import Shape
from attnbench.costs import fused_bytes
from attnbench.registry import AttnOutput, VariantSpec, add

BLOCK = 128  # FlexAttention's default sparse block size (query and key)
BUILD_ELEMS = 1 << 24  # mask elements evaluated at once while building a BlockMask


@functools.lru_cache(maxsize=None)
def compiled_flex():
    """The compiled ``flex_attention``; compilation itself happens at each new shape's first call."""
    import torch._dynamo

    from torch.nn.attention.flex_attention import flex_attention

    cfg = torch._dynamo.config
    # Many shapes run in one worker: allow them all, and never fall back to eager silently.
    for knob, value in (("recompile_limit", 256), ("cache_size_limit", 256),
                        ("accumulated_recompile_limit", 4096),
                        ("fail_on_recompile_limit_hit", True)):
        if hasattr(cfg, knob):
            setattr(cfg, knob, value)
    return torch.compile(flex_attention, dynamic=False, fullgraph=True)


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [QB, KB] -> (count [1, 1, QB], indices [1, 1, QB, KB]) int32, chosen blocks first."""
    count = blocks.sum(-1, dtype=torch.int32)
    idx = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return count[None, None], idx[None, None]


def block_mask(mask_mod, n: int, m: int, device: str):
    """A BlockMask for ``mask_mod`` over N queries and M keys, evaluated in chunks of query blocks.

    A block is full when every (query, key) in it is allowed, partial when some are; pad
    positions past N or M count as not allowed, as in torch's own ``create_block_mask``.
    """
    from torch.nn.attention.flex_attention import BlockMask

    qb, kb = -(-n // BLOCK), -(-m // BLOCK)
    partial = torch.zeros(qb, kb, dtype=torch.bool)
    full = torch.zeros(qb, kb, dtype=torch.bool)
    kv = torch.arange(kb * BLOCK, device=device, dtype=torch.int32)  # padded key index
    rows = max(BLOCK, BUILD_ELEMS // max(kb * BLOCK, 1) // BLOCK * BLOCK)
    zero = torch.zeros((), dtype=torch.int32, device=device)
    for r0 in range(0, qb * BLOCK, rows):
        q = torch.arange(r0, min(r0 + rows, qb * BLOCK), device=device, dtype=torch.int32)
        ok = mask_mod(zero, zero, q.clamp(max=n - 1)[:, None], kv.clamp(max=m - 1)[None, :])  # [R, KB*128]
        ok = ok.expand(q.numel(), kv.numel()) & (q < n)[:, None] & (kv < m)[None, :]
        tiles = ok.view(-1, BLOCK, kb, BLOCK)  # [R/128, 128, KB, 128]
        some = tiles.any(3).any(1).cpu()  # [R/128, KB]
        every = tiles.all(3).all(1).cpu()
        b0 = r0 // BLOCK
        partial[b0:b0 + some.shape[0]] = some & ~every
        full[b0:b0 + some.shape[0]] = every
    (pc, pi), (fc, fi) = _ordered(partial), _ordered(full)
    dev = torch.device(device)
    return BlockMask.from_kv_blocks(pc.to(dev), pi.to(dev), fc.to(dev), fi.to(dev), BLOCK_SIZE=BLOCK,
                                    mask_mod=mask_mod, seq_lengths=(n, m))


def causal_mask_mod(n: int, m: int):
    """Bottom-right causal: query i sees keys j <= i + M - N."""
    off = m - n

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + off

    return causal


@functools.lru_cache(maxsize=64)
def causal_block_mask(n: int, m: int, device: str):
    """Bottom-right causal BlockMask for N queries and M keys, cached per shape."""
    return block_mask(causal_mask_mod(n, m), n, m, device)


@functools.lru_cache(maxsize=64)
def full_block_mask(n: int, m: int, device: str):
    """An explicit all-True BlockMask. Passing ``block_mask=None`` instead makes the CPU kernel
    allocate an O(N M) buffer (138 MB at n = 4096, 2.1 GB at n = 16384, torch 2.13); with this
    mask its peak memory stays O(N D), at the same speed."""

    def everything(b, h, q_idx, kv_idx):
        return q_idx >= 0

    return block_mask(everything, n, m, device)


def flex_forward(q, k, v, *, causal=False, state=None, need_weights=False, block_mask=None,
                 score_mod=None) -> AttnOutput:
    """q [B, H, N, D], k/v [B, Hkv, M, D] -> out [B, H, N, D] (and lse [B, H, N] on CUDA)."""
    n, m = q.shape[2], k.shape[2]
    if block_mask is None:
        if causal and n > 1:  # a single decode query sees its whole cache
            block_mask = causal_block_mask(n, m, str(q.device))
        else:
            block_mask = full_block_mask(n, m, str(q.device))
    # On CPU the compiled kernel cannot return the log-sum-exp (torch 2.13), so ask only on CUDA.
    want_lse = q.device.type == "cuda"
    res = compiled_flex()(
        q, k, v, score_mod=score_mod, block_mask=block_mask,
        enable_gqa=k.shape[1] != q.shape[1], return_lse=want_lse,
    )
    out, lse = res if want_lse else (res, None)
    return AttnOutput(out=out, lse=lse)


def flex_reasons(shape: Shape, params=None) -> list[str]:
    if shape.device == "cpu" and shape.dtype == "float64":
        return ["FlexAttention on CPU supports float32, float16 and bfloat16, not float64"]
    return []


def full_flex(q, k, v, *, causal=False, state=None, need_weights=False) -> AttnOutput:
    """q [B, H, N, D], k/v [B, Hkv, M, D] -> out [B, H, N, D]: no mask, or the causal block mask."""
    return flex_forward(q, k, v, causal=causal)


add(VariantSpec(
    name="full@flex", forward=full_flex, family="dense", exact=True,
    time="O(n^2 d)", memory="O(n d)",
    backward=("cuda",),  # CPU backward raises NotImplementedError in torch 2.13
    extra_reasons=flex_reasons, memory_fn=fused_bytes,
    doc="FlexAttention compiled with torch.compile (fused kernel), no mask / causal block mask",
    paper="Dong et al. 2024, Flex Attention",
))
