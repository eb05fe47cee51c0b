"""Where each attention layer's queries and keys sit, and the layers of a model captured on a batch.

:func:`geometry` reads a skeleton's record (``attnbench.models``) and says, per attention module
in ``model.attentions()`` order, where its queries and keys are:

* encoders and LMs: token positions 0..N-1 on a line; with ``pool='cls'`` the CLS token is
  prepended (query and key 0) and has no position;
* ViT: the patch grid in raster order in patch units, one patch = ``patch`` pixels; the CLS (and
  DeiT's distillation) tokens come first, without a position; a variant on the grid (swin, sra)
  sees the patches only;
* Swin: each stage's grid; a stage-s token spans patch x 2^s pixels;
* PVT: each stage's grid as Swin; with ``sr='conv'`` and R > 1 the keys are the R x R cells of
  the learned reduction, placed at their cells' centres.

:func:`capture` runs the model once on inputs (no gradients, eval mode) and returns one
:class:`Layer` per attention module: its first call (a dual encoder's first tower, an LM's first
segment) with that geometry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attnbench.models.attention import Call


@dataclass
class Geometry:
    query_pos: torch.Tensor  # [N, P] float64, NaN rows for prefix tokens
    key_pos: torch.Tensor  # [M, P]
    prefix: int = 0  # leading tokens without a position (queries and keys alike)
    pixels: float | None = None  # pixel side of one position unit (images)
    grid: tuple[int, int] | None = None  # the query grid (images)
    stage: int = 0


@dataclass
class Layer:
    index: int
    call: Call
    geometry: Geometry


def line(n: int, prefix: int = 0) -> torch.Tensor:
    """Positions [n, 1] of a sequence whose first ``prefix`` tokens have none (NaN)."""
    pos = torch.arange(n, dtype=torch.float64) - prefix  # [n]
    pos[:prefix] = float("nan")
    return pos.unsqueeze(1)


def raster(grid: tuple[int, int], prefix: int = 0, cell: int = 1) -> torch.Tensor:
    """(row, col) [prefix + h*w, 2] of an h x w grid in raster order, in units of the tokens the
    grid was reduced from (``cell`` > 1: centres of cell x cell blocks); prefix rows NaN."""
    h, w = grid
    r, c = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pos = torch.stack([r.reshape(-1), c.reshape(-1)], 1) * cell + (cell - 1) / 2  # [h*w, 2]
    return torch.cat([torch.full((prefix, 2), float("nan"), dtype=torch.float64), pos])


def _vit(record: dict[str, Any], layers: int) -> list[Geometry]:
    grid = tuple(record["grid"])
    prefix = 0 if record.get("on_grid") else int(record["tokens"]) - grid[0] * grid[1]
    pos = raster(grid, prefix)
    return [Geometry(pos, pos, prefix, float(record["patch"]), grid) for _ in range(layers)]


def _stages(record: dict[str, Any]) -> list[Geometry]:
    """Swin and PVT: a stage's grid per block, keys reduced by PVT's learned convolution."""
    out = []
    conv = record.get("sr") == "conv"
    for s, st in enumerate(record["stages"]):
        grid, ratio = tuple(st["grid"]), int(st.get("sr_ratio") or 1)
        q = raster(grid)
        k = raster((grid[0] // ratio, grid[1] // ratio), cell=ratio) if conv and ratio > 1 else q
        px = float(record["patch"]) * 2 ** s
        out += [Geometry(q, k, 0, px, grid, s) for _ in range(int(st["depth"]))]
    return out


def geometry(record: dict[str, Any], calls: list[Call]) -> list[Geometry]:
    """Per attention module, where its queries and keys sit (module docstring)."""
    arch = record.get("arch", "encoder")
    if arch == "vit":
        return _vit(record, len(calls))
    if arch in ("swin", "pvt"):
        return _stages(record)
    prefix = int(record.get("pool") == "cls")
    return [Geometry(line(c.q.shape[2], prefix), line(c.k.shape[2], prefix), prefix) for c in calls]


@torch.no_grad()
def capture(model: torch.nn.Module, x: torch.Tensor) -> list[Layer]:
    """Every attention layer of ``model`` on inputs ``x`` (module docstring)."""
    was = model.training
    model.eval()
    try:
        with model.capturing() as calls:
            model(x)
    finally:
        model.train(was)
    first = [c[0] for c in calls if c]
    if len(first) != len(calls):
        raise RuntimeError(f"{len(calls) - len(first)} of {len(calls)} attention layers were not called")
    geo = geometry(model.record, first)
    for c, g in zip(first, geo):
        if (g.query_pos.shape[0], g.key_pos.shape[0]) != (c.q.shape[2], c.k.shape[2]):
            raise RuntimeError(f"geometry of {model.record.get('arch')} gives {g.query_pos.shape[0]} x "
                               f"{g.key_pos.shape[0]} tokens, the call saw {c.q.shape[2]} x {c.k.shape[2]}")
    return [Layer(i, c, g) for i, (c, g) in enumerate(zip(first, geo))]
