"""Cost model of a plan for the registry: FLOPs and predicted peak memory of one call."""
from __future__ import annotations

from attnbench.engines.blocksparse.inference import workers
from attnbench.engines.blocksparse.plan import BlockPlan


def flops(plan: BlockPlan, batch: int, heads: int, head_dim: int) -> float:
    """Forward FLOPs the plan does: 4 D per computed score pair per head (wasted pairs included)."""
    return 4.0 * batch * heads * head_dim * plan.pairs


def peak_bytes(plan: BlockPlan, batch: int, heads: int, kv_heads: int, head_dim: int, elem: int,
               grad: bool = False, threads: int | None = None) -> float:
    """Predicted peak bytes above the inputs of one call.

    Inference: the output, each worker's buffers (one head's scores, one K/V head's gathered
    rows, queries and outputs of one chunk), the extra keys and a dense chunk's SDPA output and
    workspace. Autograd: what the graph keeps for every chunk (probabilities, gathered K/V,
    queries, outputs) plus the concatenation and the output.
    """
    BH, BHkv, D = batch * heads, batch * kv_heads, head_dim
    G = max(1, heads // max(kv_heads, 1))
    out = BH * plan.n * D * elem
    E = int(plan.extras.numel())
    dense = max((G * len(c.qrows) * D * elem * 3 + len(c.qrows) * (c.kend - c.kstart) * elem
                 for c in plan.dense), default=0)
    if not grad:
        threads = threads or workers()
        s = max((c.blocks * c.rows * c.cols for c in plan.light), default=0)
        g = max((c.blocks * c.cols for c in plan.light if c.band_start is None), default=0)
        r = max((c.blocks * c.rows for c in plan.light), default=0)
        per_worker = (s + 2 * g * D + 2 * r * D + r * E) * elem + dense
        return float(out + threads * per_worker + 2 * BHkv * E * D * elem)
    saved = extra = 0
    for c in plan.light:
        saved += BH * c.blocks * c.rows * c.cols * elem  # probabilities
        saved += 2 * BHkv * c.blocks * c.cols * D * elem  # gathered K, V
        saved += 3 * BH * c.blocks * c.rows * D * elem  # queries, outputs
        extra = max(extra, 2 * BH * c.blocks * c.rows * c.cols * elem)  # one chunk's score grads
    # backward: the gathered K/V and query rows get full gradients before their scatter
    grads = sum(2 * BHkv * c.blocks * c.cols * D * elem + BH * c.blocks * c.rows * D * elem for c in plan.light)
    for c in plan.dense:
        saved += BH * len(c.qrows) * D * elem * 3
    return float(saved + grads + extra + 3 * out + BH / G * dense)
