"""Mean attention distance (ViT, Dosovitskiy et al. 2021; Raghu et al. 2021).

Our definitions, per head:

* ``distance``: Σ_j A_ij ‖pos_i − pos_j‖ (Euclidean; |i − j| on a sequence) in token or patch
  units, averaged over the batch and the rows.
* ``distance_px``: the same times ``LayerAttention.pixels`` (the pixel side of one unit), as ViT
  reports it; only when the layer has pixels.
* Prefix tokens (CLS, DeiT's distillation token) have no position. As in ViT / Raghu et al.,
  their rows and key columns are dropped and each remaining row is renormalized over the
  non-prefix keys (a row left with no mass is excluded). ``prefix_mass`` reports what was
  dropped: the mean mass the non-prefix rows put on the prefix keys (only with a key prefix).

Distances come from ``torch.cdist`` on the positions ([N, M], never [N, M, P]), without its
matrix-product shortcut, so that a token's distance to itself is exactly 0.
"""
from __future__ import annotations

import torch

from attnbench.stats.base import Result, Sample, statistic
from attnbench.stats.reduce import row_mean


@statistic("distance", needs=("weights", "positions"),
           doc="mean attention distance in tokens/patches (and pixels), prefix tokens dropped")
def distance(s: Sample) -> Result:
    a = s.attn
    qp, kp = a.query_prefix, a.key_prefix
    qpos = a.query_pos[qp:].to(torch.float64)  # [N', P]
    kpos = a.key_pos[kp:].to(torch.float64)  # [M', P]
    d = torch.cdist(qpos, kpos, compute_mode="donot_use_mm_for_euclid_dist")  # [N', M']
    rows = a.weights[:, :, qp:, :]  # [B, H, N', M]: the rows of positioned queries
    body = rows[..., kp:]  # [B, H, N', M']: their mass on positioned keys
    mass = body.sum(dim=-1)  # [B, H, N']
    per_row = (body * d).sum(dim=-1) / mass  # [B, H, N'], renormalized over positioned keys
    values = {"distance": row_mean(per_row, mass > 0)}
    if a.pixels is not None:
        values["distance_px"] = values["distance"] * a.pixels
    if kp > 0:
        on_prefix = rows[..., :kp].sum(dim=-1)  # [B, H, N']
        values["prefix_mass"] = row_mean(on_prefix, rows.sum(dim=-1) > 0)
    return Result(values=values)
