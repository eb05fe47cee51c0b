"""@blocked kernels of the local-window patterns: the band engine (``engines/band.py``) fed with
each pattern's geometry — O(n w) time and memory in pure PyTorch, backward through autograd.

* ``sliding_window@blocked``: blocks of 64 queries read 64 + 2w keys (64 + w causal) through
  ``unfold`` views; one decode query reads its 2w + 1 keys only.
* ``dilated_window@blocked``: each residue class mod ``dilation`` is a plain sliding window of
  ``window`` over strided views of q, k, v (no regrouping copy).
* ``block_local@blocked``: query blocks aligned with key blocks, batched GEMMs per chunk of blocks.
"""
from __future__ import annotations

from attnbench.case import Shape
from attnbench.engines import band
from attnbench.patterns import BLOCK_LOCAL, DILATED, SLIDING
from attnbench.registry import AttnOutput, VariantSpec, add
from attnbench.variants.masked import pattern_kernel_fields, pattern_reasons


def sliding_window_blocked(q, k, v, *, causal=False, state=None, need_weights=False, window) -> AttnOutput:
    """q [B, H, N, D], k/v [B, Hkv, M, D]: |qp - j| <= window (causal: 0 <= qp - j <= window)."""
    return AttnOutput(out=band.run(band.sliding_plan(q.shape[2], k.shape[2], causal, window), q, k, v))


def dilated_window_blocked(q, k, v, *, causal=False, state=None, need_weights=False, window,
                           dilation) -> AttnOutput:
    """q [B, H, N, D], k/v [B, Hkv, M, D]: |qp - j| <= window dilation and qp = j (mod dilation)."""
    plan = band.dilated_plan(q.shape[2], k.shape[2], causal, window, dilation)
    return AttnOutput(out=band.run(plan, q, k, v))


def block_local_blocked(q, k, v, *, causal=False, state=None, need_weights=False, block, prev) -> AttnOutput:
    """q [B, H, N, D], k/v [B, Hkv, M, D]: query block qp // block attends to its own key block
    (and the previous one with ``prev``): O(N block) time and memory."""
    plan = band.block_local_plan(q.shape[2], k.shape[2], causal, block, prev)
    return AttnOutput(out=band.run(plan, q, k, v))


PLANS = {
    "sliding_window": lambda s, p: band.sliding_plan(s.seq_len, s.kv_len, s.causal, p["window"]),
    "dilated_window": lambda s, p: band.dilated_plan(s.seq_len, s.kv_len, s.causal, p["window"], p["dilation"]),
    "block_local": lambda s, p: band.block_local_plan(s.seq_len, s.kv_len, s.causal, p["block"], p["prev"]),
}


def _costs(pattern: str):
    plan_of = PLANS[pattern]

    def flops(shape: Shape, params) -> float:
        """FLOPs the kernel performs: 4 D per computed score, padding and band waste included."""
        return band.flops(plan_of(shape, params), shape.batch, shape.heads, shape.head_dim)

    def memory(shape: Shape, params) -> float:
        """Peak bytes above the inputs in shape.mode (engines/band.py: peak_bytes)."""
        return band.peak_bytes(plan_of(shape, params), shape.batch, shape.heads, shape.kv_heads,
                               shape.head_dim, shape.element_size, grad=shape.needs_grad)

    return flops, memory


for _pat, _fwd, _how in (
    (SLIDING, sliding_window_blocked, "blocks of 64 queries x (64 + 2w) keys (unfold views), band-masked batched GEMMs"),
    (DILATED, dilated_window_blocked, "each residue class mod dilation is a sliding window over strided views"),
    (BLOCK_LOCAL, block_local_blocked, "query blocks aligned with key blocks, batched GEMMs per chunk of blocks"),
):
    _flops_fn, _memory_fn = _costs(_pat.name)
    add(VariantSpec(
        name=f"{_pat.name}@blocked", forward=_fwd, time="O(n w d)", memory="O(n w)", default=True,
        doc=f"{_pat.doc}; pure PyTorch O(n w): {_how}", memory_fn=_memory_fn,
        extra_reasons=lambda s, p, _p=_pat: pattern_reasons(_p, s, p),
        **{**pattern_kernel_fields(_pat), "flops_fn": _flops_fn},
    ))
