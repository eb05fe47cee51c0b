"""ViT (Dosovitskiy et al. 2021) and DeiT's distillation token (Touvron et al. 2021), over pixels.

    ViT  x [B, C*H*W] int64 pixels -> (logits [B, classes], None)   arch 'vit', kind 'classify'

The image is cut into p x p patches by a strided convolution (``patches.PatchEmbed``), giving an
(H/p) x (W/p) grid of tokens in raster order; a CLS token (``pool='cls'``) and, with ``distill``,
DeiT's distillation token are prepended; positions (``cfg.positions``) are added or rotated in;
``layers`` pre-LN blocks; a final LayerNorm; a linear head on the CLS token or on the mean of
the patch tokens (``pool='mean'``, as Beyer et al. 2022's "better plain ViT baselines").

**2-D variants.** A variant that attends over a token grid (it declares ``grid``: swin, sra)
sees the patch tokens only, on their grid: there is no place on a grid for CLS or distillation
tokens, so such a variant needs ``pool='mean'`` (with ``pool='cls'`` it is refused with that
reason, a row, rather than given a different skeleton than the others). A 1-D variant sees the
prefix tokens and the patches as one sequence.

**DeiT.** With ``distill`` the model has a second linear head. With ``pool='cls'`` it reads the
distillation token (DeiT); with ``pool='mean'`` both heads read the mean-pooled patches (DeiT's
hard distillation on one representation). Training: 0.5 CE(cls head, y) + 0.5 CE(dist head,
teacher's argmax) (``attnbench.train.distill``), with :meth:`ViT.heads`; ``forward`` returns
the mean of the two heads' logits, DeiT's (and timm's) prediction.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from attnbench import catalog
from attnbench.case import Unsupported
from attnbench.models.attention import Skeleton, model_record, positions_used, takes_grid
from attnbench.models.config import ModelConfig
from attnbench.models.encoder import init_weights
from attnbench.models.patches import GridBlock, PatchEmbed, images, no_weight_decay
from attnbench.models.positions import AbsolutePositions


class ViT(Skeleton):
    """x [B, C*H*W] pixels -> (logits [B, classes], None); DeiT with ``cfg.distill``."""

    def __init__(self, cfg: ModelConfig, *, device: str = "cpu", check: bool = True):
        super().__init__()
        cfg.validate()
        spec = catalog.get(cfg.variant)
        C, H, W = self.image = tuple(cfg.image)
        p = cfg.stage_layout()["patch"]
        self.grid = (H // p, W // p)
        n = self.grid[0] * self.grid[1]
        on_grid = takes_grid(spec)
        if on_grid and cfg.pool == "cls":
            raise Unsupported(f"{spec.name} attends over the {self.grid[0]}x{self.grid[1]} patch grid only: no CLS "
                              f"or distillation token fits on it; give every variant model.pool=mean")
        self.cls, self.distill = cfg.pool == "cls", cfg.distill
        self.prefix = int(self.cls) * (1 + int(cfg.distill))  # CLS (+ distillation) tokens
        self.embed = PatchEmbed(C, cfg.d_model, p, norm=False)
        self.tokens = nn.Parameter(torch.zeros(1, self.prefix, cfg.d_model)) if self.prefix else None  # [1, P, C]
        self.pos = AbsolutePositions(positions_used(cfg, spec), self.prefix + n, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(GridBlock(cfg, self.grid if on_grid else None, i) for i in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)
        self.head_dist = nn.Linear(cfg.d_model, cfg.num_classes) if cfg.distill else None
        self.apply(init_weights)
        if self.tokens is not None:
            nn.init.trunc_normal_(self.tokens, std=0.02)
        if check:
            for b in self.blocks:
                b.attn.require(self.prefix + n, self.prefix + n, device=device)
        self.record = model_record(cfg, False, arch="vit", pool=cfg.pool, patch=p, grid=list(self.grid),
                                   tokens=self.prefix + n, distill=cfg.distill,
                                   distill_token=cfg.distill and self.cls, on_grid=on_grid)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(what the class head reads [B, C], what the distillation head reads [B, C] or None)."""
        h = self.embed(images(x, self.image, self.embed.proj.weight.dtype))  # [B, n, C]
        if self.tokens is not None:
            h = torch.cat([self.tokens.expand(h.shape[0], -1, -1), h], 1)  # [B, P + n, C]
        h = self.drop(self.pos(h))
        for block in self.blocks:
            h = block(h)
        h = self.ln(h)  # [B, P + n, C]
        if self.cls:
            return h[:, 0], (h[:, 1] if self.distill else None)  # CLS, distillation token
        m = h.mean(1)  # [B, C]
        return m, m

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DeiT's two heads: (class logits [B, K], distillation logits [B, K])."""
        if self.head_dist is None:
            raise ValueError("heads() needs distill: true (DeiT's distillation head); allowed: model.distill=true")
        a, b = self.features(x)
        return self.head(a), self.head_dist(b)

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay(self)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, None]:
        if self.head_dist is None:
            return self.head(self.features(x)[0]), None
        c, d = self.heads(x)
        return (c + d) / 2, None  # DeiT's prediction: the mean of both heads
