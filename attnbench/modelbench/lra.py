"""The Long Range Arena's published efficiency figures, in one place, mapped to our patterns.

Source: Tay et al., "Long Range Arena: A Benchmark for Efficient Transformers", ICLR 2021,
Table 3 ("Benchmark results of all X-former models with a consistent batch size of 32 across all
models", the Text task's model at 1K-4K tokens on TPU V3 chips): training steps per second and
peak memory usage (GB). The ratios beside the steps/s are the paper's speed-up over the
Transformer at 4K.

Mapping to our patterns (our report shows our ratio to full attention next to theirs):

* Transformer -> ``full``.
* Local Attention -> ``block_local``: LRA's local attention (``lra_benchmarks/models/local``)
  cuts the sequence into non-overlapping blocks (``block_size=50``) and attends within each
  block only, which is our ``block_local`` (``prev=false``), not a sliding window.
* Reformer -> ``lsh``; BigBird -> ``bigbird``; Linear Transformer -> ``linear`` (elu + 1
  feature map, Katharopoulos et al.); Performer -> ``performer``.

Their figures are TPU steps of batch 32 at LRA's hyperparameters; ours are measured on this
machine at our batch. Only the ratios to full attention at the same n are comparable.
"""
from __future__ import annotations

CITATION = ("Tay et al., Long Range Arena: A Benchmark for Efficient Transformers, ICLR 2021, Table 3 "
            "(Text task, batch 32, TPU v3)")
LRA_SEQ_LENS = (1024, 2048, 3072, 4096)  # the paper's 1K, 2K, 3K, 4K

# LRA model -> (our pattern, training steps/s at 1K..4K, peak memory GB at 1K..4K)
LRA_TABLE: dict[str, tuple[str, tuple[float, ...], tuple[float, ...]]] = {
    "Transformer": ("full", (8.1, 4.9, 2.3, 1.4), (0.85, 2.65, 5.51, 9.48)),
    "Local Attention": ("block_local", (9.2, 8.4, 7.4, 7.4), (0.42, 0.76, 1.06, 1.37)),
    "Reformer": ("lsh", (4.4, 2.2, 1.5, 1.1), (0.48, 0.99, 1.53, 2.28)),
    "BigBird": ("bigbird", (7.4, 3.9, 2.7, 1.5), (0.77, 1.49, 2.18, 2.88)),
    "Linear Transformer": ("linear", (9.1, 9.3, 8.6, 7.8), (0.37, 0.57, 0.80, 1.03)),
    "Performer": ("performer", (9.5, 9.4, 8.7, 8.0), (0.37, 0.59, 0.82, 1.06)),
}
BASELINE = "Transformer"


def by_pattern() -> dict[str, str]:
    """Our pattern -> LRA's model name."""
    return {pattern: model for model, (pattern, _, _) in LRA_TABLE.items()}


def ratios(pattern: str, n: int) -> tuple[float, float] | None:
    """LRA's (steps/s ratio, memory ratio) of ``pattern`` to the Transformer at ``n``; None where
    LRA has no such model or n."""
    model = by_pattern().get(pattern)
    if model is None or n not in LRA_SEQ_LENS:
        return None
    i = LRA_SEQ_LENS.index(n)
    _, steps, mem = LRA_TABLE[model]
    _, base_steps, base_mem = LRA_TABLE[BASELINE]
    return steps[i] / base_steps[i], mem[i] / base_mem[i]
