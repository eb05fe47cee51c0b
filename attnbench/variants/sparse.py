"""Sparse patterns with global tokens or block layouts: Longformer, BigBird, block-sparse.

Definitions (qp = i + M - N is the query's position among the keys; blocks are in key space):

* ``longformer``: sliding window |qp - j| <= window, plus global tokens (``global_tokens``: an
  int k = the first k positions, or a list of positions): a global query attends to every key
  and every query attends to the global keys.
* ``bigbird``: blocks of ``block`` tokens; a query block attends to its 3-block window
  (``window_blocks``), to ``global_blocks`` global blocks (the first ceil(g/2) and last
  floor(g/2) blocks, as in BigBird's ITC code; global blocks also attend everywhere), and to
  ``random_blocks`` random blocks drawn once per (shape, ``seed``) among the others.
* ``block_sparse``: any block layout [ceil(N'/b), ceil(M/b)] (N' = query positions in key
  space); presets ``strided`` and ``fixed`` are the Sparse Transformer's (Child et al. 2019)
  at block granularity with ``stride`` blocks (``fixed``: ``summary`` last blocks of each
  stride segment are attended by everyone).
"""
from __future__ import annotations

import functools

import torch

from attnbench.patterns import Pattern
from attnbench.variants.masked import register_pattern


def global_positions(m: int, spec) -> torch.Tensor:
    """Global token positions from an int (the first k) or a list, kept inside [0, m)."""
    idx = torch.arange(min(int(spec), m)) if isinstance(spec, int) else torch.tensor(sorted(set(spec)), dtype=torch.long)
    return idx[(idx >= 0) & (idx < m)]


def _longformer(n, m, params, device):
    w, off = int(params["window"]), m - n
    flags = torch.zeros(m, dtype=torch.bool, device=device)
    flags[global_positions(m, params["global_tokens"]).to(device)] = True

    def mask_mod(b, h, q_idx, kv_idx):
        qp = q_idx + off
        d = qp - kv_idx
        return ((d <= w) & (d >= -w)) | flags[kv_idx] | flags[qp]

    return mask_mod


@functools.lru_cache(maxsize=64)
def bigbird_layout(nbk: int, window_blocks: int, global_blocks: int, random_blocks: int, seed: int) -> torch.Tensor:
    """Bool [nbk, nbk] block layout (query block in key space x key block), cached per shape+seed."""
    i = torch.arange(nbk)
    half = window_blocks // 2
    window = (i[:, None] - i[None, :]).abs() <= half
    g_first, g_last = (global_blocks + 1) // 2, global_blocks // 2
    is_global = (i < g_first) | (i >= nbk - g_last)
    fixed = window | is_global[None, :] | is_global[:, None]
    # Random blocks: r per query block among the blocks not already attended (seeded).
    gen = torch.Generator().manual_seed(seed)
    score = torch.rand(nbk, nbk, generator=gen).masked_fill(fixed, -1.0)
    r = min(random_blocks, nbk)
    top = score.topk(r, dim=1) if r > 0 else None
    rand = torch.zeros(nbk, nbk, dtype=torch.bool)
    if top is not None:
        rand.scatter_(1, top.indices, top.values >= 0)  # only real candidates
    return fixed | rand


def _bigbird(n, m, params, device):
    bs, off = int(params["block"]), m - n
    nbk = -(-m // bs)
    layout = bigbird_layout(nbk, int(params["window_blocks"]), int(params["global_blocks"]),
                            int(params["random_blocks"]), int(params["seed"])).to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        return layout[(q_idx + off) // bs, kv_idx // bs]

    return mask_mod


def block_sparse_layout(nbq: int, nbk: int, params) -> torch.Tensor:
    """Bool [nbq, nbk] layout from a preset (strided | fixed) or an explicit matrix."""
    lay = params["layout"]
    if not isinstance(lay, str):
        t = torch.as_tensor(lay, dtype=torch.bool)
        if t.shape != (nbq, nbk):
            raise ValueError(f"block_sparse layout has shape {tuple(t.shape)}, this case needs {(nbq, nbk)} "
                             f"(ceil(positions / block))")
        return t
    s = int(params["stride"])
    qb = torch.arange(nbq)[:, None] + (nbk - nbq)  # query blocks in key-block space
    kb = torch.arange(nbk)[None, :]
    if lay == "strided":
        return ((qb - kb).abs() < s) | ((qb - kb) % s == 0)
    if lay == "fixed":
        c = int(params.get("summary", 1))
        return (qb // s == kb // s) | (kb % s >= s - c)
    raise ValueError(f"block_sparse layout {lay!r}: allowed: 'strided', 'fixed' or a bool matrix")


def _block_sparse(n, m, params, device):
    bs, off = int(params["block"]), m - n
    nbk = -(-m // bs)
    layout = block_sparse_layout(nbk, nbk, params).to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        return layout[(q_idx + off) // bs, kv_idx // bs]

    return mask_mod


LONGFORMER = register_pattern(Pattern(
    name="longformer", family="sparse", make_mask=_longformer,
    defaults={"window": 256, "global_tokens": 16}, decode=True,
    doc="sliding window plus global tokens (attend to / attended by all)",
    paper="Beltagy et al. 2020, Longformer",
))
BIGBIRD = register_pattern(Pattern(
    name="bigbird", family="sparse", make_mask=_bigbird,
    defaults={"block": 64, "window_blocks": 3, "global_blocks": 2, "random_blocks": 3, "seed": 0},
    doc="BigBird ITC: 3-block window, global blocks, seeded random blocks",
    paper="Zaheer et al. 2020, Big Bird",
))
BLOCK_SPARSE = register_pattern(Pattern(
    name="block_sparse", family="sparse", make_mask=_block_sparse,
    defaults={"block": 64, "layout": "strided", "stride": 4, "summary": 1},
    doc="block layout matrix; presets: Sparse Transformer strided / fixed",
    paper="Child et al. 2019, Sparse Transformers",
))
