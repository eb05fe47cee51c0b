"""FLOP and byte formulas shared by the variants (the ground floor: shapes in, numbers out).

FLOPs are the work a variant is meant to do in one forward call; the registry scales them by
mode (``vocab.MODES``). Memory formulas are per mode: each returns the predicted peak bytes of
one call *above the inputs* in ``shape.mode`` — autograd's saved tensors and the gradients of
q, k, v included for ``bwd`` / ``fwd+bwd`` — so nothing is scaled afterwards.
"""
from __future__ import annotations

from attnbench.case import Shape, attended_pairs


def dense_flops(shape: Shape) -> float:
    """Forward FLOPs of exact attention: QK^T and PV, 2 FLOPs per multiply-add each."""
    pairs = attended_pairs(shape.seq_len, shape.kv_len, shape.causal)
    return 4.0 * shape.batch * shape.heads * shape.head_dim * pairs


def pair_flops(shape: Shape, pairs: float) -> float:
    """Forward FLOPs of ``pairs`` scored (query, key) pairs per batch and head."""
    return 4.0 * shape.batch * shape.heads * shape.head_dim * pairs


def dense_bytes(shape: Shape) -> float:
    """Minimum bytes moved by a fused kernel: read q, k, v and write the output once."""
    e = shape.element_size
    q_o = 2 * shape.batch * shape.heads * shape.seq_len * shape.head_dim
    kv = 2 * shape.batch * shape.kv_heads * shape.kv_len * shape.head_dim
    return float((q_o + kv) * e)


def io_bytes(shape: Shape) -> int:
    """Bytes of q, k, v and the output: the floor of any kernel's footprint."""
    return int(dense_bytes(shape))


def out_bytes(shape: Shape) -> float:
    """The output [B, H, N, D]."""
    return float(shape.batch * shape.heads * shape.seq_len * shape.head_dim * shape.element_size)


def grad_bytes(shape: Shape) -> float:
    """The gradients of q [B, H, N, D] and of k, v [B, Hkv, M, D] a backward returns."""
    e = shape.element_size
    kv = 2 * shape.batch * shape.kv_heads * shape.kv_len * shape.head_dim
    return float(out_bytes(shape) + kv * e)


def scores_bytes(shape: Shape, copies: float = 1.0) -> float:
    """``copies`` score-sized tensors [B, H, N, M]."""
    return copies * shape.batch * shape.heads * shape.seq_len * shape.kv_len * shape.element_size


def fused_bytes(shape: Shape, params=None) -> float:
    """A fused (flash-style) kernel: the output and a per-row log-sum-exp forward; with
    autograd the saved output and the three gradients (the backward recomputes scores)."""
    lse = shape.batch * shape.heads * shape.seq_len * 4.0
    fwd = out_bytes(shape) + lse
    back = grad_bytes(shape)
    if shape.kv_heads != shape.heads:  # the backward expands K and V to every query head (measured)
        back += 2.0 * shape.batch * shape.heads * shape.kv_len * shape.head_dim * shape.element_size
    if shape.mode == "fwd+bwd":
        return fwd + back
    if shape.mode == "bwd":
        return back
    return fwd


def materialized_bytes(shape: Shape, params=None) -> float:
    """Softmax on a materialized score matrix: scores, their exponentials and the weights
    [B, H, N, M] forward; with autograd the weights are saved and the backward makes two more
    score-sized tensors (dP and dS) beside the gradients."""
    fwd = scores_bytes(shape, 3.0) + out_bytes(shape)
    if shape.mode == "fwd+bwd":  # measured: about five score-sized tensors at the peak
        return scores_bytes(shape, 5.0) + out_bytes(shape) + grad_bytes(shape)
    if shape.mode == "bwd":
        return scores_bytes(shape, 2.0) + grad_bytes(shape)
    return fwd
