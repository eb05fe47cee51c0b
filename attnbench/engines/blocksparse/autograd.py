"""Differentiable execution: the light chunks with out-of-place ops, all heads of a chunk in one
batched GEMM, dense chunks through SDPA (also used by the inference tasks)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.engines.blocksparse.plan import BlockPlan, DenseChunk


def dense_attention(q, k, v, c: DenseChunk, scale: float) -> torch.Tensor:
    """[B, H, R, D]: SDPA of the chunk's rows against keys [kstart, kend) (a view)."""
    h, hkv = q.shape[1], k.shape[1]
    if c.q_start is not None:
        qd = q.narrow(2, c.q_start, len(c.qrows))  # [B, H, R, D]
    else:
        qd = q.index_select(2, c.dev("qrows", q.device))  # [B, H, R, D]
    span = c.kend - c.kstart
    o = F.scaled_dot_product_attention(qd, k.narrow(2, c.kstart, span), v.narrow(2, c.kstart, span),
                                       attn_mask=c.mask(q.dtype, q.device), scale=scale, enable_gqa=hkv != h)
    if c.rowscale is not None:
        o = o * c.dev("rowscale", q.device)[:, None].to(o.dtype)
    return o


def attention_autograd(q, k, v, plan: BlockPlan, scale: float) -> torch.Tensor:
    """Differentiable execution. The rows of q and K/V of every light chunk are gathered by one
    ``index_select`` each, in an order where each chunk's piece is contiguous, and ``split``:
    the backward scatters each of q, k, v once (a per-chunk gather or slice would add a
    full-size gradient per chunk) and no piece needs a copy to become a GEMM operand."""
    B, H, N, D = q.shape
    BH = B * H
    outs = light_outputs(q, k, v, plan, scale) if plan.light else []
    for c in plan.dense:
        outs.append(dense_attention(q, k, v, c, scale).reshape(BH, len(c.qrows), D))  # [BH, R, D]
    out = torch.cat(outs, 1) if len(outs) > 1 else outs[0]
    return out.index_select(1, plan.dev("order", q.device)).view(B, H, N, D)  # [B, H, N, D]


def light_outputs(q, k, v, plan: BlockPlan, scale: float) -> list[torch.Tensor]:
    """[BH, C*rb, D] per light chunk, in plan order."""
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    G = H // Hkv
    BH, BHkv = B * H, B * Hkv
    dev = q.device
    qidx, kidx = plan.flat_index(BH, N, BHkv, M, dev)
    qlen = [BH * c.blocks * c.rows for c in plan.light]
    klen = [BHkv * c.blocks * c.cols for c in plan.light]
    qs = q.reshape(BH * N, D).index_select(0, qidx).split(qlen)  # [BH*C*rb, D] per chunk
    ks = k.reshape(BHkv * M, D).index_select(0, kidx).split(klen)  # [BHkv*C*L, D] per chunk
    vs = v.reshape(BHkv * M, D).index_select(0, kidx).split(klen)  # [BHkv*C*L, D] per chunk
    outs = []
    for c, qg, kg, vg in zip(plan.light, qs, ks, vs):
        C, rb, L = c.blocks, c.rows, c.cols
        kg = kg.view(BHkv * C, L, D)  # [BHkv*C, L, D]
        vg = vg.view(BHkv * C, L, D)  # [BHkv*C, L, D]
        # fold the G query heads of a K/V head into the rows: K/V are read once per K/V head
        qg = (qg * scale).view(BHkv, G, C, rb, D).transpose(1, 2).reshape(BHkv * C, G * rb, D)  # [BHkv*C, G*rb, D]
        s = torch.bmm(qg, kg.transpose(1, 2)).view(BHkv, C, G, rb, L)  # [BHkv, C, G, rb, L]
        blocked = c.full_blocked(dev)
        if blocked is not None:
            s = s.masked_fill(blocked[:, None], float("-inf"))
        p = torch.softmax(s, -1)
        o = torch.bmm(p.view(BHkv * C, G * rb, L), vg).view(BHkv, C, G, rb, D)  # [BHkv, C, G, rb, D]
        if c.rowscale is not None:
            o = o * c.dev("rowscale", dev).view(C, 1, rb, 1).to(o.dtype)  # rowscale: [C, 1, rb, 1]
        outs.append(o.transpose(1, 2).reshape(BH, C * rb, D))  # [BH, C*rb, D]
    return outs
