"""The plan's data types: chunks of query blocks and the index tensors they read.

A plan is built once per shape (:func:`attnbench.engines.blocksparse.build_plan`) and kept by
the caller; device copies and dtype-specific masks are made on first use and kept in each
object's ``_cache``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

from attnbench.cache import building

from attnbench.engines.blocksparse import tuning  # the engine's tuning constants, read at call time

MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DeviceCopies:
    """``dev(name, device)``: a plan tensor copied to ``device`` once and kept in ``_cache``."""

    _cache: dict

    def _host(self, name: str) -> torch.Tensor:
        return getattr(self, name)

    def dev(self, name: str, device) -> torch.Tensor:
        key = (name, str(device))
        if key not in self._cache:
            with building():
                self._cache[key] = self._host(name).to(device).clone()
        return self._cache[key]


@dataclass(eq=False)
class LightChunk(DeviceCopies):
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
            with building():
                self._cache[key] = [torch.zeros((), dtype=dtype).masked_fill(m, float("-inf")).to(device)
                                    for m in self.blocked]
        return self._cache[key]

    def full_blocked(self, device) -> torch.Tensor | None:
        """bool [C, rb, L] (the regions placed in the full width), for the autograd path."""
        if not self.regions:
            return None
        key = ("full", str(device))
        if key not in self._cache:
            with building():
                full = torch.zeros(self.blocks, self.rows, self.cols, dtype=torch.bool)
                for (c0, c1), m in zip(self.regions, self.blocked):
                    full[:, :, c0:c1] = m
                self._cache[key] = full.to(device)
        return self._cache[key]

    def _host(self, name: str) -> torch.Tensor:
        t = getattr(self, name)
        return t.reshape(-1) if name == "kidx" else t  # kidx: [C*L]


@dataclass(eq=False)
class DenseChunk(DeviceCopies):
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
        with building():
            m = torch.zeros(len(self.qrows), self.kend - self.kstart, dtype=dtype, device=device)
            m[:, c0:c1].masked_fill_(~self.allowed.to(device), float("-inf"))
        if m.numel() <= tuning.DENSE_CACHE_ELEMS:
            self._cache[key] = m
        return m


@dataclass(frozen=True)
class PlanSizes:
    """What the cost model reads of a plan: its chunks' shapes, each with how many chunks have
    it. From a built plan (:meth:`BlockPlan.sizes`) or without one (:func:`.sizes.plan_sizes`)."""

    n: int
    extras: int  # E extra key columns
    light: tuple[tuple[int, int, int, bool, int], ...]  # (blocks C, rows rb, cols L, band, chunks)
    dense: tuple[tuple[int, int, int], ...]  # (rows R, key span kend - kstart, chunks)

    @property
    def pairs(self) -> int:
        """(query, key) score pairs computed per batch and head, wasted ones included."""
        return (sum(c * rb * cols * k for c, rb, cols, _, k in self.light)
                + sum(r * span * k for r, span, k in self.dense))

    @classmethod
    def of(cls, n: int, extras: int, light, dense) -> "PlanSizes":
        """Equal shapes merged (counts added), sorted: equal plans give equal sizes."""
        lc, dc = Counter(), Counter()
        for c, rb, cols, band, k in light:
            lc[(int(c), int(rb), int(cols), bool(band))] += int(k)
        for r, span, k in dense:
            dc[(int(r), int(span))] += int(k)
        return cls(n=int(n), extras=int(extras), light=tuple((*key, k) for key, k in sorted(lc.items()) if k),
                   dense=tuple((*key, k) for key, k in sorted(dc.items()) if k))


@dataclass(eq=False)
class BlockPlan(DeviceCopies):
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
            with building():
                qh = torch.arange(bh)[:, None] * n
                kh = torch.arange(bhkv)[:, None] * m
                qi = torch.cat([(qh + c.qrows[None, :]).reshape(-1) for c in self.light])  # [sum BH*C*rb]
                ki = torch.cat([(kh + c.kidx.reshape(1, -1)).reshape(-1) for c in self.light])  # [sum BHkv*C*L]
                self._cache[key] = (qi.to(device), ki.to(device))
        return self._cache[key]

    def sizes(self) -> PlanSizes:
        return PlanSizes.of(self.n, self.extras.numel(),
                            [(c.blocks, c.rows, c.cols, c.band_start is not None, 1) for c in self.light],
                            [(len(c.qrows), c.kend - c.kstart, 1) for c in self.dense])

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
