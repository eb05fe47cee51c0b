"""Multi-query and grouped-query attention: K/V shared across query heads.

These variants fix their own K/V-head count whatever ``--kv-heads`` says, so a sweep with
``--variants all`` shows what sharing buys beside ``full@*`` — above all in decode mode, where
the KV cache (2 B Hkv M D elements) is what each new token must read.
"""
from __future__ import annotations

from attnbench.costs import fused_bytes, materialized_bytes
from attnbench.registry import VariantSpec, add
from attnbench.variants.full import full_naive
from attnbench.variants.sdpa import sdpa_forward

_MQA = dict(family="kv_share", exact=True, paper="Shazeer 2019, Fast Transformer Decoding")
add(VariantSpec(
    name="mqa@sdpa", forward=sdpa_forward, time="O(n^2 d)", memory="O(n d)",
    kv_heads_rule=lambda h: 1, memory_fn=fused_bytes, default=True,
    doc="multi-query attention (1 K/V head) through SDPA, no per-head K/V copies", **_MQA,
))
add(VariantSpec(
    name="mqa@naive", forward=full_naive, time="O(n^2 d)", memory="O(n^2)",
    kv_heads_rule=lambda h: 1, memory_fn=materialized_bytes, returns_weights=True,
    doc="multi-query attention (1 K/V head), materialized softmax", **_MQA,
))
add(VariantSpec(
    name="gqa@sdpa", forward=sdpa_forward, time="O(n^2 d)", memory="O(n d)",
    kv_heads_rule=lambda h: max(1, h // 4), memory_fn=fused_bytes, default=True,
    family="kv_share", exact=True,
    doc="grouped-query attention (heads/4 K/V heads) through SDPA",
    paper="Ainslie et al. 2023, GQA",
))
