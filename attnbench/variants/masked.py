"""Kernels every pattern gets from its mask definition alone: ``@dense``, ``@flex``, ``@sdpa_mask``.

* ``P@dense`` — masked softmax on the dense score matrix: the pattern's reference kernel.
  O(N M) time and memory, so it declares its own size limit as a reason.
* ``P@flex`` — FlexAttention with the pattern's mask_mod (and score_mod for a bias); the
  BlockMask is built once per shape and cached, so its cost shows in ``first_call_ms`` and
  not in steady-state time. Compiled (fused kernel), forward only on CPU.
* ``P@sdpa_mask`` — SDPA with the pattern materialized as a boolean [N, M] mask: what a mask
  alone buys (nothing in time; O(N M) memory for the mask), the LRA way of emulating patterns.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from attnbench import reference
from attnbench.patterns import Pattern, _freeze, dense_mask, pattern_flops
from attnbench.registry import AttnOutput, Shape, VariantSpec, add

# The quadratic kernels of a pattern are references and baselines, not contenders: above these
# sizes a sweep would spend minutes per case on them (@dense evaluates the mask elementwise and
# keeps 3 score-sized tensors: ~14 s a call at 8192^2 on a 2-core CPU).
DENSE_LIMIT = 4096 * 4096  # N * M above which @dense refuses
SDPA_MASK_CPU_LIMIT = 8192 * 8192  # N * M above which @sdpa_mask refuses on CPU (no mask-skipping kernel there)


def _dense_reasons(shape: Shape) -> list[str]:
    if shape.seq_len * shape.kv_len > DENSE_LIMIT:
        return [f"@dense materializes N x M scores; N*M = {shape.seq_len * shape.kv_len} exceeds "
                f"its limit {DENSE_LIMIT} (4096^2): use @blocked or @flex"]
    return []


def _sdpa_mask_reasons(shape: Shape) -> list[str]:
    if shape.device == "cpu" and shape.seq_len * shape.kv_len > SDPA_MASK_CPU_LIMIT:
        return [f"@sdpa_mask on CPU reads a dense N x M mask with SDPA's CPU kernels, O(n^2) whatever the "
                f"pattern; N*M = {shape.seq_len * shape.kv_len} exceeds its CPU limit {SDPA_MASK_CPU_LIMIT} "
                f"(8192^2): use @blocked or @flex"]
    return []


def _materialized(shape: Shape) -> float:
    return 3.0 * shape.batch * shape.heads * shape.seq_len * shape.kv_len * shape.element_size


def _mask_bytes(shape: Shape) -> float:
    return float(shape.seq_len * shape.kv_len) + 2.0 * shape.batch * shape.heads * shape.seq_len * shape.kv_len * shape.element_size


def _bias(p: Pattern, n, m, heads, params, device, dtype):
    if p.make_bias is None:
        return None, None
    return p.make_bias(n, m, heads, params, device, dtype)


def make_dense(p: Pattern):
    def forward(q, k, v, *, causal=False, state=None, need_weights=False, **params) -> AttnOutput:
        """q [B, H, N, D], k/v [B, Hkv, M, D]; mask (and bias) materialized: O(N M)."""
        n, m = q.shape[2], k.shape[2]
        mask = dense_mask(p, n, m, params, causal=causal, device=q.device)
        _, dense_bias = _bias(p, n, m, q.shape[1], params, q.device, q.dtype)
        bias = None if dense_bias is None else dense_bias(torch.arange(n, device=q.device),
                                                          torch.arange(m, device=q.device))
        r = reference.attention(q, k, v, mask=mask, bias=bias)
        return AttnOutput(out=r.out, weights=r.weights if need_weights else None, lse=r.lse)

    return forward


@functools.lru_cache(maxsize=64)
def _flex_block_mask(name: str, n: int, m: int, causal: bool, frozen: tuple, device: str):
    from attnbench.patterns import get_pattern
    from attnbench.variants.flex import build_block_mask

    base = get_pattern(name).make_mask(n, m, dict(frozen), device)
    off = m - n
    if causal:
        def mask_mod(b, h, q_idx, kv_idx):
            return base(b, h, q_idx, kv_idx) & (kv_idx <= q_idx + off)
    else:
        mask_mod = base
    return build_block_mask(mask_mod, n, m, device)


def make_flex(p: Pattern):
    def forward(q, k, v, *, causal=False, state=None, need_weights=False, **params) -> AttnOutput:
        """q [B, H, N, D], k/v [B, Hkv, M, D]; fused kernel over the pattern's BlockMask."""
        from attnbench.variants.flex import flex_forward

        n, m = q.shape[2], k.shape[2]
        bm = _flex_block_mask(p.name, n, m, causal, _freeze(params), str(q.device))
        score_mod, _ = _bias(p, n, m, q.shape[1], params, q.device, q.dtype)
        return flex_forward(q, k, v, block_mask=bm, score_mod=score_mod)

    return forward


def make_sdpa_mask(p: Pattern):
    def forward(q, k, v, *, causal=False, state=None, need_weights=False, **params) -> AttnOutput:
        """q [B, H, N, D], k/v [B, Hkv, M, D]; SDPA with a materialized [N, M] mask."""
        n, m = q.shape[2], k.shape[2]
        mask = dense_mask(p, n, m, params, causal=causal, device=q.device)
        _, dense_bias = _bias(p, n, m, q.shape[1], params, q.device, q.dtype)
        attn_mask = mask
        if dense_bias is not None:
            b = dense_bias(torch.arange(n, device=q.device), torch.arange(m, device=q.device))
            attn_mask = b.masked_fill(~mask, float("-inf")).unsqueeze(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=k.shape[1] != q.shape[1])
        # SDPA gives NaN for a row with no allowed key; the suite's convention is zeros.
        return AttnOutput(out=torch.nan_to_num(out, nan=0.0))

    return forward


def register_pattern(p: Pattern) -> Pattern:
    """Register ``p`` and its generic kernels (@dense, @flex, @sdpa_mask)."""
    from attnbench.patterns import add_pattern
    from attnbench.variants.flex import _flex_reasons
    from attnbench.variants.sdpa import _fused_bytes

    add_pattern(p)

    def reasons(extra):
        """The kernel's own reasons plus the pattern's: a grid pattern (Swin) pairs each token
        with tokens of the same grid, so N == M in every mode (decode has no meaning there)."""
        def fn(shape: Shape) -> list[str]:
            r = []
            if p.grid and shape.seq_len != shape.kv_len:
                r.append(f"{p.name} tokens live on one H x W grid: queries and keys are the same N tokens "
                         f"(got N={shape.seq_len}, M={shape.kv_len}; one decode query has no window)")
            return r or (extra(shape) if extra else [])
        return fn

    flops = lambda shape, _n=p.name, _d=dict(p.defaults): pattern_flops(_n, shape, _d)  # noqa: E731
    common = dict(family=p.family, exact=True, defaults=dict(p.defaults), reference=p.name,
                  causal=p.causal, paper=p.paper, flops_fn=flops, cross=not p.grid)
    dense_mem = _materialized if p.make_bias is None else (
        lambda s: _materialized(s) + s.heads * s.seq_len * s.kv_len * s.element_size)  # + [H, N, M] bias
    add(VariantSpec(name=f"{p.name}@dense", forward=make_dense(p), time="O(n^2 d)", memory="O(n^2)",
                    doc=f"{p.doc}; masked softmax on dense scores (the pattern's reference)",
                    memory_fn=dense_mem, extra_reasons=reasons(_dense_reasons), returns_weights=True,
                    default=False, **common))
    add(VariantSpec(name=f"{p.name}@flex", forward=make_flex(p), time="O(n w d)", memory="O(n d)",
                    doc=f"{p.doc}; FlexAttention with the pattern's mask_mod, compiled",
                    backward=("cuda",), extra_reasons=reasons(_flex_reasons), memory_fn=_fused_bytes, **common))
    add(VariantSpec(name=f"{p.name}@sdpa_mask", forward=make_sdpa_mask(p), time="O(n^2 d)",
                    memory="O(n^2)", doc=f"{p.doc}; SDPA with the pattern as a dense boolean mask",
                    memory_fn=_mask_bytes, extra_reasons=reasons(_sdpa_mask_reasons), **common))
    return p
