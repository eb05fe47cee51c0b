"""Local-window patterns: sliding window, dilated window, non-overlapping blocks.

Definitions (query position qp = i + M - N, bottom-right aligned with the keys; d = qp - j):

* ``sliding_window``: |d| <= window (causal: 0 <= d <= window).
* ``dilated_window``: Longformer's dilated band: |d| <= window * dilation and d % dilation == 0,
  i.e. ``window`` keys on each side, ``dilation`` apart.
* ``block_local``: positions in blocks of ``block``; a query attends within its block (and to the
  previous block with ``prev``).

A query at a negative position (N > M) is treated like any other: by distance for the two
windows (it sees the keys within the window of its position), and in block floor(qp / block) < 0
for ``block_local``, which holds no key: it attends to nothing (a zero output row).
"""
from __future__ import annotations

from attnbench import params as P
from attnbench.patterns.base import Pattern
from attnbench.patterns.counts import band_pairs, clipped_band_sum, mod_sum


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
    bs, prev, off = int(params["block"]), bool(params["prev"]), m - n

    def mask_mod(b, h, q_idx, kv_idx):
        gap = (q_idx + off) // bs - kv_idx // bs
        return (gap == 0) | ((gap == 1) & prev)

    return mask_mod


def _sliding_pairs(n, m, causal, params) -> int:
    w = int(params["window"])
    return band_pairs(m - n, m - 1, -w, 0 if causal else w, m)


def _dilated_pairs(n, m, causal, params) -> int:
    """Per distance qp - j = k dilation (k = -w .. w; causal 0 .. w): the rows whose key
    qp - k dilation lies in [0, M), i.e. qp in [max(M - N, k dil), min(M - 1, M - 1 + k dil)]."""
    w, dil = int(params["window"]), int(params["dilation"])
    return clipped_band_sum(0 if causal else -w, w, 0, m - 1, dil, m - n, m - 1)


def _block_local_pairs(n, m, causal, params) -> int:
    """Rows at positions qp >= 0 (a negative block holds no key): their own block (causal: up
    to qp) and, with ``prev``, the b keys of the block before."""
    bs, p0 = int(params["block"]), max(m - n, 0)
    if p0 > m - 1:
        return 0
    prev = bs * max(0, m - max(p0, bs)) if params["prev"] else 0
    if causal:  # qp mod b + 1 keys of its own block
        return prev + mod_sum(p0, m - 1, bs) + (m - p0)
    q0, q1 = p0 // bs, (m - 1) // bs
    last = m - q1 * bs  # rows and keys of the last (maybe short) block
    if q0 == q1:
        return prev + (m - p0) * last
    return prev + ((q0 + 1) * bs - p0) * bs + (q1 - q0 - 1) * bs * bs + last * last


SLIDING = Pattern(
    name="sliding_window", family="window", make_mask=_sliding, decode=True, pairs=_sliding_pairs,
    params={"window": P.integer(256, minimum=0, doc="keys on each side of the query (0: itself only)")},
    doc="each query attends to keys within `window` positions",
    paper="Beltagy et al. 2020, Longformer (sliding window); Child et al. 2019 (local)",
    examples=({"window": 3}, {"window": 16}),
)
DILATED = Pattern(
    name="dilated_window", family="window", make_mask=_dilated, decode=True, pairs=_dilated_pairs,
    params={"window": P.integer(64, minimum=0, doc="keys on each side"),
            "dilation": P.integer(4, minimum=1, doc="distance between attended keys")},
    doc="`window` keys each side, `dilation` apart (Longformer's dilated sliding window)",
    paper="Beltagy et al. 2020, Longformer",
    examples=({"window": 3, "dilation": 3}, {"window": 2, "dilation": 5}),
)
BLOCK_LOCAL = Pattern(
    name="block_local", family="window", make_mask=_block_local, decode=True, pairs=_block_local_pairs,
    params={"block": P.integer(64, minimum=1, doc="tokens per block"),
            "prev": P.boolean(False, doc="also attend to the previous block")},
    doc="non-overlapping blocks of `block` tokens attend within the block (and the previous one with prev)",
    paper="Parmar et al. 2018, Image Transformer (local 1-D); Qiu et al. 2019, Blockwise",
    examples=({"block": 5, "prev": True}, {"block": 16, "prev": False}),
)
