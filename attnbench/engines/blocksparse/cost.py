"""Cost model of a plan for the registry: FLOPs and predicted peak memory of one call, from the
plan's chunk sizes (:class:`PlanSizes`: a built plan's ``sizes()``, or :func:`.sizes.plan_sizes`
without building one)."""
from __future__ import annotations

from attnbench.engines.blocksparse.inference import workers
from attnbench.engines.blocksparse.plan import PlanSizes


def flops(sizes: PlanSizes, batch: int, heads: int, head_dim: int) -> float:
    """Forward FLOPs the plan does: 4 D per computed score pair per head (wasted pairs included)."""
    return 4.0 * batch * heads * head_dim * sizes.pairs


def peak_bytes(sizes: PlanSizes, batch: int, heads: int, kv_heads: int, head_dim: int, elem: int,
               grad: bool = False, threads: int | None = None) -> float:
    """Predicted peak bytes above the inputs of one call.

    Inference: the output, each worker's buffers (one head's scores, one K/V head's gathered
    rows, queries and outputs of one chunk), the extra keys and a dense chunk's SDPA output and
    workspace. Autograd: what the graph keeps for every chunk (probabilities, gathered K/V,
    queries, outputs) plus the concatenation and the output.
    """
    BH, BHkv, D = batch * heads, batch * kv_heads, head_dim
    G = max(1, heads // max(kv_heads, 1))
    out = BH * sizes.n * D * elem
    E = sizes.extras
    dense = max((G * r * D * elem * 3 + r * span * elem for r, span, _ in sizes.dense), default=0)
    if not grad:
        threads = threads or workers()
        s = max((c * rb * cols for c, rb, cols, _, _ in sizes.light), default=0)
        g = max((c * cols for c, _, cols, band, _ in sizes.light if not band), default=0)
        r = max((c * rb for c, rb, _, _, _ in sizes.light), default=0)
        per_worker = (s + 2 * g * D + 2 * r * D + r * E) * elem + dense
        return float(out + threads * per_worker + 2 * BHkv * E * D * elem)
    saved = extra = grads = 0
    for c, rb, cols, _, k in sizes.light:
        saved += k * BH * c * rb * cols * elem  # probabilities
        saved += k * 2 * BHkv * c * cols * D * elem  # gathered K, V
        saved += k * 3 * BH * c * rb * D * elem  # queries, outputs
        extra = max(extra, 2 * BH * c * rb * cols * elem)  # one chunk's score grads
        # backward: the gathered K/V and query rows get full gradients before their scatter
        grads += k * (2 * BHkv * c * cols * D * elem + BH * c * rb * D * elem)
    for r, _, k in sizes.dense:
        saved += k * BH * r * D * elem * 3
    return float(saved + grads + extra + 3 * out + BH / G * dense)
