"""What the vision skeletons (ViT, Swin, PVT) share: pixels to images, the patch embedding, the
pre-LN block on a token grid with its attention's per-block settings, the stage widths.

Conventions:

* **Inputs** are pixels as the data holds them (``attnbench.data.vision``): int64 0..255,
  x [B, C*H*W], channels first, each plane in raster order; ``cfg.image`` is (C, H, W). They are
  normalized as timm's ViT configs do, (x / 255 - 0.5) / 0.5 for every channel (timm's
  IMAGENET_INCEPTION_MEAN / STD), the same for every data set: no statistic is read from data.
* **Token grids** are raster order: token t of an h x w grid sits at row t // w, column t % w.
* **A variant on the grid.** A variant that declares a ``grid`` parameter (swin, sra) gets its
  stage's (h, w); one that declares ``shift`` gets False then True block after block (Swin's
  W-MSA then SW-MSA), one that declares ``ratio`` gets PVT's reduction of the stage (pool mode);
  every other variant attends over the flattened sequence (``attention.grid_params``).
* **Swin's bias table is learned.** A variant whose relative-position bias is Swin's table
  (``relative_positions`` and a ``window`` on a ``grid``) gets one table [H, (2M-1)^2] per block,
  M the window after Swin's shrink rule on that block's grid (``patterns.swin.swin_geometry``),
  initialised trunc-normal with std 0.02 as in Swin, passed to the kernel as ``bias_table`` and
  counted as the variant's own parameters (fairness).
* **Widths** double at every stage from ``d_model``, ``heads``, ``mlp`` (and ``kv_heads``):
  Swin's C, 2C, 4C, 8C, with the head dimension fixed.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from attnbench import catalog
from attnbench.models.attention import Attention, grid_params
from attnbench.models.config import ModelConfig
from attnbench.models.encoder import MLP
from attnbench.patterns.swin import swin_geometry
from attnbench.registry import VariantSpec

PIXEL_MEAN, PIXEL_STD = 0.5, 0.5  # timm's ViT normalization (IMAGENET_INCEPTION_MEAN / STD)
BIAS_STD = 0.02  # Swin's trunc_normal_(relative_position_bias_table, std=.02)


def images(x: torch.Tensor, image: tuple[int, int, int], dtype: torch.dtype) -> torch.Tensor:
    """Pixels int64 [B, C*H*W] -> normalized images [B, C, H, W] of ``dtype``."""
    C, H, W = image
    img = x.view(x.shape[0], C, H, W).to(dtype)  # [B, C, H, W]
    return (img / 255.0 - PIXEL_MEAN) / PIXEL_STD


def to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens [B, h*w, C] on an h x w grid -> a feature map [B, C, h, w]."""
    B, _, C = x.shape
    return x.transpose(1, 2).reshape(B, C, grid[0], grid[1])  # [B, C, h, w]


class PatchEmbed(nn.Module):
    """timm's PatchEmbed: a p x p stride-p convolution, map [B, C_in, H, W] -> tokens
    [B, (H/p)(W/p), dim] in raster order, then LayerNorm if ``norm`` (Swin, PVT; ViT has none)."""

    def __init__(self, c_in: int, dim: int, patch: int, norm: bool):
        super().__init__()
        self.proj = nn.Conv2d(c_in, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        t = self.proj(img)  # [B, dim, H/p, W/p]
        return self.norm(t.flatten(2).transpose(1, 2))  # [B, (H/p)(W/p), dim]


def stage_config(cfg: ModelConfig, stage: int) -> ModelConfig:
    """Stage ``stage`` (0-based): width, heads, MLP width (and K/V heads) times 2^stage."""
    f = 2 ** stage
    return replace(cfg, d_model=cfg.d_model * f, heads=cfg.heads * f, mlp=cfg.mlp * f,
                   kv_heads=cfg.kv_heads * f if cfg.kv_heads else None)


def learns_swin_bias(spec: VariantSpec) -> bool:
    """Whether the variant's relative-position bias is Swin's table (a window on a grid)."""
    return spec.relative_positions and {"window", "grid"} <= set(spec.params)


def swin_bias(spec: VariantSpec, params: dict, heads: int) -> dict[str, torch.Tensor]:
    """{"bias_table": [heads, (2M-1)^2]} for a Swin-like variant with resolved ``params`` (its grid
    set), else {}: M is the window after Swin's shrink rule on that grid."""
    if not learns_swin_bias(spec):
        return {}
    g = params["grid"]
    win = swin_geometry(g[0] * g[1], params)["win"]
    table = torch.empty(heads, (2 * win - 1) ** 2)
    nn.init.trunc_normal_(table, std=BIAS_STD)
    return {"bias_table": table}


def no_weight_decay(model: nn.Module) -> set[str]:
    """timm's ``no_weight_decay``: the parameters AdamW does not decay in these models (the CLS and
    distillation tokens, position tables, Swin's bias tables), as ViT, DeiT and Swin exclude them."""
    return {n for n, _ in model.named_parameters() if n.endswith(("tokens", "pos.table", "bias_table"))}


def block_params(blocks) -> list[dict]:
    """What each block adds to the variant's params (grid, shift, ratio), for the model's record."""
    return [{k: list(v) if isinstance(v, tuple) else v for k, v in b.own.items()} for b in blocks]


class GridBlock(nn.Module):
    """Pre-LN block on an h x w token grid: x + attn(ln(x)), then x + mlp(ln(x)).

    ``index``: the block's place in its stage (Swin's shift alternates with it); ``ratio``: PVT's
    reduction handed to a variant that declares one; ``reduce``: a module making the keys' tokens
    [B, M, C] from the normed tokens (PVT's learned spatial reduction), else self-attention.
    ``grid`` None: the variant sees the flattened sequence whatever it declares (ViT's prefix tokens).
    """

    def __init__(self, cfg: ModelConfig, grid: tuple[int, int] | None, index: int, *,
                 ratio: int | None = None, reduce: nn.Module | None = None):
        super().__init__()
        spec = catalog.get(cfg.variant)
        self.own = own = grid_params(spec, grid, index, ratio) if grid is not None else {}
        params = spec.resolve_params({**cfg.params, **own})
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.reduce = reduce
        self.attn = Attention(cfg, causal=False, params=own, extra=swin_bias(spec, params, cfg.heads) if own else {})
        self.drop = nn.Dropout(cfg.dropout)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)  # [B, N, C]
        ctx = self.reduce(h) if self.reduce is not None else None  # [B, M, C] or None
        a, _ = self.attn(h, context=ctx)
        x = x + self.drop(a)
        return x + self.mlp(self.ln2(x))  # [B, N, C]
