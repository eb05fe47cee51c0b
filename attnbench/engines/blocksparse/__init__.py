"""Block-sparse attention engine in pure PyTorch: gather the key blocks each query block needs.

A pattern is described to the engine by

* ``layout``: bool [nbq, nbk], query block (in key space, rows ``off // b .. nbk - 1`` where
  ``off = M - N``) x key block; it must cover every key the pattern allows for a query that is
  not ``heavy`` (blocks are ``b`` tokens, aligned with the keys);
* ``extra_keys``: key positions every query block also reads (Longformer's global keys); one
  that lies in a block the row already reads is masked there, so it is never counted twice;
* ``mask_fn(qp, kp) -> bool``: the pattern's token-level mask in key-space positions
  (``qp = i + M - N``), evaluated only inside the selected blocks;
* ``heavy_rows``: query rows that attend (almost) everywhere (global tokens), computed as dense
  rows against a contiguous key range instead of widening every block's key list.

:func:`build_plan` turns this into chunks of query blocks, once per shape (callers cache it):

* **band** chunks: consecutive query blocks whose key blocks are the same contiguous run shifted
  by one block per query block (sliding windows): K/V are read through an overlapping strided
  view, never copied;
* **gather** chunks: the rest, sorted by block count so each chunk is padded only to its own
  widest row; K/V rows are gathered (index_select) per chunk;
* **dense** chunks: heavy rows (and query blocks whose blocks fill most of their key range),
  SDPA on a contiguous key range (a view) with a mask only where some key is not allowed.

Within a chunk of C query blocks of ``rb`` rows and L = S*b + E key columns the engine computes
scores [C, rb, L] per head (one batched GEMM), adds -inf only on the column ranges where some
entry is masked (key slots are ordered fully-allowed first), softmax, times V. Rows with no
allowed key are computed unmasked and then multiplied by 0, so no NaN reaches the output or
the gradients. Time and memory are O(N (S b + E)) per head, never O(N M), except for heavy rows
(O(rows x M)). A decode query touches only its own blocks. Python loops run over chunks and
heads (a few hundred tasks at n = 16384), never over tokens.

Two executions of the same plan:

* inference (no input needs grad): (chunk, K/V head) tasks, each a few ``out=`` ops on
  buffers reused by every task of a worker (fresh pages per chunk would cost more than the
  arithmetic on CPU), writing straight into the output. Tasks run on
  ``torch.get_num_threads()`` worker threads doing single-threaded ops (see :mod:`.inference`);
* autograd: the same chunks with out-of-place differentiable ops, all heads of a chunk in one
  batched GEMM (K/V gathered once per K/V head: GQA never copies K/V per query head), the
  chunks combined with ``cat`` + ``index_select``; dense rows through SDPA (differentiable).

Modules: :mod:`.plan` (the plan's data types), :mod:`.layout` and :mod:`.chunks` (the planning
phases, on query blocks and on chunks), :mod:`.build` (:func:`build_plan`), :mod:`.inference`
and :mod:`.autograd` (the two executions), :mod:`.sizes` and :mod:`.dense_sizes`
(:func:`plan_sizes`: the plan's chunk sizes from per-query-block counts, O(n / b), for the cost
model in the parent process, which never builds a plan), :mod:`.cost` (FLOPs and peak memory
from those sizes), :mod:`.tuning`
(the tuning constants, re-exported here; they are read from ``tuning`` at call time, so set
them there: ``blocksparse.tuning.THREADS = 3``).
"""
from __future__ import annotations

import math

import torch

from attnbench.engines.blocksparse import tuning
from attnbench.engines.blocksparse.autograd import attention_autograd
from attnbench.engines.blocksparse.build import build_plan
from attnbench.engines.blocksparse.cost import flops, peak_bytes
from attnbench.engines.blocksparse.inference import attention_inference, workers
from attnbench.engines.blocksparse.plan import BlockPlan, DenseChunk, LightChunk, MaskFn, PlanSizes
from attnbench.engines.blocksparse.sizes import plan_sizes
from attnbench.engines.blocksparse.tuning import (  # noqa: F401  re-exported for readers
    BAND_SCORE_BYTES, DENSE_CACHE_ELEMS, DENSE_MASK_ELEMS, DENSE_MAX_ROWS, DENSE_MIN_BLOCKS, DENSE_RATIO,
    MAX_CHUNK_BLOCKS, MAX_REGIONS, SCORE_BYTES, THREADS)

__all__ = [
    "BAND_SCORE_BYTES", "DENSE_CACHE_ELEMS", "DENSE_MASK_ELEMS", "DENSE_MAX_ROWS", "DENSE_MIN_BLOCKS",
    "DENSE_RATIO", "MAX_CHUNK_BLOCKS", "MAX_REGIONS", "SCORE_BYTES", "THREADS", "BlockPlan", "DenseChunk",
    "LightChunk", "MaskFn", "PlanSizes", "attention", "build_plan", "flops", "peak_bytes", "plan_sizes", "workers",
]

def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan,
              scale: float | None = None) -> torch.Tensor:
    """Block-sparse attention by ``plan``: q [B, H, N, D], k/v [B, Hkv, M, D] -> [B, H, N, D]."""
    _check(q, k, v, plan)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if q.shape[2] == 0:
        return q.new_zeros(q.shape)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if grad:
        return attention_autograd(q, k, v, plan, scale)
    return attention_inference(q, k, v, plan, scale)


def _check(q, k, v, plan: BlockPlan):
    b_, h, n, d = q.shape
    if k.shape[1] == 0 or h % k.shape[1]:
        raise ValueError(f"heads={h} is not a multiple of kv_heads={k.shape[1]}")
    if n != plan.n or k.shape[2] != plan.m:
        raise ValueError(f"plan is for N={plan.n}, M={plan.m}; got N={n}, M={k.shape[2]}")
