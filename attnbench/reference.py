"""Dense, obviously-correct attention definitions that every fast kernel is checked against.

Nothing here is fast: scores are materialized as [B, H, N, M]. Conventions shared by the suite:

* q is [B, H, N, D]; k, v are [B, Hkv, M, D] with H a multiple of Hkv (query head h reads
  K/V head h // (H // Hkv), the grouping of GQA and of SDPA's ``enable_gqa``).
* scale defaults to 1/sqrt(D).
* causal is bottom-right aligned: query i sees keys j <= i + M - N (FlashAttention >= 2.1), so
  with N == M it is the usual lower triangle and a single decode query sees its whole cache.
* a query row with no allowed key outputs zeros and has lse = -inf.
"""
from __future__ import annotations

import math

import torch

from attnbench.case import AttnOutput


def causal_mask(n: int, m: int, device=None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [N, M] (or [len(rows), M]): True where query i may attend to key j (bottom-right)."""
    i = torch.arange(n, device=device) if rows is None else rows.to(device)
    j = torch.arange(m, device=device)
    return j[None, :] <= (i[:, None] + (m - n))


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> AttnOutput:
    """Exact softmax attention, materialized. Time O(N M D), memory O(N M).

    q [B, H, N, D], k, v [B, Hkv, M, D]; mask: bool broadcastable to [B, H, N, M], True = may attend;
    bias: float broadcastable to [B, H, N, M], added to the scaled scores.
    Returns out [B, H, N, D], weights [B, H, N, M], lse [B, H, N].
    """
    b, h, n, d = q.shape
    hkv, m = k.shape[1], k.shape[2]
    if h % hkv:
        raise ValueError(f"heads={h} is not a multiple of kv_heads={hkv}")
    g = h // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    # GQA by broadcasting: [B, Hkv, G, N, D] x [B, Hkv, 1, M, D]; K/V are never copied per head.
    qg = q.reshape(b, hkv, g, n, d)
    s = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)) * scale  # [B, Hkv, G, N, M]
    s = s.reshape(b, h, n, m)
    if bias is not None:
        s = s + bias
    allowed = causal_mask(n, m, q.device) if causal else None
    if mask is not None:
        allowed = mask if allowed is None else (allowed & mask)
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [B, H, N]
    # Rows with no allowed key: lse = -inf; make their weights 0 instead of NaN.
    safe_lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    w = torch.exp(s - safe_lse.unsqueeze(-1))
    if allowed is not None:
        w = w.masked_fill(~allowed, 0.0)
    out = torch.matmul(w.reshape(b, hkv, g, n, m), v.unsqueeze(2)).reshape(b, h, n, d)
    return AttnOutput(out=out, weights=w, lse=lse)


def attention_rows(q, k, v, rows: torch.Tensor, *, causal: bool = False, **kw) -> torch.Tensor:
    """Reference output of the query ``rows`` only, in float64: [B, H, len(rows), D].

    Rows are independent, so checking a sample of them costs O(len(rows) M D) at any n.
    Causal positions are bottom-right aligned against M keys, as in :func:`attention`.
    """
    n, m = q.shape[2], k.shape[2]
    qs = q[:, :, rows].double()
    mask = causal_mask(n, m, q.device, rows) if causal else None
    return attention(qs, k.double(), v.double(), mask=mask, **kw).out


def sample_rows(n: int, count: int = 16, device=None) -> torch.Tensor:
    """Query rows to check: the first, the last and evenly spaced ones between."""
    if n <= count:
        return torch.arange(n, device=device)
    return torch.linspace(0, n - 1, count, device=device).round().long().unique()


def reduced_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, reduce: torch.Tensor,
                      **kw) -> AttnOutput:
    """Exact softmax attention against keys and values reduced by a fixed linear map: K' = P K,
    V' = P V with P = ``reduce`` [M', M] (PVT's pooling over a grid, Linformer's projection).

    q [B, H, N, D], k, v [B, Hkv, M, D] -> out [B, H, N, D], weights [B, H, N, M'] over the
    reduced keys, lse [B, H, N]. Time O(M' M D + N M' D); ``kw`` as for :func:`attention`.
    """
    p = reduce.to(dtype=k.dtype, device=k.device)
    kr, vr = torch.matmul(p, k), torch.matmul(p, v)  # [B, Hkv, M', D]
    return attention(q, kr, vr, **kw)
