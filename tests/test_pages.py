"""engines/pages.py: large outputs advised onto huge pages; the advice changes page faults only."""
from __future__ import annotations

import resource
import sys

import pytest
import torch

from attnbench.engines import pages

MIB = 1 << 20
madvise_mode = pytest.mark.skipif(
    not sys.platform.startswith("linux") or pages.thp_mode() != "madvise",
    reason="needs Linux with transparent huge pages in 'madvise' mode")


@pytest.fixture
def thp(monkeypatch):
    """Set the THP mode pages.py sees (its libc lookup is cached per mode)."""
    def set_mode(mode):
        monkeypatch.setattr(pages, "thp_mode", lambda: mode)
        pages._madvise.cache_clear()
    yield set_mode
    pages._madvise.cache_clear()


def faults_to_fill(make) -> int:
    """Minor page faults of this process while ``make()`` allocates a tensor and fills it."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    make().fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_empty_is_torch_empty_in_shape_dtype_and_use():
    t = pages.empty(3, 5, 7, dtype=torch.float64, device="cpu")
    assert t.shape == (3, 5, 7) and t.dtype == torch.float64 and t.is_contiguous()
    t.copy_(torch.arange(105.0).view(3, 5, 7))
    assert t.sum().item() == sum(range(105))


def test_small_and_non_cpu_blocks_get_no_advice(thp):
    thp("madvise")
    assert not pages.advise_huge(torch.empty(pages.MIN_BYTES // 4 - 1))  # one element short
    assert not pages.advise_huge(torch.empty(16 * MIB, device="meta"))


def test_no_advice_unless_thp_is_madvise(thp):
    for mode in ("never", "always", None):
        thp(mode)
        assert not pages.advise_huge(torch.empty(16 * MIB // 4))


@madvise_mode
def test_advised_block_faults_far_fewer_pages(thp):
    """A fresh 48 MiB block (above glibc's 32 MiB mmap threshold, so a new mapping each time):
    12288 faults of 4 KiB plain; advised, 2 MiB at a time (a few 4 KiB faults at its unaligned
    ends)."""
    thp("madvise")
    shape = (48 * MIB // 4,)
    plain = faults_to_fill(lambda: torch.empty(shape))
    advised = faults_to_fill(lambda: pages.empty(*shape, dtype=torch.float32, device="cpu"))
    assert plain >= 48 * MIB // 4096 * 0.9
    assert advised < plain / 20, (advised, plain)


@madvise_mode
def test_kernel_outputs_are_advised(thp):
    """A band kernel's 32 MiB output (n = 16384, H = 8, D = 64) costs far fewer faults than the
    same output allocated plainly would (its chunk buffers are reused: a few MiB)."""
    from attnbench import get

    thp("madvise")
    q, k, v = (torch.randn(1, 8, 16384, 64) for _ in range(3))
    kernel = get("block_local@blocked")
    with torch.inference_mode():
        kernel(q, k, v)  # plans and masks cached
        faults = faults_to_fill(lambda: kernel(q, k, v).out)
    assert faults < 32 * MIB // 4096 / 4, faults
