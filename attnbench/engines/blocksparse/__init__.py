"""Block-sparse attention engine in pure PyTorch: gather the key blocks each query block needs.

A pattern is described to the engine by

* ``layout``: bool [nbq, nbk], query block (in key space, rows ``off // b .. nbk - 1`` where
  ``off = M - N``) x key block; it must cover every key the pattern allows for a query that is
  not ``heavy`` (blocks are ``b`` tokens, aligned with the keys);
* ``extra_keys``: key positions every query block also reads (Longformer's global keys); one
  that lies in a block the row already reads is masked there, so it is never counted twice;
* ``mask_fn(qp, kp) -> bool``: the pattern's token-level mask in key-space positions
  (``qp = i + M - N``), evaluated only inside the selected blocks;
* ``heavy_rows``: query rows that attend (almost) everywhere (global tokens), computed as dense
  rows against a contiguous key range instead of widening every block's key list.

:func:`build_plan` turns this into chunks of query blocks, once per shape (callers cache it):

* **band** chunks: consecutive query blocks whose key blocks are the same contiguous run shifted
  by one block per query block (sliding windows): K/V are read through an overlapping strided
  view, never copied;
* **gather** chunks: the rest, sorted by block count so each chunk is padded only to its own
  widest row; K/V rows are gathered (index_select) per chunk;
* **dense** chunks: heavy rows (and query blocks whose blocks fill most of their key range),
  SDPA on a contiguous key range (a view) with a mask only where some key is not allowed.

Within a chunk of C query blocks of ``rb`` rows and L = S*b + E key columns the engine computes
scores [C, rb, L] per head (one batched GEMM), adds -inf only on the column ranges where some
entry is masked (key slots are ordered fully-allowed first), softmax, times V. Rows with no
allowed key are computed unmasked and then multiplied by 0, so no NaN reaches the output or
the gradients. Time and memory are O(N (S b + E)) per head, never O(N M), except for heavy rows
(O(rows x M)). A decode query touches only its own blocks. Python loops run over chunks and
heads (a few hundred tasks at n = 16384), never over tokens.

Two executions of the same plan:

* inference (no input needs grad): (chunk, K/V head) tasks, each a few ``out=`` ops on
  buffers reused by every task of a worker (fresh pages per chunk would cost more than the
  arithmetic on CPU), writing straight into the output. Tasks run on
  ``torch.get_num_threads()`` worker threads doing single-threaded ops (see ``_run_tasks``);
* autograd: the same chunks with out-of-place differentiable ops, all heads of a chunk in one
  batched GEMM (K/V gathered once per K/V head: GQA never copies K/V per query head), the
  chunks combined with ``cat`` + ``index_select``; dense rows through SDPA (differentiable).
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SCORE_BYTES = 2 << 20  # per-head score tile of a gather chunk (C * rb * L * 4 bytes)
BAND_SCORE_BYTES = 8 << 20  # ... of a band chunk (no copies to keep in cache: fewer, larger tasks)
MAX_CHUNK_BLOCKS = 64
DENSE_RATIO = 1.25  # a query block goes dense when its key range is at most this x its own keys
DENSE_MIN_BLOCKS = 4  # ... and it reads at least this many blocks
DENSE_MAX_ROWS = 2048
DENSE_MASK_ELEMS = 1 << 24  # rows x key range of one dense chunk
DENSE_CACHE_ELEMS = 1 << 21  # dense masks up to this size are kept in the plan (per dtype)
MAX_REGIONS = 4
THREADS: int | None = None  # inference worker threads; None = torch.get_num_threads()


# --------------------------------------------------------------------------------------------
# plan


def _normal_tensors():
    """Plans and their caches outlive the call that made them: never inference tensors (an
    inference-mode call may build what a later autograd call uses)."""
    return torch.inference_mode(False)


class _DeviceCopies:
    """``dev(name, device)``: a plan tensor copied to ``device`` once and kept in ``_cache``."""

    _cache: dict

    def _host(self, name: str) -> torch.Tensor:
        return getattr(self, name)

    def dev(self, name: str, device) -> torch.Tensor:
        key = (name, str(device))
        if key not in self._cache:
            with _normal_tensors():
                self._cache[key] = self._host(name).to(device).clone()
        return self._cache[key]


@dataclass(eq=False)
class LightChunk(_DeviceCopies):
    """C query blocks of ``rows`` queries each, against L = S*b + E key columns."""

    blocks: int  # C
    rows: int  # rb (b, or fewer for a partially filled edge block, alone in its chunk)
    qrows: torch.Tensor  # [C*rb] query indices, all valid
    q_start: int | None  # qrows == q_start + arange(C*rb)
    nslots: int  # S key blocks per query block
    kidx: torch.Tensor  # [C, L] key positions (clamped into [0, M))
    band_start: int | None  # band chunk: block c reads keys band_start + c*b + [0, S*b)
    n_extra: int  # E extra columns (the last E of L)
    regions: list[tuple[int, int]]  # column ranges [c0, c1) with some masked entry
    blocked: list[torch.Tensor]  # per region: bool [C, rb, c1 - c0], True = masked
    rowscale: torch.Tensor | None  # bool [C*rb]: False for a row with no allowed key
    kblk: torch.Tensor | None = None  # [C*S] key blocks when whole blocks can be copied (E = 0, b | M)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def cols(self) -> int:
        return int(self.kidx.shape[1])

    def biases(self, dtype, device) -> list[torch.Tensor]:
        key = ("bias", dtype, str(device))
        if key not in self._cache:
            with _normal_tensors():
                self._cache[key] = [torch.zeros((), dtype=dtype).masked_fill(m, float("-inf")).to(device)
                                    for m in self.blocked]
        return self._cache[key]

    def full_blocked(self, device) -> torch.Tensor | None:
        """bool [C, rb, L] (the regions placed in the full width), for the autograd path."""
        if not self.regions:
            return None
        key = ("full", str(device))
        if key not in self._cache:
            with _normal_tensors():
                full = torch.zeros(self.blocks, self.rows, self.cols, dtype=torch.bool)
                for (c0, c1), m in zip(self.regions, self.blocked):
                    full[:, :, c0:c1] = m
                self._cache[key] = full.to(device)
        return self._cache[key]

    def _host(self, name: str) -> torch.Tensor:
        t = getattr(self, name)
        return t.reshape(-1) if name == "kidx" else t


@dataclass(eq=False)
class DenseChunk(_DeviceCopies):
    """Heavy query rows against the contiguous key range [kstart, kend)."""

    qrows: torch.Tensor  # [R] query indices
    q_start: int | None
    kstart: int
    kend: int
    region: tuple[int, int] | None  # columns (relative to kstart) with some masked entry
    allowed: torch.Tensor | None  # bool [R, c1 - c0]
    rowscale: torch.Tensor | None  # bool [R]
    overlay: bool = False  # some rows also sit in a light chunk (heavy token rows): run after it
    _cache: dict = field(default_factory=dict, repr=False)

    def mask(self, dtype, device) -> torch.Tensor | None:
        """SDPA's additive mask [R, kend - kstart] (kept when small, else rebuilt per call)."""
        if self.region is None:
            return None
        key = ("mask", dtype, str(device))
        if key in self._cache:
            return self._cache[key]
        c0, c1 = self.region
        with _normal_tensors():
            m = torch.zeros(len(self.qrows), self.kend - self.kstart, dtype=dtype, device=device)
            m[:, c0:c1].masked_fill_(~self.allowed.to(device), float("-inf"))
        if m.numel() <= DENSE_CACHE_ELEMS:
            self._cache[key] = m
        return m


@dataclass(eq=False)
class BlockPlan(_DeviceCopies):
    n: int
    m: int
    block: int
    causal: bool
    light: list[LightChunk]
    dense: list[DenseChunk]
    extras: torch.Tensor  # [E] extra key positions
    order: torch.Tensor  # [N]: row of query i in cat(light chunk rows..., dense rows...)
    pairs: int  # (query, key) score pairs computed per batch and head, wasted ones included
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def light_rows(self) -> int:
        return sum(c.blocks * c.rows for c in self.light)

    def flat_index(self, bh: int, n: int, bhkv: int, m: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of q.reshape(B*H*N, D) and of k.reshape(B*Hkv*M, D) for every light chunk,
        chunk-major then head-major: each chunk's piece is one contiguous [heads * rows, D]."""
        key = ("flat", bh, n, bhkv, m, str(device))
        if key not in self._cache:
            with _normal_tensors():
                qh = torch.arange(bh)[:, None] * n
                kh = torch.arange(bhkv)[:, None] * m
                qi = torch.cat([(qh + c.qrows[None, :]).reshape(-1) for c in self.light])
                ki = torch.cat([(kh + c.kidx.reshape(1, -1)).reshape(-1) for c in self.light])
                self._cache[key] = (qi.to(device), ki.to(device))
        return self._cache[key]


    def describe(self) -> dict:
        band = [c for c in self.light if c.band_start is not None]
        gather = [c for c in self.light if c.band_start is None]
        return {
            "band_chunks": len(band), "band_blocks": sum(c.blocks for c in band),
            "gather_chunks": len(gather), "gather_blocks": sum(c.blocks for c in gather),
            "max_slots": max((c.nslots for c in self.light), default=0),
            "dense_chunks": len(self.dense), "dense_rows": sum(len(c.qrows) for c in self.dense),
            "pairs": self.pairs, "pairs_per_query": self.pairs / max(self.n, 1),
        }


def _runs(flags: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs [c0, c1) of True in a 1-D bool tensor."""
    if not bool(flags.any()):
        return []
    f = flags.to(torch.int8)
    d = torch.diff(f, prepend=f.new_zeros(1), append=f.new_zeros(1))
    starts = (d == 1).nonzero().flatten().tolist()
    ends = (d == -1).nonzero().flatten().tolist()
    return list(zip(starts, ends))


def _contiguous_start(rows: torch.Tensor) -> int | None:
    if rows.numel() == 0:
        return None
    r0 = int(rows[0])
    return r0 if bool((rows == torch.arange(r0, r0 + rows.numel())).all()) else None


def _chunk_allowed(mask_fn: MaskFn, qpos: torch.Tensor, kpos: torch.Tensor, colvalid: torch.Tensor,
                   causal: bool) -> torch.Tensor:
    """bool [C, rb, L]: the pattern's mask (and causal) on query positions [C, rb] x key
    positions [C, L] (valid columns only)."""
    qp = qpos[:, :, None]
    kp = kpos[:, None, :]
    allowed = mask_fn(qp, kp) & colvalid[:, None, :]
    if causal:
        allowed = allowed & (kp <= qp)
    return allowed.expand(qpos.shape[0], qpos.shape[1], kpos.shape[1]).contiguous()


def build_plan(n: int, m: int, block: int, layout: torch.Tensor, mask_fn: MaskFn, **kw) -> BlockPlan:
    """Chunks of query blocks for ``n`` queries (bottom-right aligned) against ``m`` keys.

    layout: bool [nbq, nbk] with nbk = ceil(m / block), nbq = nbk - (m - n) // block (query
    blocks in key space). Keywords: ``causal``, ``extra_keys``, ``heavy_rows`` (see the module
    docstring); ``dense``: 'auto' (heavy blocks by the cost rule), 'never' (only the given heavy
    rows) or 'all' (every row dense); ``band=False`` disables strided views; ``block_exact``:
    the pattern allows every key of a layout block (BigBird, block layouts), so ``mask_fn`` is
    not evaluated for light chunks (only causal and the sequence end mask); ``score_bytes``:
    the per-head score tile a light chunk is sized to (default: SCORE_BYTES for gather chunks,
    BAND_SCORE_BYTES for band chunks). Everything here runs once per shape;
    the result is small (index tensors and the masks of the partially allowed columns only).
    """
    with _normal_tensors(), torch.no_grad():
        return _build_plan(n, m, block, layout, mask_fn, **kw)


def _build_plan(n: int, m: int, block: int, layout: torch.Tensor, mask_fn: MaskFn, *,
               causal: bool = False, extra_keys=None, heavy_rows=None,
               score_bytes: int | None = None, dense: str = "auto", band: bool = True,
               block_exact: bool = False) -> BlockPlan:
    band_bytes = BAND_SCORE_BYTES if score_bytes is None else int(score_bytes)
    score_bytes = SCORE_BYTES if score_bytes is None else int(score_bytes)
    if n > m:
        raise ValueError(f"block-sparse plan needs N <= M (queries bottom-right aligned), got {n} > {m}")
    b = int(block)
    if b < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    off = m - n
    nbk = -(-m // b)
    q0 = off // b
    nbq = nbk - q0
    layout = torch.as_tensor(layout, dtype=torch.bool).cpu()
    if tuple(layout.shape) != (nbq, nbk):
        raise ValueError(f"layout has shape {tuple(layout.shape)}, expected {(nbq, nbk)}")
    lay = layout.clone()
    blk = torch.arange(q0, nbk)
    qlo = torch.clamp(blk * b, min=off)  # first / last valid query position of each block
    qhi = torch.clamp((blk + 1) * b, max=m) - 1
    kb = torch.arange(nbk)
    if causal:
        lay &= (kb * b)[None, :] <= qhi[:, None]
    if extra_keys is None:
        extras = torch.zeros(0, dtype=torch.long)
    else:
        extras = torch.as_tensor(extra_keys, dtype=torch.long).flatten()
        extras = torch.unique(extras[(extras >= 0) & (extras < m)])
    E = int(extras.numel())
    heavy = torch.zeros(n, dtype=torch.bool)
    if heavy_rows is not None:
        hr = torch.as_tensor(heavy_rows, dtype=torch.long).flatten()
        heavy[hr[(hr >= 0) & (hr < n)]] = True
    if dense == "all":
        heavy[:] = True

    counts = lay.sum(1)
    has = counts > 0
    first = torch.where(has, lay.to(torch.int8).argmax(1), torch.zeros_like(counts))
    last = torch.where(has, nbk - 1 - lay.flip(1).to(torch.int8).argmax(1), torch.zeros_like(counts))
    full_rows = (qlo == blk * b) & (qhi == (blk + 1) * b - 1)  # all b rows are queries

    # -- dense query blocks: their key range is barely larger than what they read anyway
    kstart = first * b
    kend = torch.clamp((last + 1) * b, max=m)
    if E:
        kstart = torch.minimum(kstart, extras.min().expand_as(kstart))
        kend = torch.maximum(kend, (extras.max() + 1).expand_as(kend))
    own = counts * b + E
    dense_blk = torch.zeros(nbq, dtype=torch.bool)
    if dense == "auto":
        dense_blk = has & (counts >= DENSE_MIN_BLOCKS) & ((kend - kstart) <= DENSE_RATIO * own)
    # -- band blocks: contiguous key blocks, the same run shifted by one block per query block
    contiguous = has & (last - first + 1 == counts) & full_rows & ((last + 1) * b <= m)
    if not band:
        contiguous[:] = False
    rel = first - torch.arange(nbq)

    qpos_all = blk[:, None] * b + torch.arange(b)[None, :]  # [nbq, b]
    qidx_all = qpos_all - off  # query indices (valid where qpos in [off, m))
    valid_all = (qpos_all >= off) & (qpos_all < m)
    rowheavy = torch.zeros(nbq, b, dtype=torch.bool)
    rowheavy[valid_all] = heavy[qidx_all[valid_all]]
    needed = (valid_all & ~rowheavy).any(1)  # has a row that is not computed densely anyway
    # band runs (>= 2 neighbours with the same shifted run of blocks) beat dense rows
    same_next = torch.zeros(nbq, dtype=torch.bool)
    if nbq > 1:
        same_next[:-1] = (contiguous[:-1] & contiguous[1:] & needed[:-1] & needed[1:]
                          & (counts[:-1] == counts[1:]) & (rel[:-1] == rel[1:]))
    in_run = same_next.clone()
    in_run[1:] |= same_next[:-1]
    dense_blk &= ~in_run
    light_blk = ~dense_blk & needed

    light: list[LightChunk] = []
    pairs = 0

    def cols_of(cnt: int) -> int:
        return max(cnt, 1) * b + E

    def chunk_cap(cnt: int, rows: int, budget: int) -> int:
        return int(max(1, min(MAX_CHUNK_BLOCKS, budget // (rows * cols_of(cnt) * 4))))

    def make_light(rs: list[int], band_mode: bool):
        C = len(rs)
        rsel = torch.tensor(rs, dtype=torch.long)
        if C == 1 and not bool(full_rows[rs[0]]):
            r = rs[0]
            qpos = torch.arange(int(qlo[r]), int(qhi[r]) + 1)[None, :]
        else:
            qpos = qpos_all[rsel]
        rb = qpos.shape[1]
        S = max(int(counts[rsel].max()), 1)
        if band_mode:
            slots = first[rsel][:, None] + torch.arange(S)[None, :]
            slotvalid = torch.ones(C, S, dtype=torch.bool)
        else:
            order = torch.sort((~lay[rsel]).to(torch.int8), dim=1, stable=True).indices[:, :S]
            slotvalid = torch.arange(S)[None, :] < counts[rsel][:, None]
            slots = torch.where(slotvalid, order, torch.zeros_like(order))
        qi = qpos - off
        dontcare = heavy[qi]
        if block_exact and not E:
            return make_light_exact(rs, band_mode, qpos, qi, dontcare, slots, slotvalid)
        kpos = (slots[:, :, None] * b + torch.arange(b)).reshape(C, S * b)
        colvalid = slotvalid.repeat_interleave(b, dim=1) & (kpos < m)
        if E:
            kpos = torch.cat([kpos, extras.expand(C, E)], 1)
            colvalid = torch.cat([colvalid, ~lay[rsel][:, extras // b]], 1)
        kpos = kpos.clamp(max=m - 1)
        allowed = _chunk_allowed(mask_fn, qpos, kpos, colvalid, causal)
        empty = ~allowed.any(-1) & ~dontcare
        allowed[dontcare | empty] = True
        rowscale = None if not bool(empty.any()) else (~empty).reshape(-1)
        if not band_mode and S > 1:
            # order each row's slots fully-allowed first, so masked columns gather at the end
            full = allowed[:, :, :S * b].reshape(C, rb, S, b).all(3).all(1)  # [C, S]
            perm = torch.sort((~full).to(torch.int8), dim=1, stable=True).indices
            cperm = (perm[:, :, None] * b + torch.arange(b)).reshape(C, S * b)
            if E:
                cperm = torch.cat([cperm, torch.arange(S * b, S * b + E).expand(C, E)], 1)
            kpos = torch.gather(kpos, 1, cperm)
            allowed = torch.gather(allowed, 2, cperm[:, None, :].expand(C, rb, cperm.shape[1]))
        add_chunk(rs, band_mode, qi, kpos, allowed, 0, rowscale)

    def add_chunk(rs, band_mode, qi, kpos, allowed, c0, rowscale):
        """``allowed`` covers the columns [c0, L) of the chunk (the others are all allowed)."""
        nonlocal pairs
        C, rb = qi.shape
        regions = [(a + c0, z + c0) for a, z in _runs((~allowed).any(1).any(0))]
        if len(regions) > MAX_REGIONS:
            regions = [(regions[0][0], regions[-1][1])]
        blocked = [(~allowed[:, :, a - c0:z - c0]).contiguous() for a, z in regions]
        qrows = qi.reshape(-1)
        kblk = None
        if not band_mode and not E and m % b == 0:
            kblk = kpos[:, ::b].reshape(-1) // b
        light.append(LightChunk(
            blocks=C, rows=rb, qrows=qrows, q_start=_contiguous_start(qrows), nslots=(kpos.shape[1] - E) // b,
            kidx=kpos.contiguous(), band_start=int(first[rs[0]]) * b if band_mode else None,
            n_extra=E, regions=regions, blocked=blocked, rowscale=rowscale, kblk=kblk))
        pairs += C * rb * kpos.shape[1]

    def make_light_exact(rs, band_mode, qpos, qi, dontcare, slots, slotvalid):
        """The layout is exact at block level: only causal, the sequence end and padding slots
        mask tokens, so fullness is decided per block and token masks are built for the
        trailing partial slots only."""
        C, rb = qpos.shape
        S = slots.shape[1]
        lo = slots * b
        full = slotvalid & (lo + b <= m)
        if causal:
            full &= lo + b - 1 <= qpos[:, :1]
            first_key = torch.where(slotvalid, lo, torch.full_like(lo, m)).min(1).values
            rowany = first_key[:, None] <= qpos
        else:
            rowany = slotvalid.any(1)[:, None].expand(C, rb)
        empty = ~rowany & ~dontcare
        if not band_mode and S > 1:
            perm = torch.sort((~full).to(torch.int8), dim=1, stable=True).indices
            slots, slotvalid, full = (torch.gather(t, 1, perm) for t in (slots, slotvalid, full))
        # leading slots full in every row (per row, after the reordering; in order for a band)
        nfull = int(full.all(0).cumprod(0).sum()) if band_mode else int(full.sum(1).min())
        kpos = (slots[:, :, None] * b + torch.arange(b)).reshape(C, S * b)
        c0 = nfull * b
        tail = kpos[:, c0:]
        allowed = (slotvalid[:, nfull:].repeat_interleave(b, dim=1) & (tail < m))[:, None, :]
        if causal:
            allowed = allowed & (tail[:, None, :] <= qpos[:, :, None])
        allowed = allowed.expand(C, rb, tail.shape[1]).contiguous()
        allowed[dontcare | empty] = True
        rowscale = None if not bool(empty.any()) else (~empty).reshape(-1)
        add_chunk(rs, band_mode, qi, kpos.clamp(max=m - 1), allowed, c0, rowscale)

    # band runs
    done = torch.zeros(nbq, dtype=torch.bool)
    r = 0
    lb = light_blk.tolist()
    cont = contiguous.tolist()
    cnt_l = counts.tolist()
    rel_l = rel.tolist()
    while r < nbq:
        if not (lb[r] and cont[r]):
            r += 1
            continue
        s = r
        while r + 1 < nbq and lb[r + 1] and cont[r + 1] and cnt_l[r + 1] == cnt_l[s] and rel_l[r + 1] == rel_l[s]:
            r += 1
        run = list(range(s, r + 1))
        if len(run) >= 2:
            cap = chunk_cap(cnt_l[s], b, band_bytes)
            for i in range(0, len(run), cap):
                make_light(run[i:i + cap], True)
            done[run] = True
        r += 1
    # gather chunks: the rest, partial edge blocks alone, the others sorted by block count
    rest = [i for i in range(nbq) if lb[i] and not bool(done[i])]
    partial = [i for i in rest if not bool(full_rows[i])]
    fullr = [i for i in rest if bool(full_rows[i])]
    for i in partial:
        make_light([i], False)
    fullr.sort(key=lambda i: cnt_l[i])  # stable: equal counts keep their order
    i = 0
    while i < len(fullr):
        j = i
        S = max(cnt_l[fullr[i]], 1)
        while j + 1 < len(fullr) and (j + 2 - i) <= chunk_cap(max(cnt_l[fullr[j + 1]], S), b, score_bytes):
            j += 1
            S = max(S, cnt_l[fullr[j]], 1)
        make_light(fullr[i:j + 1], False)
        i = j + 1

    # -- dense rows: heavy token rows (full key range) and rows of dense blocks (their range)
    row_ks = torch.zeros(n, dtype=torch.long)
    row_ke = torch.zeros(n, dtype=torch.long)
    is_dense = torch.zeros(n, dtype=torch.bool)
    for rr in dense_blk.nonzero().flatten().tolist():
        rows = qidx_all[rr][valid_all[rr]]
        is_dense[rows] = True
        row_ks[rows] = int(kstart[rr])
        row_ke[rows] = int(kend[rr])
    # heavy rows attend (almost) everywhere: their range is all keys (causal: up to the query)
    row_ks[heavy] = 0
    row_ke[heavy] = m
    if causal:
        row_ke[heavy] = torch.clamp(torch.arange(n)[heavy] + off + 1, max=m)
    is_dense |= heavy
    in_light = torch.zeros(n, dtype=torch.bool)
    for c in light:
        in_light[c.qrows] = True
    dense_chunks: list[DenseChunk] = []
    drows = is_dense.nonzero().flatten().tolist()
    groups: list[list[int]] = []
    cur: list[int] = []
    cks = cke = 0
    own_sum = 0
    for q in drows:
        ks, ke = int(row_ks[q]), int(row_ke[q])
        if cur:
            nks, nke = min(cks, ks), max(cke, ke)
            span = max(nke - nks, 1)
            if (len(cur) + 1 <= DENSE_MAX_ROWS and (len(cur) + 1) * span <= DENSE_MASK_ELEMS
                    and (len(cur) + 1) * span <= DENSE_RATIO * (own_sum + ke - ks) + b * b):
                cur.append(q)
                cks, cke, own_sum = nks, nke, own_sum + ke - ks
                continue
            groups.append(cur)
        cur, cks, cke, own_sum = [q], ks, ke, ke - ks
    if cur:
        groups.append(cur)
    for g in groups:
        rows = torch.tensor(g, dtype=torch.long)
        ks = int(row_ks[rows].min())
        ke = max(int(row_ke[rows].max()), ks + 1)
        qpos = (rows + off)[None, :]
        kpos = torch.arange(ks, ke)[None, :]
        allowed = _chunk_allowed(mask_fn, qpos, kpos, torch.ones(1, ke - ks, dtype=torch.bool), causal)[0]
        anycol = allowed.any(0).nonzero().flatten()
        if anycol.numel():  # trim the key range to the columns actually allowed
            a0, a1 = int(anycol[0]), int(anycol[-1]) + 1
            allowed = allowed[:, a0:a1]
            ks, ke = ks + a0, ks + a1
        else:
            allowed = allowed[:, :1]
            ke = ks + 1
        empty = ~allowed.any(1)
        allowed[empty] = True
        reg = _runs((~allowed).any(0))
        region = (reg[0][0], reg[-1][1]) if reg else None
        dense_chunks.append(DenseChunk(
            qrows=rows, q_start=_contiguous_start(rows), kstart=ks, kend=ke, region=region,
            allowed=None if region is None else allowed[:, region[0]:region[1]].contiguous(),
            rowscale=None if not bool(empty.any()) else ~empty, overlay=bool(in_light[rows].any())))
        pairs += len(g) * (ke - ks)

    # -- where each query's output lives in cat(light rows, dense rows)
    order = torch.full((n,), -1, dtype=torch.long)
    pos = 0
    for c in light:
        order[c.qrows] = torch.arange(pos, pos + c.qrows.numel())
        pos += c.qrows.numel()
    for c in dense_chunks:
        order[c.qrows] = torch.arange(pos, pos + c.qrows.numel())
        pos += c.qrows.numel()
    if n and bool((order < 0).any()):  # cannot happen: every row is light or dense
        raise AssertionError("block plan left query rows uncovered")
    return BlockPlan(n=n, m=m, block=b, causal=causal, light=light, dense=dense_chunks, extras=extras,
                     order=order, pairs=int(pairs))


# --------------------------------------------------------------------------------------------
# execution


def _softmax_(s: torch.Tensor) -> torch.Tensor:
    """In-place softmax over the last dim (the CPU kernel reads each row before writing it)."""
    return torch._softmax(s, -1, False, out=s)


def _check(q, k, v, plan: BlockPlan):
    b_, h, n, d = q.shape
    if k.shape[1] == 0 or h % k.shape[1]:
        raise ValueError(f"heads={h} is not a multiple of kv_heads={k.shape[1]}")
    if n != plan.n or k.shape[2] != plan.m:
        raise ValueError(f"plan is for N={plan.n}, M={plan.m}; got N={n}, M={k.shape[2]}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan,
              scale: float | None = None) -> torch.Tensor:
    """Block-sparse attention by ``plan``: q [B, H, N, D], k/v [B, Hkv, M, D] -> [B, H, N, D]."""
    _check(q, k, v, plan)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if q.shape[2] == 0:
        return q.new_zeros(q.shape)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if grad:
        return _attention_autograd(q, k, v, plan, scale)
    return _attention_inference(q, k, v, plan, scale)


def _dense_chunk(q, k, v, c: DenseChunk, scale: float) -> torch.Tensor:
    """[B, H, R, D]: SDPA of the chunk's rows against keys [kstart, kend) (a view)."""
    h, hkv = q.shape[1], k.shape[1]
    if c.q_start is not None:
        qd = q.narrow(2, c.q_start, len(c.qrows))
    else:
        qd = q.index_select(2, c.dev("qrows", q.device))
    span = c.kend - c.kstart
    o = F.scaled_dot_product_attention(qd, k.narrow(2, c.kstart, span), v.narrow(2, c.kstart, span),
                                       attn_mask=c.mask(q.dtype, q.device), scale=scale, enable_gqa=hkv != h)
    if c.rowscale is not None:
        o = o * c.dev("rowscale", q.device)[:, None].to(o.dtype)
    return o


# -- inference workers ---------------------------------------------------------------------
# The inference path runs (chunk, K/V head) tasks on ``torch.get_num_threads()`` Python threads,
# each doing single-threaded ops. Intra-op parallelism would put a fork/join barrier on every
# one of the many small ops; on a shared machine one descheduled thread then stalls each of
# them for a scheduler time slice. Ops release the GIL, so the threads compute concurrently.

_POOL: ThreadPoolExecutor | None = None
_POOL_N = 0
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:  # a forked child has none of the parent's threads
    global _POOL, _POOL_N
    _POOL, _POOL_N = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _single_thread_ops() -> None:
    torch.get_num_threads()  # the thread's lazy init first (it would later reset the setting)
    torch.set_num_threads(1)  # this thread's OpenMP / MKL setting (and, briefly, the default)


def _pool(n: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_N
    with _POOL_LOCK:
        if _POOL is None or _POOL_N != n:
            if _POOL is not None:
                _POOL.shutdown(wait=True)
            prev = torch.get_num_threads()
            pool = ThreadPoolExecutor(n, thread_name_prefix="attnbench-blocked", initializer=_single_thread_ops)
            barrier = threading.Barrier(n)
            list(pool.map(lambda _: barrier.wait(), range(n)))  # start all n threads now
            torch.set_num_threads(prev)  # the initializers lowered the process default: restore it
            _POOL, _POOL_N = pool, n
        return _POOL


def workers() -> int:
    """Inference worker threads: ``THREADS``, or torch's intra-op thread count when None."""
    return max(1, torch.get_num_threads() if THREADS is None else int(THREADS))


def _run_tasks(tasks: list, work: Callable, make_ctx: Callable, parallel: bool = True) -> None:
    """Run ``work(task, ctx)`` for every task on the workers, which pull from one queue
    (``parallel=False``: in this thread, e.g. for CUDA tensors, whose ops are asynchronous)."""
    if not tasks:
        return
    n = workers() if parallel else 1
    if n == 1 or len(tasks) == 1:
        ctx = make_ctx()
        for t in tasks:
            work(t, ctx)
        return
    it = iter(tasks)
    lock = threading.Lock()
    inference = torch.is_inference_mode_enabled()

    def loop():
        with torch.inference_mode(inference), torch.no_grad():
            ctx = make_ctx()
            while True:
                with lock:
                    t = next(it, None)
                if t is None:
                    return
                work(t, ctx)

    pool = _pool(n)
    futures = [pool.submit(loop) for _ in range(min(n, len(tasks)))]
    wait(futures)  # all of them, so none still writes when an error is raised
    for f in futures:
        f.result()


def _attention_inference(q, k, v, plan: BlockPlan, scale: float) -> torch.Tensor:
    """Inference: (chunk, K/V head) tasks, scores [C, rb, L] per query head in a reused buffer.

    Band chunks read K/V through strided views; with E extra columns the band view is widened
    by E rows so the score GEMM writes one contiguous [C, rb, S*b + E] tile (MKL's batched
    path), and the E columns are then overwritten by the extra keys' scores. Gather chunks copy
    their K/V rows once per K/V head into a reused buffer shared by the head's query group.
    Each task writes its own rows of the output; dense chunks whose rows also sit in a light
    chunk (heavy token rows) run after all light chunks.
    """
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    G = H // Hkv
    BH, BHkv = B * H, B * Hkv
    b = plan.block
    dev, dt = q.device, q.dtype
    qf, kf, vf = q.view(BH, N, D), k.view(BHkv, M, D), v.view(BHkv, M, D)
    k_numel = k.untyped_storage().nbytes() // k.element_size()
    out = torch.empty(BH, N, D, dtype=dt, device=dev)
    out4 = out.view(B, H, N, D)
    E = int(plan.extras.numel())
    band = [c for c in plan.light if c.band_start is not None]
    gather = [c for c in plan.light if c.band_start is None]
    kE = vE = None
    if E and band:
        ex = plan.dev("extras", dev)
        kE, vE = kf.index_select(1, ex), vf.index_select(1, ex)  # [BHkv, E, D]
    s_el = max((c.blocks * c.rows * c.cols for c in plan.light), default=0)
    g_el = max((c.blocks * c.cols for c in gather), default=0)
    r_el = max((c.blocks * c.rows for c in plan.light), default=0)

    def make_ctx():  # one set of buffers per worker, reused by all its tasks
        def buf(nel):
            return torch.empty(nel, dtype=dt, device=dev) if nel else None
        return dict(s=buf(s_el), k=buf(g_el * D), v=buf(g_el * D), q=buf(r_el * D), o=buf(r_el * D))

    def light_task(c: LightChunk, j: int, ctx) -> None:
        C, rb, L = c.blocks, c.rows, c.cols
        Sb = L - c.n_extra
        R = C * rb
        is_band = c.band_start is not None
        ext = is_band and c.n_extra > 0
        # widened band view: in bounds even for the last K/V head?
        wide = ext and (kf.storage_offset() + (BHkv - 1) * M * D + c.band_start * D
                        + ((C - 1) * b + L) * D) <= k_numel
        if is_band:
            base = kf.storage_offset() + j * M * D + c.band_start * D
            kh = kf.as_strided((C, L if wide else Sb, D), (b * D, D, 1), base)
            vh = vf.as_strided((C, Sb, D), (b * D, D, 1), base)
        elif c.kblk is not None:  # whole blocks: fewer, longer copies
            kb = c.dev("kblk", dev)
            nb = kb.numel()
            kh = torch.index_select(kf[j].view(M // b, b * D), 0, kb,
                                    out=ctx["k"][:C * L * D].view(nb, b * D)).view(C, L, D)
            vh = torch.index_select(vf[j].view(M // b, b * D), 0, kb,
                                    out=ctx["v"][:C * L * D].view(nb, b * D)).view(C, L, D)
        else:
            kidx = c.dev("kidx", dev)
            kh = torch.index_select(kf[j], 0, kidx, out=ctx["k"][:C * L * D].view(C * L, D)).view(C, L, D)
            vh = torch.index_select(vf[j], 0, kidx, out=ctx["v"][:C * L * D].view(C * L, D)).view(C, L, D)
        biases = c.biases(dt, dev)
        rs = None if c.rowscale is None else c.dev("rowscale", dev).view(C, rb, 1).to(dt)
        direct = c.q_start is not None and rs is None
        s = ctx["s"][:R * L].view(C, rb, L)
        for g in range(G):
            bh = (j // Hkv) * H + (j % Hkv) * G + g
            if c.q_start is not None:
                qh = qf[bh, c.q_start:c.q_start + R].view(C, rb, D)
            else:
                qh = torch.index_select(qf[bh], 0, c.dev("qrows", dev), out=ctx["q"][:R * D].view(R, D)).view(C, rb, D)
            if not ext or wide:
                torch.baddbmm(s, qh, kh.transpose(1, 2), beta=0, alpha=scale, out=s)
            else:  # strided output: torch splits it into per-block GEMMs
                torch.baddbmm(s[..., :Sb], qh, kh.transpose(1, 2), beta=0, alpha=scale, out=s[..., :Sb])
            if ext:  # the extra columns of all C*rb rows: one GEMM into a strided 2-D view
                se = s.view(R, L)[:, Sb:]
                torch.addmm(se, qh.reshape(R, D), kE[j].t(), beta=0, alpha=scale, out=se)
            for (c0, c1), bias in zip(c.regions, biases):
                s[..., c0:c1].add_(bias)
            _softmax_(s)
            o = out[bh, c.q_start:c.q_start + R].view(C, rb, D) if direct else ctx["o"][:R * D].view(C, rb, D)
            if ext:
                torch.bmm(s[..., :Sb], vh, out=o)
                torch.baddbmm(o, s[..., Sb:], vE[j].expand(C, c.n_extra, D), out=o)
            else:
                torch.bmm(s, vh, out=o)
            if not direct:
                if rs is not None:
                    o.mul_(rs)
                if c.q_start is not None:
                    out[bh, c.q_start:c.q_start + R].copy_(o.view(R, D))
                else:
                    out[bh].index_copy_(0, c.dev("qrows", dev), o.view(R, D))

    def dense_task(c: DenseChunk, j: int, ctx) -> None:
        bi, hk = divmod(j, Hkv)
        hs = slice(hk * G, (hk + 1) * G)
        o = _dense_chunk(q[bi:bi + 1, hs], k[bi:bi + 1, hk:hk + 1], v[bi:bi + 1, hk:hk + 1], c, scale)
        if c.q_start is not None:
            out4[bi, hs, c.q_start:c.q_start + len(c.qrows)] = o[0]
        else:
            out4[bi, hs].index_copy_(1, c.dev("qrows", dev), o[0])

    def work(task, ctx) -> None:
        kind, c, j = task
        (light_task if kind == "light" else dense_task)(c, j, ctx)

    overlay = [c for c in plan.dense if c.overlay]
    first = [("light", c, j) for c in plan.light for j in range(BHkv)]
    first += [("dense", c, j) for c in plan.dense if not c.overlay for j in range(BHkv)]
    cpu = dev.type == "cpu"
    _run_tasks(first, work, make_ctx, cpu)
    _run_tasks([("dense", c, j) for c in overlay for j in range(BHkv)], work, make_ctx, cpu)
    return out4


def _attention_autograd(q, k, v, plan: BlockPlan, scale: float) -> torch.Tensor:
    """Differentiable execution. The rows of q and K/V of every light chunk are gathered by one
    ``index_select`` each, in an order where each chunk's piece is contiguous, and ``split``:
    the backward scatters each of q, k, v once (a per-chunk gather or slice would add a
    full-size gradient per chunk) and no piece needs a copy to become a GEMM operand."""
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    G = H // Hkv
    BH, BHkv = B * H, B * Hkv
    dev = q.device
    qf, kf, vf = q.reshape(BH, N, D), k.reshape(BHkv, M, D), v.reshape(BHkv, M, D)
    outs = []
    if plan.light:
        qidx, kidx = plan.flat_index(BH, N, BHkv, M, dev)
        qs = q.reshape(BH * N, D).index_select(0, qidx).split([BH * c.blocks * c.rows for c in plan.light])
        ks = k.reshape(BHkv * M, D).index_select(0, kidx).split([BHkv * c.blocks * c.cols for c in plan.light])
        vs = v.reshape(BHkv * M, D).index_select(0, kidx).split([BHkv * c.blocks * c.cols for c in plan.light])
        for c, qg, kg, vg in zip(plan.light, qs, ks, vs):
            C, rb, L = c.blocks, c.rows, c.cols
            kg = kg.view(BHkv * C, L, D)
            vg = vg.view(BHkv * C, L, D)
            # fold the G query heads of a K/V head into the rows: K/V are read once per K/V head
            qg = (qg * scale).view(BHkv, G, C, rb, D).transpose(1, 2).reshape(BHkv * C, G * rb, D)
            s = torch.bmm(qg, kg.transpose(1, 2)).view(BHkv, C, G, rb, L)
            blocked = c.full_blocked(dev)
            if blocked is not None:
                s = s.masked_fill(blocked[:, None], float("-inf"))
            p = torch.softmax(s, -1)
            o = torch.bmm(p.view(BHkv * C, G * rb, L), vg).view(BHkv, C, G, rb, D)
            if c.rowscale is not None:
                o = o * c.dev("rowscale", dev).view(C, 1, rb, 1).to(o.dtype)
            outs.append(o.transpose(1, 2).reshape(BH, C * rb, D))
    for c in plan.dense:
        outs.append(_dense_chunk(q, k, v, c, scale).reshape(BH, len(c.qrows), D))
    out = torch.cat(outs, 1) if len(outs) > 1 else outs[0]
    return out.index_select(1, plan.dev("order", dev)).view(B, H, N, D)


# --------------------------------------------------------------------------------------------
# cost model for the registry


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
