"""Large outputs on huge pages: ``empty`` is ``torch.empty`` that asks Linux to back a large CPU
block with transparent huge pages (``madvise(MADV_HUGEPAGE)``) before anything touches it.

Why: a kernel's output must be fresh memory (it is returned), and glibc serves every block
above its mmap threshold (at most 32 MiB on 64-bit Linux: the [1, 8, 16384, 64] fp32 output of
every kernel at n = 16384) with a fresh ``mmap``. Its first write then faults once per 4 KiB
page, each page zero-filled by the kernel: on the 2-core AMD EPYC VM a fresh 32 MiB block takes
~20 ms to fill, against ~4 ms with this advice and ~2 ms for memory already faulted in — as
long as block_local@blocked's whole computation at that size. With the advice the kernel maps
2 MiB at a time: 512x fewer faults. The rest of the cost (zeroing the pages) stays.

This is the advice PyTorch gives every large CPU tensor under ``THP_MEM_ALLOC_ENABLE=1``
(``--allocator thp``), given here to the engines' outputs whatever the allocator: a user who
calls a kernel gets it too. Nothing changes where THP is ``never`` (or unknown), on other
platforms, off the CPU, or for blocks under ``MIN_BYTES`` (glibc reuses those from its heap).
The advice is a hint: if the kernel refuses it the block is an ordinary one, with the same
contents and the same resident size once written.
"""
from __future__ import annotations

import ctypes
import functools
import sys

import torch

from attnbench.harness.allocator import thp_mode

HUGE_PAGE = 2 << 20
MIN_BYTES = 8 << 20  # smaller blocks come from glibc's heap once the mmap threshold has adapted
MADV_HUGEPAGE = 14  # <sys/mman.h>


@functools.cache
def _madvise():
    """libc's madvise where huge pages are given on advice (THP ``madvise``), else None (THP
    ``always`` backs large blocks with them anyway; ``never`` refuses)."""
    if not sys.platform.startswith("linux") or thp_mode() != "madvise":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def advise_huge(t: torch.Tensor) -> bool:
    """Ask for huge pages under the whole 2 MiB-aligned part of ``t``'s storage; whether the
    advice was given and taken."""
    nbytes = t.untyped_storage().nbytes()
    if t.device.type != "cpu" or nbytes < MIN_BYTES:
        return False
    fn = _madvise()
    if fn is None:
        return False
    start = t.untyped_storage().data_ptr()
    lo = -(-start // HUGE_PAGE) * HUGE_PAGE
    hi = (start + nbytes) // HUGE_PAGE * HUGE_PAGE
    return hi > lo and fn(lo, hi - lo, MADV_HUGEPAGE) == 0


def empty(*shape: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.empty(shape)``, advised onto huge pages when large (see the module doc)."""
    t = torch.empty(shape, dtype=dtype, device=device)
    advise_huge(t)
    return t
