"""The CPU memory allocator a measuring worker runs under: a recorded run option (``--allocator``).

Why it matters: PyTorch's CPU tensors come from glibc ``malloc``, which serves every block
above its mmap threshold (at most 32 MiB on 64-bit Linux) with a fresh ``mmap`` and returns it
with ``munmap`` on free. A kernel whose temporaries exceed that size page-faults every page of
them on every call: 4 KiB at a time, zero-filled by the kernel. At n = 16384 (B=1, H=8, D=64,
fp32) one [B, H, n, 256] buffer is 128 MiB, 32768 faults per call: on the 2-core machines this
suite was built on, a 128 MiB fill takes ~105 ms fresh, ~57 ms on huge pages and ~32 ms reused
(the three settings below, in that order), enough to lift a linear kernel's time exponent from ~1.0 to ~1.5.

Settings (environment variables the worker starts with; the loader, glibc and c10 read them at
startup):

* ``default``: the machine's allocator as it is. The suite's kernels are built to be fast here:
  no fresh large temporaries in their hot paths, and their large outputs (fresh memory by
  nature) advised onto huge pages where THP is ``madvise`` (``attnbench/engines/pages.py``).
* ``thp``: ``THP_MEM_ALLOC_ENABLE=1``: PyTorch aligns large CPU tensors to 2 MiB and asks for
  transparent huge pages (``madvise``): 512x fewer faults. Needs THP not set to ``never``.
* ``mimalloc``: a caching allocator: Microsoft's mimalloc (the ``cmeel-mimalloc`` wheel, the
  ``alloc`` extra) preloaded in place of glibc's malloc, with ``MIMALLOC_PURGE_DELAY=60000``:
  freed memory is kept for a minute and handed out again, already faulted in, so a buffer freed
  by one call costs the next call nothing. The memory pass first forces it back to the OS
  (``mi_collect``, :mod:`attnbench.harness.memory`), so peaks stay exact.

glibc alone offers no such setting: with ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0`` large blocks
come from the heap, but a freed 64 MiB block is not reused by the next 64-byte-aligned request
of the same size (the heap grows by 64 MiB per call, every page faulted anew; measured with
``ru_minflt``), so it is not offered.

The worker's peak-memory pass measures the high-water mark above its baseline, whatever the
allocator.
"""
from __future__ import annotations

import os
from pathlib import Path

THP_SYSFS = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MIMALLOC_DIST = "cmeel-mimalloc"
MIMALLOC_HINT = "pip install 'attnbench[alloc]' (the cmeel-mimalloc wheel; make install includes it)"

ALLOCATORS: dict[str, dict[str, str]] = {
    "default": {},
    "thp": {"THP_MEM_ALLOC_ENABLE": "1"},
    # freed memory kept for a minute (-1, "forever", would also ignore the memory pass's forced
    # collect); + LD_PRELOAD of the library, found at run time
    "mimalloc": {"MIMALLOC_PURGE_DELAY": "60000"},
}
DEFAULT = "default"


class AllocatorError(ValueError):
    """An allocator name not known, or one this machine cannot provide; one line."""


def thp_mode(path: Path = THP_SYSFS) -> str | None:
    """The kernel's transparent-huge-page mode (always | madvise | never), None where unknown."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def mimalloc_library() -> Path | None:
    """The installed ``libmimalloc.so`` of the cmeel-mimalloc wheel, None when not installed."""
    from importlib import metadata

    try:
        dist = metadata.distribution(MIMALLOC_DIST)
    except metadata.PackageNotFoundError:
        return None
    libs = [f for f in dist.files or () if f.name == "libmimalloc.so"]
    return Path(dist.locate_file(libs[0])).resolve() if libs else None


def allocator_env(name: str, thp: str | None = "probe") -> dict[str, str]:
    """The environment variables that select allocator ``name`` (merged into the worker's).

    ``thp``: the machine's THP mode (``"probe"`` reads sysfs); ``thp`` is refused when it is
    ``never`` (PyTorch's madvise would be ignored and the run would not be what it says);
    ``mimalloc`` when its wheel is not installed."""
    if name not in ALLOCATORS:
        raise AllocatorError(f"--allocator {name!r}: allowed: {', '.join(ALLOCATORS)}")
    env = dict(ALLOCATORS[name])
    if name == "thp":
        mode = thp_mode() if thp == "probe" else thp
        if mode == "never":
            raise AllocatorError(f"--allocator thp: transparent huge pages are disabled on this machine "
                                 f"({THP_SYSFS}: never); allowed here: default, mimalloc")
    if name == "mimalloc":
        lib = mimalloc_library()
        if lib is None:
            raise AllocatorError(f"--allocator mimalloc: the {MIMALLOC_DIST} package is not installed; {MIMALLOC_HINT}")
        prior = os.environ.get("LD_PRELOAD")
        env["LD_PRELOAD"] = f"{lib}:{prior}" if prior else str(lib)
    return env
