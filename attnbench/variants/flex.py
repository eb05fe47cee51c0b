"""FlexAttention (``torch.nn.attention.flex_attention``), compiled, for full attention.

``full@flex`` runs the fused kernel that ``torch.compile`` generates; the eager path
materializes scores and would be a silent lie, so the call is compiled with ``fullgraph=True``
and a recompile-limit hit raises instead of falling back. The first call per shape compiles
(10-20 s on CPU) and is timed apart by the harness. On CPU FlexAttention has no backward and
no float64; those cases are rows with reasons.

Causal uses a block mask (bottom-right, as everywhere in the suite) built once per shape with
a compiled ``create_block_mask`` so that building it stays cheap at large n.
"""
from __future__ import annotations

import functools

import torch

from attnbench.registry import AttnOutput, Shape, VariantSpec, add
from attnbench.variants.sdpa import _fused_bytes


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


@functools.lru_cache(maxsize=None)
def _compiled_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    compiled_flex()  # applies the recompile settings
    return torch.compile(create_block_mask)


def build_block_mask(mask_mod, n: int, m: int, device: str):
    """A BlockMask for ``mask_mod`` over N queries and M keys.

    Built through ``torch.compile(create_block_mask)``: the eager builder materializes
    O(N M) intermediates (4 GB, 7 s at n = 16384 on CPU).
    """
    return _compiled_create_block_mask()(mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=m, device=device)


@functools.lru_cache(maxsize=64)
def causal_block_mask(n: int, m: int, device: str):
    """Bottom-right causal BlockMask for N queries and M keys, cached per shape."""
    off = m - n

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + off

    return build_block_mask(causal, n, m, device)


@functools.lru_cache(maxsize=64)
def full_block_mask(n: int, m: int, device: str):
    """An explicit all-True BlockMask. Passing ``block_mask=None`` instead makes the CPU kernel
    allocate an O(N M) buffer (138 MB at n = 4096, 2.1 GB at n = 16384, torch 2.13); with this
    mask its peak memory stays O(N D), at the same speed."""

    def everything(b, h, q_idx, kv_idx):
        return q_idx >= 0

    return build_block_mask(everything, n, m, device)


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


def _flex_reasons(shape: Shape) -> list[str]:
    if shape.device == "cpu" and shape.dtype == "float64":
        return ["FlexAttention on CPU supports float32, float16 and bfloat16, not float64"]
    return []


add(VariantSpec(
    name="full@flex", forward=flex_forward, family="dense", exact=True,
    time="O(n^2 d)", memory="O(n d)",
    backward=("cuda",),  # CPU backward raises NotImplementedError in torch 2.13
    extra_reasons=_flex_reasons, memory_fn=_fused_bytes,
    doc="FlexAttention compiled with torch.compile (fused kernel), no mask / causal block mask",
    paper="Dong et al. 2024, Flex Attention",
))
