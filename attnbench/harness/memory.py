"""Peak memory of one call above the baseline once its inputs exist.

CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats`` — the allocator's exact tensor
bytes. CPU: the process's resident high-water mark (VmHWM) after resetting it through
``/proc/self/clear_refs``, minus the resident size just before the call. ``malloc_trim`` first
hands freed heap pages back to the OS, so earlier cases' garbage cannot hide this one's growth.
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


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Bytes the process's resident set grew to during ``fn()`` above its size before it."""
    _trim()
    base = rss_bytes()
    reset_hwm()
    out = fn()
    peak = hwm_bytes()
    del out
    return max(0, peak - base)


def cuda_peak_bytes(fn: Callable[[], object], device: str = "cuda") -> int:
    """Allocator bytes at peak during ``fn()`` above those allocated before it (exact)."""
    import torch

    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return max(0, peak - base)


def peak_bytes(fn: Callable[[], object], device: str = "cpu") -> int:
    return cuda_peak_bytes(fn, device) if device.startswith("cuda") else cpu_peak_bytes(fn)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_MMAP_MAX_DEFAULT = 65536
_NO_TRIM = 2**31 - 1  # mallopt takes an int: 2 GiB of free heap top kept


def _mallopt(param: int, value: int) -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(ctypes.c_int(param), ctypes.c_int(min(value, 2**31 - 1))))
    except (OSError, AttributeError):
        return False


class cached_cpu_allocations:
    """Context: glibc keeps freed memory for reuse, as PyTorch's CUDA caching allocator does.

    By default glibc serves each block over 32 MiB with a fresh ``mmap`` and unmaps it on free,
    so every large output of every timed call page-faults (and zero-fills) afresh: at n = 16384
    that was over half of linear attention's forward time and bent every O(n) kernel's slope up
    past the 32 MiB step. Inside this context no block is mmapped and the heap is never trimmed,
    so repeated calls reuse warm pages. The timing pass runs inside it; the memory pass runs
    before it with default settings, and leaving it trims the heap again.
    ``active`` says whether the allocator accepted the settings (glibc only).
    """

    def __enter__(self):
        self.active = _mallopt(_M_MMAP_MAX, 0) and _mallopt(_M_TRIM_THRESHOLD, _NO_TRIM)
        return self

    def __exit__(self, *exc):
        _mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX_DEFAULT)
        _mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
        _trim()
        return False
