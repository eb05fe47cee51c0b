"""A Swin-style hierarchy (Liu et al. 2021) over pixels.

    SwinNet  x [B, C*H*W] int64 pixels -> (logits [B, classes], None)   arch 'swin', kind 'classify'

Patch embedding (p x p stride-p convolution + LayerNorm) -> stages of pre-LN blocks on the
stage's h x w grid -> patch merging between stages (each 2 x 2 neighbourhood concatenated, 4C,
LayerNorm, Linear 4C -> 2C: the grid halves, the width doubles) -> LayerNorm, mean over tokens,
linear head. Widths and heads double per stage (``patches.stage_config``); blocks per stage and
the patch side come from ``cfg.stage_layout()``.

With a ``swin@*`` variant every block attends in M x M windows of its stage's grid, shift False
then True block after block (W-MSA, SW-MSA), with its own learned relative-position bias table
(``patches`` module docstring); M is the variant's ``window`` (the task's variant_params), shrunk
to the grid as Swin does. Any other variant attends over the stage's flattened tokens; absolute
positions (``cfg.positions``, Swin's optional ``ape``) are added after the patch embedding for
a variant without relative positions.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from attnbench import catalog
from attnbench.models.attention import Skeleton, model_record, positions_used
from attnbench.models.config import ModelConfig
from attnbench.models.encoder import init_weights
from attnbench.models.patches import GridBlock, PatchEmbed, block_params, images, no_weight_decay, stage_config
from attnbench.models.positions import AbsolutePositions


class PatchMerging(nn.Module):
    """Swin's: tokens [B, h*w, C] -> [B, ceil(h/2)*ceil(w/2), 2C] (an odd side padded with zeros)."""

    def __init__(self, dim: int, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def out_grid(self) -> tuple[int, int]:
        return (self.grid[0] + 1) // 2, (self.grid[1] + 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, C = x.shape
        h, w = self.grid
        x = x.view(B, h, w, C)  # [B, h, w, C]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))  # [B, h', w', C], even sides
        x0, x1, x2, x3 = x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]  # [B, h'/2, w'/2, C]
        x = torch.cat([x0, x1, x2, x3], -1)  # [B, h'/2, w'/2, 4C]: Swin's order
        x = x.view(B, -1, 4 * C)  # [B, h'/2 * w'/2, 4C]
        return self.reduction(self.norm(x))  # [B, h'/2 * w'/2, 2C]


class SwinNet(Skeleton):
    """x [B, C*H*W] pixels -> (logits [B, classes], None)."""

    def __init__(self, cfg: ModelConfig, *, device: str = "cpu", check: bool = True):
        super().__init__()
        cfg.validate()
        spec = catalog.get(cfg.variant)
        C, H, W = self.image = tuple(cfg.image)
        lay = cfg.stage_layout()
        grid = (H // lay["patch"], W // lay["patch"])
        self.embed = PatchEmbed(C, cfg.d_model, lay["patch"], norm=True)
        self.pos = AbsolutePositions(positions_used(cfg, spec), grid[0] * grid[1], cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.stages, self.merges, stages = nn.ModuleList(), nn.ModuleList(), []
        for i, depth in enumerate(lay["depths"]):
            scfg = stage_config(cfg, i)
            self.stages.append(nn.ModuleList(GridBlock(scfg, grid, j) for j in range(depth)))
            stages.append({"grid": list(grid), "dim": scfg.d_model, "heads": scfg.heads, "depth": depth,
                           "block_params": block_params(self.stages[-1])})
            if i + 1 < len(lay["depths"]):
                self.merges.append(PatchMerging(scfg.d_model, grid))
                grid = self.merges[-1].out_grid()
        self.ln = nn.LayerNorm(scfg.d_model)
        self.head = nn.Linear(scfg.d_model, cfg.num_classes)
        self.apply(init_weights)
        if check:
            for stage, s in zip(self.stages, stages):
                for b in stage:
                    b.attn.require(s["grid"][0] * s["grid"][1], s["grid"][0] * s["grid"][1], device=device)
        self.record = model_record(cfg, False, arch="swin", pool="mean", patch=lay["patch"], stages=stages)

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay(self)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, None]:
        h = self.embed(images(x, self.image, self.embed.proj.weight.dtype))  # [B, n, C]
        h = self.drop(self.pos(h))
        for i, stage in enumerate(self.stages):
            for block in stage:
                h = block(h)  # [B, n_i, C_i]
            if i < len(self.merges):
                h = self.merges[i](h)  # [B, n_i / 4, 2 C_i]
        return self.head(self.ln(h).mean(1)), None  # mean over tokens [B, C_last] -> [B, classes]
