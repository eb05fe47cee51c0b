"""Kernels every pattern gets from its mask definition alone: ``@dense``, ``@flex``, ``@sdpa_mask``.

* ``P@dense`` — masked softmax on the dense score matrix: the pattern's reference kernel.
  O(N M) time and memory, so it declares its own size limit as a reason.
* ``P@flex`` — FlexAttention with the pattern's mask_mod (and score_mod for a bias); the
  BlockMask is built once per shape and cached, so its cost shows in ``first_call_ms`` and
  not in steady-state time. Compiled (fused kernel), forward only on CPU.
* ``P@sdpa_mask`` — SDPA with the pattern materialized as a boolean [N, M] mask, evaluated per
  call: what a mask alone buys (nothing in time; O(N M) memory for the mask), the LRA way of
  emulating patterns.

A pattern with a bias (Swin's relative-position table) takes ``bias_table=`` in every kernel: a
model's learned table in place of the seeded draw (kept out of the cached, frozen params).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from attnbench import reference
from attnbench.case import Shape, Unsupported, freeze
from attnbench.costs import fused_bytes, materialized_bytes, scores_bytes
from attnbench.patterns import PATTERNS, Pattern, add_pattern, dense_mask, pattern_flops
from attnbench.registry import AttnOutput, VariantSpec, add
from attnbench.variants.flex import block_mask, flex_forward, flex_reasons

# The quadratic kernels of a pattern are references and baselines, not contenders: above these
# sizes a sweep would spend minutes per case on them (@dense evaluates the mask elementwise and
# keeps 3 score-sized tensors: ~14 s a call at 8192^2 on a 2-core CPU).
DENSE_LIMIT = 4096 * 4096  # N * M above which @dense refuses
SDPA_MASK_CPU_LIMIT = 8192 * 8192  # N * M above which @sdpa_mask refuses on CPU (no mask-skipping kernel there)
MASK_EVAL_BYTES = 10.0  # bytes per (query, key) pair while a mask is evaluated densely (int64 indices + bool)


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


def _bias(p: Pattern, n, m, heads, params, device, dtype, table=None):
    """(score_mod, dense_bias) of the pattern's bias, or (None, None). ``table``: a given
    (learned) bias table, e.g. Swin's [heads, (2M-1)^2], used instead of the seeded draw."""
    if p.make_bias is None:
        if table is not None:
            raise ValueError(f"{p.name} has no relative-position bias: bias_table is not taken")
        return None, None
    if table is None:
        return p.make_bias(n, m, heads, params, device, dtype)
    return p.make_bias(n, m, heads, params, device, dtype, table=table)


def make_dense(p: Pattern):
    def forward(q, k, v, *, causal=False, state=None, need_weights=False, bias_table=None,
                **params) -> AttnOutput:
        """q [B, H, N, D], k/v [B, Hkv, M, D]; mask (and bias) materialized: O(N M)."""
        n, m = q.shape[2], k.shape[2]
        mask = dense_mask(p, n, m, params, causal=causal, device=q.device)  # [N, M]
        _, dense_bias = _bias(p, n, m, q.shape[1], params, q.device, q.dtype, bias_table)
        bias = None if dense_bias is None else dense_bias(torch.arange(n, device=q.device),
                                                          torch.arange(m, device=q.device))  # [H, N, M]
        r = reference.attention(q, k, v, mask=mask, bias=bias)
        return AttnOutput(out=r.out, weights=r.weights if need_weights else None, lse=r.lse)

    return forward


@functools.lru_cache(maxsize=64)
def _flex_block_mask(p: Pattern, n: int, m: int, causal: bool, frozen: tuple, device: str):
    base = p.make_mask(n, m, dict(frozen), device)
    off = m - n
    if causal:
        def mask_mod(b, h, q_idx, kv_idx):
            return base(b, h, q_idx, kv_idx) & (kv_idx <= q_idx + off)
    else:
        mask_mod = base
    return block_mask(mask_mod, n, m, device)


def make_flex(p: Pattern):
    def forward(q, k, v, *, causal=False, state=None, need_weights=False, bias_table=None,
                **params) -> AttnOutput:
        """q [B, H, N, D], k/v [B, Hkv, M, D]; fused kernel over the pattern's BlockMask."""
        n, m = q.shape[2], k.shape[2]
        if (bias_table is not None and bias_table.requires_grad and torch.is_grad_enabled()
                and q.device.type == "cpu"):
            raise Unsupported(f"{p.name}@flex has no backward on CPU, so it cannot learn a bias_table "
                              f"that requires grad: use {p.name}@blocked or {p.name}@dense, or pass it detached")
        bm = _flex_block_mask(p, n, m, causal, freeze(params), str(q.device))
        score_mod, _ = _bias(p, n, m, q.shape[1], params, q.device, q.dtype, bias_table)
        return flex_forward(q, k, v, block_mask=bm, score_mod=score_mod)

    return forward


def make_sdpa_mask(p: Pattern):
    def forward(q, k, v, *, causal=False, state=None, need_weights=False, bias_table=None,
                **params) -> AttnOutput:
        """q [B, H, N, D], k/v [B, Hkv, M, D]; SDPA with a materialized [N, M] mask."""
        n, m = q.shape[2], k.shape[2]
        mask = dense_mask(p, n, m, params, causal=causal, device=q.device)  # [N, M]
        _, dense_bias = _bias(p, n, m, q.shape[1], params, q.device, q.dtype, bias_table)
        attn_mask = mask
        if dense_bias is not None:
            b = dense_bias(torch.arange(n, device=q.device), torch.arange(m, device=q.device))  # [H, N, M]
            attn_mask = b.masked_fill(~mask, float("-inf")).unsqueeze(0)  # [1, H, N, M]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=k.shape[1] != q.shape[1])
        # SDPA gives NaN for a row with no allowed key; the suite's convention is zeros.
        return AttnOutput(out=torch.nan_to_num(out, nan=0.0))

    return forward


def _mask_eval_bytes(shape: Shape) -> float:
    return MASK_EVAL_BYTES * shape.seq_len * shape.kv_len


def _memory(p: Pattern, kernel: str):
    """Predicted peak bytes of one call in shape.mode (costs module: autograd included)."""
    def memory(shape: Shape, params) -> float:
        bias = 0.0 if p.make_bias is None else scores_bytes(shape, 1.0) / shape.batch  # [H, N, M]
        if kernel == "dense":
            return materialized_bytes(shape) + _mask_eval_bytes(shape) + bias
        if kernel == "sdpa_mask":
            return fused_bytes(shape) + _mask_eval_bytes(shape) + 2.0 * bias  # bias and its masked copy
        return fused_bytes(shape)

    return memory


def _reasons(p: Pattern, extra):
    """The kernel's own reasons plus the pattern's: a grid pattern (Swin) pairs each token with
    tokens of the same grid, so N == M in every mode (decode has no meaning there)."""
    def fn(shape: Shape, params) -> list[str]:
        return pattern_reasons(p, shape, params) or (extra(shape) if extra else [])

    return fn


def pattern_reasons(p: Pattern, shape: Shape, params) -> list[str]:
    """What the pattern itself cannot do at this shape (every kernel of it shares these)."""
    r = []
    if p.grid and shape.seq_len != shape.kv_len:
        r.append(f"{p.name} tokens live on one H x W grid: queries and keys are the same N tokens "
                 f"(got N={shape.seq_len}, M={shape.kv_len}; one decode query has no window)")
    if p.shape_reasons is not None and not r:
        r.extend(p.shape_reasons(shape.seq_len, shape.kv_len, params))
    return r


def pattern_kernel_fields(p: Pattern) -> dict:
    """What every kernel of pattern ``p`` declares alike (family, params, reference, costs)."""
    return dict(family=p.family, exact=True, params=dict(p.params), reference=p.name, causal=p.causal,
                paper=p.paper, cross=not p.grid,
                relative_positions=p.make_bias is not None,  # a relative-position bias (Swin's table)
                flops_fn=lambda shape, params, _p=p: pattern_flops(_p, shape, params))


def register_pattern(p: Pattern) -> Pattern:
    """Make ``p`` known and register its generic kernels (@dense, @flex, @sdpa_mask)."""
    add_pattern(p)
    common = pattern_kernel_fields(p)
    add(VariantSpec(name=f"{p.name}@dense", forward=make_dense(p), time="O(n^2 d)", memory="O(n^2)",
                    doc=f"{p.doc}; masked softmax on dense scores (the pattern's reference)",
                    memory_fn=_memory(p, "dense"), extra_reasons=_reasons(p, _dense_reasons),
                    returns_weights=True, **common))
    add(VariantSpec(name=f"{p.name}@flex", forward=make_flex(p), time="O(n w d)", memory="O(n d)",
                    doc=f"{p.doc}; FlexAttention with the pattern's mask_mod, compiled",
                    backward=("cuda",), extra_reasons=_reasons(p, flex_reasons), memory_fn=_memory(p, "flex"),
                    **common))
    add(VariantSpec(name=f"{p.name}@sdpa_mask", forward=make_sdpa_mask(p), time="O(n^2 d)",
                    memory="O(n^2)", doc=f"{p.doc}; SDPA with the pattern as a dense boolean mask",
                    memory_fn=_memory(p, "sdpa_mask"), extra_reasons=_reasons(p, _sdpa_mask_reasons), **common))
    return p


for _pattern in list(PATTERNS.values()):
    register_pattern(_pattern)
