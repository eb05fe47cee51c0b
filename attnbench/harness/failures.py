"""How an exception becomes a row: (status, reasons)."""
from __future__ import annotations

import traceback

import torch

from attnbench.case import Unsupported
from attnbench.params import ParamError

OOM_MARKERS = ("out of memory", "can't allocate memory", "DefaultCPUAllocator", "not enough memory")


def classify(exc: BaseException) -> tuple[str, list[str]]:
    """Map an exception to (status, reasons): unsupported, oom or error (with where it was raised)."""
    msg = " ".join(str(exc).split())[:2000]
    if isinstance(exc, (Unsupported, ParamError)):
        return "unsupported", [msg]
    if isinstance(exc, MemoryError) or isinstance(exc, getattr(torch, "OutOfMemoryError", ())) \
            or any(m in msg for m in OOM_MARKERS):
        return "oom", [f"{type(exc).__name__}: {msg}"]
    where = traceback.extract_tb(exc.__traceback__)
    at = f" (at {where[-1].filename}:{where[-1].lineno})" if where else ""
    return "error", [f"{type(exc).__name__}: {msg}{at}"]
