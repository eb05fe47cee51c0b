"""DeiT's hard-label distillation (Touvron et al. 2021) from a teacher of an earlier ``train`` run.

``train.teacher`` names a job directory of an earlier run (``<run>/jobs/<job>``) or the
``best.pt`` in it. The job's ``job.json`` (written by :mod:`attnbench.train.runner`) holds the
teacher's variant, resolved params and task config; the trainer rebuilds that model against
this task's data, loads its best-validation weights and keeps it frozen in eval mode.

The student (a ViT with ``model.distill``) learns from

    loss = 0.5 CE(class head, y) + 0.5 CE(distillation head, argmax of the teacher's logits)

and predicts with the mean of its two heads' logits (``attnbench.models.vit``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

LAYOUT = "a job directory of an earlier `train` run (<run>/jobs/<job>, holding job.json and best.pt) or its best.pt"


class TeacherError(ValueError):
    """A teacher that cannot be used: one line naming the path and what is expected."""


@dataclass
class TeacherJob:
    path: str  # as given
    weights: Path  # its best.pt
    spec: dict[str, Any]  # its job.json: variant, params, seed, config


def read_teacher(path: str | Path) -> TeacherJob:
    """The teacher job at ``path`` (a job directory or its best.pt); TeacherError if missing."""
    p = Path(path)
    weights = p if p.suffix == ".pt" else p / "best.pt"
    if not weights.is_file():
        raise TeacherError(f"train.teacher {path}: {weights} missing; expected {LAYOUT}")
    job = weights.parent / "job.json"
    try:
        spec = json.loads(job.read_text())
    except (OSError, ValueError) as e:
        raise TeacherError(f"train.teacher {path}: {job} unreadable ({type(e).__name__}: {e}); "
                           f"expected {LAYOUT}") from None
    if not isinstance(spec, dict) or "variant" not in spec or "model" not in (spec.get("config") or {}):
        raise TeacherError(f"train.teacher {path}: {job} names no variant and model config; expected {LAYOUT}")
    return TeacherJob(str(path), weights, spec)


def load_weights(model: torch.nn.Module, teacher: TeacherJob) -> torch.nn.Module:
    """``model`` with the teacher's best weights, frozen, in eval mode."""
    try:
        model.load_state_dict(torch.load(teacher.weights, map_location="cpu", weights_only=False))
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise TeacherError(f"train.teacher {teacher.path}: its weights do not fit the model its job.json describes "
                           f"on this task's data ({first})") from None
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@torch.no_grad()
def hard_targets(teacher: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The teacher's predicted classes [B] for inputs ``x`` (DeiT's hard labels)."""
    logits, _ = teacher(x)  # [B, K]
    return logits.argmax(-1)


def loss(cls_logits: torch.Tensor, dist_logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """DeiT's hard distillation: 0.5 CE(class head, y) + 0.5 CE(distillation head, teacher's classes)."""
    return 0.5 * F.cross_entropy(cls_logits.float(), y) + 0.5 * F.cross_entropy(dist_logits.float(), targets)
