"""sra: PVT's spatial-reduction attention, keys and values pooled over the 2-D grid by R x R.

Definition. The n tokens sit in raster order on an H x W grid (``grid``, default the most nearly
square factorization of n, as for Swin). Keys and values are average-pooled over R x R
non-overlapping windows (``ratio`` = R), giving M' = ceil(H/R) ceil(W/R) pooled keys in raster
order of the windows, and each of the n queries attends to them with exact softmax:

    out = softmax(Q (P K)^T / sqrt(D)) (P V),   P [M', n]: row p averages the tokens of window p.

Where R does not divide a side, pooling is ceil-mode (``attnbench.patterns.grid``): the last
window along that side is cut short at the grid's edge and averages only its real tokens, as
``avg_pool2d(kernel=R, stride=R, ceil_mode=True, count_include_pad=False)`` does; so every n and
every R >= 1 runs, and R >= max(H, W) pools the grid into one key. R = 1 is full attention.
The pooling is the parameter-free reduction of PVTv2's linear SRA; PVTv1's learned R x R
stride-R convolution (and its LayerNorm) is a layer of the model, not of the kernel.

Self-attention of one grid only (N == M in every mode: a decode query has no grid of its own),
never causal (a pooled key averages tokens that come later). K/V heads: each of the Hkv heads is
pooled as it is; query head h reads pooled head h // (H / Hkv), nothing copied per head.

Not softmax attention over the n keys (``exact=False``): the kernels are checked against the
dense definition above (``reference_fn``, the explicit P), and ``run`` reports their ``rel_err``
against full softmax attention over the unpooled keys (``target_fn`` None: softmax attention).
Time O(n M' D) = O(n^2 D / R^2) plus O(n D) for the pooling. Its implied attention over the n
original tokens (``weights_fn``) is A P: a pooled key's probability shared by its window.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from attnbench import params as P
from attnbench import reference
from attnbench.case import Shape, Unsupported
from attnbench.costs import dense_bytes, fused_bytes, materialized_bytes, pair_flops
from attnbench.patterns.grid import (avg_pool_grid, grid_for, grid_reasons, pooled_side, pooling_matrix,
                                     token_windows, window_counts)
from attnbench.registry import AttnOutput, VariantSpec, add
from attnbench.variants.sdpa import sdpa_attention

PARAMS = {"ratio": P.integer(2, minimum=1, doc="reduction ratio R: keys and values pooled over R x R windows"),
          "grid": P.grid(doc="H x W token grid")}


def pooled_keys(n: int, params) -> int:
    """M' = ceil(H/R) ceil(W/R): the keys each query attends to."""
    h, w = grid_for(n, params)
    return pooled_side(h, params["ratio"]) * pooled_side(w, params["ratio"])


def _refuse(name: str, q, k, causal: bool) -> None:
    if causal:
        raise Unsupported(f"{name}: spatial-reduction attention is not causal (a pooled key averages later tokens)")
    if k.shape[2] != q.shape[2]:
        raise Unsupported(f"{name}: self-attention on one grid only (N = {q.shape[2]}, M = {k.shape[2]})")


def pool_kv(k, v, params) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v [B, Hkv, n, D] -> pooled k', v' [B, Hkv, M', D] (ceil-mode R x R means)."""
    h, w = grid_for(k.shape[2], params)
    r = params["ratio"]
    return avg_pool_grid(k, h, w, r), avg_pool_grid(v, h, w, r)


def sra_sdpa(q, k, v, *, causal=False, state=None, need_weights=False, **params) -> AttnOutput:
    """q [B, H, n, D], k/v [B, Hkv, n, D] -> out [B, H, n, D]: pool, then SDPA against M' keys."""
    _refuse("sra@sdpa", q, k, causal)
    kp, vp = pool_kv(k, v, params)  # [B, Hkv, M', D]
    return AttnOutput(out=sdpa_attention(q, kp, vp))


def sra_naive(q, k, v, *, causal=False, state=None, need_weights=False, **params) -> AttnOutput:
    """q [B, H, n, D], k/v [B, Hkv, n, D] -> out [B, H, n, D], materialized [B, H, n, M'] softmax.

    ``weights`` (when asked) is the attention the output implies over the n unpooled tokens,
    [B, H, n, n]: a pooled key's probability shared equally by the tokens of its window
    (out = weights @ v exactly; rows sum to 1).
    """
    _refuse("sra@naive", q, k, causal)
    kp, vp = pool_kv(k, v, params)  # [B, Hkv, M', D]
    r = reference.attention(q, kp, vp)
    weights = None
    if need_weights:
        h, w = grid_for(k.shape[2], params)
        win = token_windows(h, w, params["ratio"], q.device)  # [n]
        count = window_counts(h, w, params["ratio"], q.device).flatten()[win].to(q.dtype)  # [n]
        weights = r.weights.index_select(-1, win) / count  # [B, H, n, n]
    return AttnOutput(out=r.out, weights=weights, lse=r.lse)


def sra_reference(q, k, v, *, causal=False, rows=None, **params) -> torch.Tensor:
    """The dense definition at the inputs' dtype: the explicit pooling matrix P [M', n],
    K' = P K, V' = P V, softmax(Q K'^T / sqrt(D)) V'. [B, H, n, D] (or the query ``rows``)."""
    if causal:
        raise Unsupported("sra: spatial-reduction attention is not causal")
    h, w = grid_for(k.shape[2], params)
    pool = pooling_matrix(h, w, params["ratio"], device=q.device, dtype=q.dtype)  # [M', n]
    qr = q if rows is None else q[:, :, rows]
    return reference.reduced_attention(qr, k, v, pool).out


def sra_weights(q, k, v, *, causal=False, **params) -> tuple[torch.Tensor, None]:
    """The attention the output implies over the n original tokens: (A P [B, H, n, n], None),
    A [B, H, n, M'] the softmax against the pooled keys and P [M', n] the pooling matrix (a
    pooled key's probability shared by the tokens of its window); every token is attended."""
    if causal:
        raise Unsupported("sra: spatial-reduction attention is not causal")
    h, w = grid_for(k.shape[2], params)
    pool = pooling_matrix(h, w, params["ratio"], device=q.device, dtype=q.dtype)  # [M', n]
    a = reference.reduced_attention(q, k, v, pool).weights  # [B, H, n, M']
    return torch.matmul(a, pool), None  # [B, H, n, n]


# ---------------------------------------------------------------------------------------------
# Costs and registration.
# ---------------------------------------------------------------------------------------------
def _pooled_shape(shape: Shape, params) -> Shape:
    return replace(shape, kv_len=pooled_keys(shape.seq_len, params))


def _kv_bytes(shape: Shape, m: int) -> float:
    """k and v of m tokens: 2 B Hkv m D elements."""
    return 2.0 * shape.batch * shape.kv_heads * m * shape.head_dim * shape.element_size


def sra_flops(shape: Shape, params) -> float:
    """4 D per (query, pooled key) pair per head, plus one add per element of k and v pooled."""
    pooling = 2.0 * shape.batch * shape.kv_heads * shape.seq_len * shape.head_dim
    return pair_flops(shape, shape.seq_len * pooled_keys(shape.seq_len, params)) + pooling


def sra_bytes(shape: Shape, params) -> float:
    """Read q, k, v and write the output once, plus writing and reading the pooled k', v'."""
    return dense_bytes(shape) + 2.0 * _kv_bytes(shape, pooled_keys(shape.seq_len, params))


def _memory(attention_bytes):
    """Peak bytes above the inputs: the attention on the pooled shape (``attention_bytes``),
    k' and v', and one n-token copy of k or v while pooling (the zero-padded grid); with
    autograd also the gradients of the unpooled k and v and the pooling backward's copy."""
    def memory(shape: Shape, params) -> float:
        pooled = _pooled_shape(shape, params)
        n = shape.seq_len
        total = attention_bytes(pooled) + _kv_bytes(shape, pooled.kv_len) + _kv_bytes(shape, n) / 2
        if shape.needs_grad:
            total += _kv_bytes(shape, n) * 1.5
        return total

    return memory


def _reasons(shape: Shape, params) -> list[str]:
    if shape.mode == "decode" or shape.seq_len != shape.kv_len:
        return [f"sra pools the keys of the queries' own H x W grid: queries and keys are the same N tokens "
                f"(got N={shape.seq_len}, M={shape.kv_len}{', decode' if shape.mode == 'decode' else ''})"]
    return grid_reasons("sra", shape.seq_len, params)


_COMMON = dict(
    family="reduce", exact=False, time="O(n^2 d / R^2)", causal=False, cross=False, kv_heads=True,
    params=PARAMS, flops_fn=sra_flops, bytes_fn=sra_bytes, extra_reasons=_reasons, reference_fn=sra_reference,
    weights_fn=sra_weights,
    paper="Wang et al. 2021, Pyramid Vision Transformer; PVTv2 (2022) linear SRA pools",
)
add(VariantSpec(
    name="sra@sdpa", forward=sra_sdpa, memory="O(n d)", memory_fn=_memory(fused_bytes), default=True,
    doc="PVT spatial-reduction attention: K and V average-pooled over R x R windows of the H x W grid "
        "(ceil mode), then torch SDPA of the n queries against the n/R^2 pooled keys",
    **_COMMON,
))
add(VariantSpec(
    name="sra@naive", forward=sra_naive, memory="O(n^2 / R^2)", memory_fn=_memory(materialized_bytes),
    returns_weights=True,
    doc="PVT spatial-reduction attention, pooled K and V with a materialized softmax [n, n/R^2]; "
        "weights: the implied attention over the n tokens",
    **_COMMON,
))
