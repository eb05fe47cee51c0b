"""Planning the chunks themselves: a light chunk's key columns, masked column regions and row
scales from its query blocks (token masks from ``mask_fn``, or from the layout alone when it
is exact at block level); a dense chunk's key range and mask from its rows."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnbench.engines.blocksparse import tuning  # the engine's tuning constants, read at call time
from attnbench.engines.blocksparse.layout import Geometry
from attnbench.engines.blocksparse.plan import DenseChunk, LightChunk, MaskFn


@dataclass(eq=False)
class Draft:
    """A light chunk being planned: its C query blocks and their S key slots."""

    blocks: list[int]  # query blocks (rows of the layout)
    band: bool  # band chunk: each block's slots are its contiguous run of key blocks
    rsel: torch.Tensor  # [C] the query blocks as a tensor
    qpos: torch.Tensor  # [C, rb] query positions (key space)
    qi: torch.Tensor  # [C, rb] query indices
    dontcare: torch.Tensor  # bool [C, rb]: heavy rows, computed densely (any mask will do)
    slots: torch.Tensor  # [C, S] key block of each slot
    slotvalid: torch.Tensor  # bool [C, S]: False for padding slots


def runs(flags: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs [c0, c1) of True in a 1-D bool tensor."""
    if not bool(flags.any()):
        return []
    f = flags.to(torch.int8)
    d = torch.diff(f, prepend=f.new_zeros(1), append=f.new_zeros(1))
    starts = (d == 1).nonzero().flatten().tolist()  # [runs]
    ends = (d == -1).nonzero().flatten().tolist()  # [runs]
    return list(zip(starts, ends))


def contiguous_start(rows: torch.Tensor) -> int | None:
    if rows.numel() == 0:
        return None
    r0 = int(rows[0])
    return r0 if bool((rows == torch.arange(r0, r0 + rows.numel())).all()) else None


def chunk_allowed(mask_fn: MaskFn, qpos: torch.Tensor, kpos: torch.Tensor, colvalid: torch.Tensor,
                  causal: bool) -> torch.Tensor:
    """bool [C, rb, L]: the pattern's mask (and causal) on query positions [C, rb] x key
    positions [C, L] (valid columns only)."""
    qp = qpos[:, :, None]
    kp = kpos[:, None, :]
    allowed = mask_fn(qp, kp) & colvalid[:, None, :]
    if causal:
        allowed = allowed & (kp <= qp)
    return allowed.expand(qpos.shape[0], qpos.shape[1], kpos.shape[1]).contiguous()  # [C, rb, L]


def make_light_chunk(geo: Geometry, blocks: list[int], band: bool, mask_fn: MaskFn,
                     block_exact: bool) -> LightChunk:
    """The light chunk of query ``blocks`` (a band run when ``band``)."""
    d = draft(geo, blocks, band)
    if block_exact and not geo.E:
        return exact_chunk(geo, d)
    return masked_chunk(geo, d, mask_fn)


def draft(geo: Geometry, blocks: list[int], band: bool) -> Draft:
    """Query rows and key slots of a chunk (a partial edge block is alone in its chunk)."""
    C = len(blocks)
    rsel = torch.tensor(blocks, dtype=torch.long)
    if C == 1 and not bool(geo.full_rows[blocks[0]]):
        r = blocks[0]
        qpos = torch.arange(int(geo.qlo[r]), int(geo.qhi[r]) + 1)[None, :]  # [1, rb]
    else:
        qpos = geo.qpos[rsel]  # [C, b]
    counts = geo.counts[rsel]
    S = max(int(counts.max()), 1)
    if band:
        slots = geo.first[rsel][:, None] + torch.arange(S)[None, :]  # [C, S]
        slotvalid = torch.ones(C, S, dtype=torch.bool)
    else:
        order = torch.sort((~geo.lay[rsel]).to(torch.int8), dim=1, stable=True).indices[:, :S]  # [C, S]
        slotvalid = torch.arange(S)[None, :] < counts[:, None]
        slots = torch.where(slotvalid, order, torch.zeros_like(order))
    qi = qpos - geo.off
    return Draft(blocks=blocks, band=band, rsel=rsel, qpos=qpos, qi=qi, dontcare=geo.heavy[qi],
                 slots=slots, slotvalid=slotvalid)


def masked_chunk(geo: Geometry, d: Draft, mask_fn: MaskFn) -> LightChunk:
    """Token masks from ``mask_fn`` on every column (slots, then the E extra keys)."""
    b, m, E = geo.b, geo.m, geo.E
    C, S = d.slots.shape
    kpos = (d.slots[:, :, None] * b + torch.arange(b)).reshape(C, S * b)  # [C, S*b]
    colvalid = d.slotvalid.repeat_interleave(b, dim=1) & (kpos < m)
    if E:
        kpos = torch.cat([kpos, geo.extras.expand(C, E)], 1)  # [C, L]
        colvalid = torch.cat([colvalid, ~geo.lay[d.rsel][:, geo.extras // b]], 1)  # [C, L]
    kpos = kpos.clamp(max=m - 1)
    allowed = chunk_allowed(mask_fn, d.qpos, kpos, colvalid, geo.causal)  # [C, rb, L]
    empty = ~allowed.any(-1) & ~d.dontcare
    allowed[d.dontcare | empty] = True
    rowscale = None if not bool(empty.any()) else (~empty).reshape(-1)  # [C*rb]
    if not d.band and S > 1:
        kpos, allowed = full_slots_first(geo, kpos, allowed, S)
    return finish_light(geo, d, kpos, allowed, 0, rowscale)


def full_slots_first(geo: Geometry, kpos: torch.Tensor, allowed: torch.Tensor,
                     S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's slots reordered fully-allowed first, so masked columns gather at the end."""
    b, E = geo.b, geo.E
    C, rb = allowed.shape[:2]
    full = allowed[:, :, :S * b].reshape(C, rb, S, b).all(3).all(1)  # [C, S]
    perm = torch.sort((~full).to(torch.int8), dim=1, stable=True).indices  # [C, S]
    cperm = (perm[:, :, None] * b + torch.arange(b)).reshape(C, S * b)  # [C, S*b]
    if E:
        cperm = torch.cat([cperm, torch.arange(S * b, S * b + E).expand(C, E)], 1)  # [C, L]
    kpos = torch.gather(kpos, 1, cperm)  # [C, L]
    allowed = torch.gather(allowed, 2, cperm[:, None, :].expand(C, rb, cperm.shape[1]))  # [C, rb, L]
    return kpos, allowed


def exact_chunk(geo: Geometry, d: Draft) -> LightChunk:
    """The layout is exact at block level: only causal, the sequence end and padding slots
    mask tokens, so fullness is decided per block and token masks are built for the
    trailing partial slots only."""
    b, m, causal = geo.b, geo.m, geo.causal
    qpos, slots, slotvalid = d.qpos, d.slots, d.slotvalid
    C, rb = qpos.shape
    S = slots.shape[1]
    lo = slots * b
    full = slotvalid & (lo + b <= m)
    if causal:
        full &= lo + b - 1 <= qpos[:, :1]
        first_key = torch.where(slotvalid, lo, torch.full_like(lo, m)).min(1).values
        rowany = first_key[:, None] <= qpos
    else:
        rowany = slotvalid.any(1)[:, None].expand(C, rb)  # [C, rb]
    empty = ~rowany & ~d.dontcare
    if not d.band and S > 1:
        perm = torch.sort((~full).to(torch.int8), dim=1, stable=True).indices  # [C, S]
        slots, slotvalid, full = (torch.gather(t, 1, perm) for t in (slots, slotvalid, full))  # [C, S] each
    # leading slots full in every row (per row, after the reordering; in order for a band)
    nfull = int(full.all(0).cumprod(0).sum()) if d.band else int(full.sum(1).min())
    kpos = (slots[:, :, None] * b + torch.arange(b)).reshape(C, S * b)  # [C, S*b]
    c0 = nfull * b
    tail = kpos[:, c0:]
    allowed = (slotvalid[:, nfull:].repeat_interleave(b, dim=1) & (tail < m))[:, None, :]
    if causal:
        allowed = allowed & (tail[:, None, :] <= qpos[:, :, None])
    allowed = allowed.expand(C, rb, tail.shape[1]).contiguous()  # [C, rb, S*b - c0]
    allowed[d.dontcare | empty] = True
    rowscale = None if not bool(empty.any()) else (~empty).reshape(-1)  # [C*rb]
    return finish_light(geo, d, kpos.clamp(max=m - 1), allowed, c0, rowscale)


def finish_light(geo: Geometry, d: Draft, kpos: torch.Tensor, allowed: torch.Tensor, c0: int,
                 rowscale: torch.Tensor | None) -> LightChunk:
    """The chunk of key columns ``kpos`` [C, L]; ``allowed`` covers the columns [c0, L) (the
    others are all allowed)."""
    b, E = geo.b, geo.E
    C, rb = d.qi.shape
    regions = [(a + c0, z + c0) for a, z in runs((~allowed).any(1).any(0))]
    if len(regions) > tuning.MAX_REGIONS:
        regions = [(regions[0][0], regions[-1][1])]
    blocked = [(~allowed[:, :, a - c0:z - c0]).contiguous() for a, z in regions]
    qrows = d.qi.reshape(-1)  # [C*rb]
    kblk = None
    if not d.band and not E and geo.m % b == 0:
        kblk = kpos[:, ::b].reshape(-1) // b  # [C*S]
    return LightChunk(
        blocks=C, rows=rb, qrows=qrows, q_start=contiguous_start(qrows), nslots=(kpos.shape[1] - E) // b,
        kidx=kpos.contiguous(), band_start=int(geo.first[d.blocks[0]]) * b if d.band else None,
        n_extra=E, regions=regions, blocked=blocked, rowscale=rowscale, kblk=kblk)


def make_dense_chunk(geo: Geometry, rows_l: list[int], row_ks: torch.Tensor, row_ke: torch.Tensor,
                     in_light: torch.Tensor, mask_fn: MaskFn) -> DenseChunk:
    """Dense rows ``rows_l`` against the union of their key ranges, trimmed to the columns
    some row may read."""
    rows = torch.tensor(rows_l, dtype=torch.long)
    ks = int(row_ks[rows].min())
    ke = max(int(row_ke[rows].max()), ks + 1)
    qpos = (rows + geo.off)[None, :]  # [1, R]
    kpos = torch.arange(ks, ke)[None, :]  # [1, ke - ks]
    allowed = chunk_allowed(mask_fn, qpos, kpos, torch.ones(1, ke - ks, dtype=torch.bool), geo.causal)[0]
    anycol = allowed.any(0).nonzero().flatten()  # [allowed columns]
    if anycol.numel():  # trim the key range to the columns actually allowed
        a0, a1 = int(anycol[0]), int(anycol[-1]) + 1
        allowed = allowed[:, a0:a1]
        ks, ke = ks + a0, ks + a1
    else:
        allowed = allowed[:, :1]
        ke = ks + 1
    empty = ~allowed.any(1)
    allowed[empty] = True
    reg = runs((~allowed).any(0))
    region = (reg[0][0], reg[-1][1]) if reg else None
    return DenseChunk(
        qrows=rows, q_start=contiguous_start(rows), kstart=ks, kend=ke, region=region,
        allowed=None if region is None else allowed[:, region[0]:region[1]].contiguous(),
        rowscale=None if not bool(empty.any()) else ~empty, overlay=bool(in_light[rows].any()))
