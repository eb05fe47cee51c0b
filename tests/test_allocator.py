"""The allocator run option: names, refusals, what a worker starts with, and that ``mimalloc``
really keeps freed blocks (page faults counted, not timed)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from attnbench.bench import stored_grids
from attnbench.config import ConfigError, compose, validate
from attnbench.harness import allocator
from attnbench.harness.isolate import child_env

# A child that fills a 64 MiB tensor twice (freed in between) and prints the minor page faults
# of the second fill: fresh mappings fault every 4 KiB page again, a kept heap block does not.
FAULTS = """
import resource, torch
def fill():
    t = torch.empty(16 * 1024 * 1024)
    t.fill_(1.0)
    return float(t[-1])
fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_64MIB = 64 * 1024 * 1024 // 4096


def _child(code: str, allocator_name: str) -> int:
    """The integer a child process prints, started as a worker is under ``allocator_name``."""
    out = subprocess.run([sys.executable, "-c", code], env=child_env(1, allocator_name), capture_output=True,
                         text=True, timeout=120, check=True)
    return int(out.stdout.strip())


def test_unknown_allocator_names_value_and_choices():
    with pytest.raises(allocator.AllocatorError, match=r"--allocator 'jemalloc': allowed: default, thp, mimalloc"):
        allocator.allocator_env("jemalloc")


def test_thp_refused_where_the_kernel_disables_it():
    with pytest.raises(allocator.AllocatorError, match="never"):
        allocator.allocator_env("thp", thp="never")
    assert allocator.allocator_env("thp", thp="madvise") == {"THP_MEM_ALLOC_ENABLE": "1"}


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert allocator.thp_mode(f) == "madvise"
    assert allocator.thp_mode(tmp_path / "missing") is None


def test_mimalloc_is_preloaded_before_the_users_preloads(monkeypatch, tmp_path):
    lib = tmp_path / "libmimalloc.so"
    monkeypatch.setattr(allocator, "mimalloc_library", lambda: lib)
    monkeypatch.setenv("LD_PRELOAD", "/opt/mine.so")
    env = allocator.allocator_env("mimalloc")
    assert env["LD_PRELOAD"] == f"{lib}:/opt/mine.so" and env["MIMALLOC_PURGE_DELAY"] == "60000"


def test_mimalloc_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(allocator, "mimalloc_library", lambda: None)
    with pytest.raises(allocator.AllocatorError, match=r"cmeel-mimalloc package is not installed; pip install"):
        allocator.allocator_env("mimalloc")


def test_the_installed_wheel_provides_the_library():
    lib = allocator.mimalloc_library()
    assert lib is not None and lib.is_file(), "make install installs the alloc extra (cmeel-mimalloc)"


def test_child_env_carries_the_allocator():
    env = child_env(1, "mimalloc")
    assert "libmimalloc" in env["LD_PRELOAD"] and env["PYTHONUNBUFFERED"] == "1"


def test_config_checks_and_records_the_allocator():
    with pytest.raises(ConfigError, match=r"--allocator 'tcmalloc': allowed: default, thp, mimalloc"):
        validate(compose(["allocator=tcmalloc", "variants=full@sdpa"]))
    cfg = validate(compose(["allocator=mimalloc", "variants=full@sdpa"]))
    assert cfg.allocator == "mimalloc" and cfg.grid()["allocator"] == "mimalloc"
    assert validate(compose(["variants=full@sdpa"])).grid()["allocator"] == "default"


def test_runs_before_the_option_resume_as_default_allocator():
    old = {"grids": [{"grid": {"seq_lens": [64], "threads": 1}}]}
    assert stored_grids(old)[0]["allocator"] == "default"
    older = {"config": {"batch": 1, "resolved": {"seq_lens": [64]}}}
    assert stored_grids(older)[0]["allocator"] == "default"


def test_mimalloc_reuses_freed_blocks_and_default_faults_them_again():
    fresh = _child(FAULTS, "default")
    kept = _child(FAULTS, "mimalloc")
    assert fresh > PAGES_64MIB // 2, json.dumps({"default": fresh})  # every page of a new mapping
    assert kept < PAGES_64MIB // 20, json.dumps({"mimalloc": kept})  # the kept block comes back faulted in


PEAK = """
import torch
from attnbench.harness import memory
def f():
    t = torch.empty(16 * 1024 * 1024)
    t.fill_(1.0)
    return float(t[-1])
f()
print(memory.cpu_peak_bytes(f))
"""


def test_memory_pass_sees_the_peak_under_the_caching_allocator():
    peak = _child(PEAK, "mimalloc")
    assert 60 * 2**20 < peak < 70 * 2**20, peak  # the 64 MiB buffer, although its pages were kept
