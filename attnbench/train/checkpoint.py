"""Checkpoints written atomically (a temporary file, fsync, rename): a kill at any moment leaves
either the previous checkpoint or the new one, never half of one.

A training checkpoint holds everything the next step depends on: model, optimizer and
scheduler states, the RNG states (python, numpy, torch: dropout draws from torch's), the
recurrent state carried between steps (segment memory), the best validation figure so far and
the curve. Batches are a function of (seed, step) (``attnbench.train.batches``), so no sampler
state is needed.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save(obj: Any, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def load(path: Path) -> Any:
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
