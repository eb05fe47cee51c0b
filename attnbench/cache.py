"""Constants that kernels build once and keep between calls (plans, masks, tables).

They must never be inference tensors: a forward under ``torch.inference_mode`` may build what a
later autograd call reuses, and an inference tensor cannot be saved for backward.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch


@contextlib.contextmanager
def building() -> Iterator[None]:
    """Inside: outside inference mode and without autograd recording."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def normal_tensors(fn):
    """Decorator: ``fn`` runs inside :func:`building`."""
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        with building():
            return fn(*args, **kw)

    return wrapper
