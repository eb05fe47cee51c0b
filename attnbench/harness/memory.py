"""Peak memory of one call above the baseline once its inputs exist.

CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats`` — the allocator's exact tensor
bytes. CPU: the process's resident high-water mark (VmHWM) after resetting it through
``/proc/self/clear_refs``, minus the resident size just before the call. ``malloc_trim`` first
hands freed heap pages back to the OS, so earlier cases' garbage cannot hide this one's growth;
under a caching allocator preloaded in the worker (``--allocator mimalloc``), ``mi_collect(true)``
does the same for what it keeps (without it the kept memory would hide the call's peak).
"""
from __future__ import annotations

import ctypes
import gc
from typing import Callable


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def hwm_bytes() -> int:
    return _status_kb("VmHWM") * 1024


def reset_hwm() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline is merely less tight
        pass
    collect = getattr(ctypes.CDLL(None), "mi_collect", None)  # mimalloc, when preloaded
    if collect is not None:
        collect(ctypes.c_bool(True))


class Watermark:
    """Peak memory from now on above now: ``peak()`` after the work.

    CPU: freed heap handed back (``malloc_trim``), the resident size taken as the baseline and
    the high-water mark reset; ``peak()`` = VmHWM - baseline. CUDA: allocated bytes as the
    baseline after ``reset_peak_memory_stats``; ``peak()`` = max_memory_allocated - baseline.
    """

    def __init__(self, device: str = "cpu"):
        self.device = device
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(device)
            self.base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            _trim()
            self.base = rss_bytes()
            reset_hwm()

    def peak(self) -> int:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            return max(0, torch.cuda.max_memory_allocated(self.device) - self.base)
        return max(0, hwm_bytes() - self.base)


def peak_bytes(fn: Callable[[], object], device: str = "cpu") -> int:
    """Bytes the process grew to during ``fn()`` above its size before it."""
    mark = Watermark(device)
    out = fn()
    peak = mark.peak()
    del out
    return peak


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Bytes the process's resident set grew to during ``fn()`` above its size before it."""
    return peak_bytes(fn, "cpu")


def cuda_peak_bytes(fn: Callable[[], object], device: str = "cuda") -> int:
    """Allocator bytes at peak during ``fn()`` above those allocated before it (exact)."""
    return peak_bytes(fn, device)
