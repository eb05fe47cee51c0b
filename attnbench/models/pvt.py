"""A PVT-style pyramid (Wang et al. 2021, PVT; 2022, PVTv2) over pixels.

    PVT  x [B, C*H*W] int64 pixels -> (logits [B, classes], None)   arch 'pvt', kind 'classify'

Every stage starts with its own patch embedding (stage 1: p x p stride p on the image; later:
2 x 2 stride 2 on the previous stage's map; each + LayerNorm), adds its own positions
(``cfg.positions``; PVT v1's per-stage tables), then runs pre-LN blocks whose attention is
spatial-reduction attention with the stage's ratio R (``cfg.stage_layout()['sr_ratios']``):

* ``sr='conv'`` (PVT v1, the paper's): each block's own R x R stride-R convolution + LayerNorm
  turns the normed tokens [B, h*w, C] into [B, (h/R)(w/R), C]; the K/V projections read those
  and the configured variant runs as cross attention, N queries against N / R^2 keys (a variant
  that cannot take N != M is refused with the registry's reason). At R = 1 it is
  self-attention on the stage's grid.
* ``sr='pool'`` (PVTv2's linear variant, parameter-free): no learned reduction; every variant
  self-attends over the stage's tokens; one that declares ``ratio`` (``sra``) average-pools its
  keys and values R x R over the grid itself. Full attention here is PVT without reduction.

A variant on the grid gets its stage's grid (``patches`` module docstring). The end: LayerNorm,
the mean over the last stage's tokens (PVTv2; PVT v1 read a CLS token there), a linear head.
Widths and heads double per stage (PVT-Tiny's 64, 128, 320, 512 are close to doubling).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from attnbench import catalog
from attnbench.models.attention import Skeleton, model_record, positions_used
from attnbench.models.config import ModelConfig
from attnbench.models.encoder import init_weights
from attnbench.models.patches import (GridBlock, PatchEmbed, block_params, images, no_weight_decay, stage_config,
                                      to_map)
from attnbench.models.positions import AbsolutePositions


class SpatialReduction(nn.Module):
    """PVT v1's: tokens [B, h*w, C] -> [B, (h/R)(w/R), C] by an R x R stride-R convolution, then
    LayerNorm (``Attention.sr`` and ``Attention.norm`` in PVT's code)."""

    def __init__(self, dim: int, ratio: int, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.conv = nn.Conv2d(dim, dim, kernel_size=ratio, stride=ratio)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.conv(to_map(x, self.grid))  # [B, C, h/R, w/R]
        return self.norm(m.flatten(2).transpose(1, 2))  # [B, (h/R)(w/R), C]


class Stage(nn.Module):
    """One pyramid level: patch embedding -> positions -> ``depth`` SR-attention blocks."""

    def __init__(self, cfg: ModelConfig, c_in: int, patch: int, grid: tuple[int, int], depth: int, ratio: int):
        super().__init__()
        spec = catalog.get(cfg.variant)
        self.grid = grid
        self.embed = PatchEmbed(c_in, cfg.d_model, patch, norm=True)
        self.pos = AbsolutePositions(positions_used(cfg, spec), grid[0] * grid[1], cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        conv = cfg.sr == "conv" and ratio > 1
        self.blocks = nn.ModuleList(
            GridBlock(cfg, grid, j, ratio=None if cfg.sr == "conv" else ratio,
                      reduce=SpatialReduction(cfg.d_model, ratio, grid) if conv else None)
            for j in range(depth))
        n = grid[0] * grid[1]
        self.case = (n, (grid[0] // ratio) * (grid[1] // ratio) if conv else n)  # (queries, keys)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.pos(self.embed(img)))  # [B, h*w, C]
        for block in self.blocks:
            h = block(h)
        return h  # [B, h*w, C]


class PVT(Skeleton):
    """x [B, C*H*W] pixels -> (logits [B, classes], None)."""

    def __init__(self, cfg: ModelConfig, *, device: str = "cpu", check: bool = True):
        super().__init__()
        cfg.validate()
        C, H, W = self.image = tuple(cfg.image)
        lay = cfg.stage_layout()
        p, grid, c_in = lay["patch"], (H // lay["patch"], W // lay["patch"]), C
        self.stages, stages = nn.ModuleList(), []
        for i, (depth, ratio) in enumerate(zip(lay["depths"], lay["sr_ratios"])):
            if min(grid) < (ratio if cfg.sr == "conv" else 1):  # the reduction needs R x R tokens
                raise ValueError(f"depths {lay['depths']} / sr_ratios {lay['sr_ratios']} not allowed with image "
                                 f"{C}x{H}x{W} and patch {lay['patch']}: stage {i + 1}'s grid is {grid[0]}x{grid[1]}; "
                                 f"allowed: fewer stages or smaller ratios (every grid at least R x R)")
            scfg = stage_config(cfg, i)
            self.stages.append(Stage(scfg, c_in, p, grid, depth, ratio))
            stages.append({"grid": list(grid), "dim": scfg.d_model, "heads": scfg.heads, "depth": depth,
                           "sr_ratio": ratio, "kv_tokens": self.stages[-1].case[1],
                           "block_params": block_params(self.stages[-1].blocks)})
            p, grid, c_in = 2, (grid[0] // 2, grid[1] // 2), scfg.d_model
        self.ln = nn.LayerNorm(c_in)
        self.head = nn.Linear(c_in, cfg.num_classes)
        self.apply(init_weights)
        if check:
            for stage in self.stages:
                for b in stage.blocks:
                    b.attn.require(*stage.case, device=device)
        self.record = model_record(cfg, False, arch="pvt", pool="mean", patch=lay["patch"], sr=cfg.sr, stages=stages)

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay(self)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, None]:
        m = images(x, self.image, self.stages[0].embed.proj.weight.dtype)  # [B, C, H, W]
        for stage in self.stages:
            t = stage(m)  # [B, n_i, C_i]
            m = to_map(t, stage.grid)  # [B, C_i, h_i, w_i]: what the next stage embeds
        return self.head(self.ln(t).mean(1)), None  # mean over tokens [B, C_last] -> [B, classes]
