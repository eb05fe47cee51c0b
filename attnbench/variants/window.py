"""Local-window patterns: sliding window, dilated window, non-overlapping blocks.

Definitions (query position qp = i + M - N, bottom-right aligned with the keys; d = qp - j):

* ``sliding_window``: |d| <= window (causal: 0 <= d <= window).
* ``dilated_window``: Longformer's dilated band: |d| <= window * dilation and d % dilation == 0,
  i.e. ``window`` keys on each side, ``dilation`` apart.
* ``block_local``: blocks of ``block`` tokens attend within their block (and to the previous
  block with ``prev=True``).

Each pattern gets @dense / @flex / @sdpa_mask from its mask; @blocked kernels (O(n w)) are
registered below it.
"""
from __future__ import annotations

from attnbench.patterns import Pattern
from attnbench.variants.masked import register_pattern


def _sliding(n, m, params, device):
    w, off = int(params["window"]), m - n

    def mask_mod(b, h, q_idx, kv_idx):
        d = q_idx + off - kv_idx
        return (d <= w) & (d >= -w)

    return mask_mod


def _dilated(n, m, params, device):
    w, dil, off = int(params["window"]), int(params["dilation"]), m - n

    def mask_mod(b, h, q_idx, kv_idx):
        d = q_idx + off - kv_idx
        return (d <= w * dil) & (d >= -w * dil) & (d % dil == 0)

    return mask_mod


def _block_local(n, m, params, device):
    bs, prev, off = int(params["block"]), bool(params.get("prev", False)), m - n

    def mask_mod(b, h, q_idx, kv_idx):
        gap = (q_idx + off) // bs - kv_idx // bs
        return (gap == 0) | ((gap == 1) & prev)

    return mask_mod


SLIDING = register_pattern(Pattern(
    name="sliding_window", family="window", make_mask=_sliding, defaults={"window": 256},
    doc="each query attends to keys within `window` positions", decode=True,
    paper="Beltagy et al. 2020, Longformer (sliding window); Child et al. 2019 (local)",
))
DILATED = register_pattern(Pattern(
    name="dilated_window", family="window", make_mask=_dilated,
    defaults={"window": 64, "dilation": 4}, decode=True,
    doc="`window` keys each side, `dilation` apart (Longformer's dilated sliding window)",
    paper="Beltagy et al. 2020, Longformer",
))
BLOCK_LOCAL = register_pattern(Pattern(
    name="block_local", family="window", make_mask=_block_local,
    defaults={"block": 64, "prev": False}, decode=True,
    doc="non-overlapping blocks of `block` tokens attend within the block (and the previous one with prev)",
    paper="Parmar et al. 2018, Image Transformer (local 1-D); Qiu et al. 2019, Blockwise",
))
