"""Attention statistics: what each variant's attention does, per layer and head.

What (one module per family, each declaring its statistics with ``base.statistic``):

    entropy        entropy, entropy_norm
    distance       distance, distance_px, prefix_mass
    concentration  top_k_mass, keys_90, keys_90_frac
    spectrum       effective_rank, rank_90, cum_at_16; the cumulative spectrum
    maps           map (heatmaps), cls_map (the CLS query over the patch grid)
    rollout        rollout (Abnar & Zuidema), model scope
    fidelity       error (rel_err), divergence (kl, tv), coverage: against exact softmax

How: ``implied`` (every variant's attention weights, its dense definition on the same q, k),
``capture`` (a model's layers on a batch, where their queries and keys sit), ``sources``
(random, task, checkpoint), ``runner`` (samples in, rows out), ``command`` (the CLI), ``schema``
(the row), ``summary`` (the printed table). The definitions are in docs/statistics.md.

A new statistic is one module here, imported below, and its test against a known answer.
"""
from attnbench.stats import base, concentration, distance, entropy, fidelity, maps, reduce, rollout, spectrum
from attnbench.stats.base import STATISTICS

__all__ = ["STATISTICS", "base", "concentration", "distance", "entropy", "fidelity", "maps", "reduce",
           "rollout", "spectrum"]
