"""Shared pytest fixtures and hooks for the attnbench test suite.

* ``cuda``-marked tests are skipped, with a stated reason, where no CUDA device exists.
* ``clean_registry`` lets a test register variants (directly, from a plugin file or through an
  entry point) and removes everything it added afterwards, so tests cannot leak variants into
  each other or into ``names('all')``.
"""
from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnbench import catalog, registry


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


class RegistryView:
    """The registry (add, _REGISTRY, _CURRENT_SOURCE) and its loader (get, names, all_specs,
    load_plugin, load_entry_points) under one name, for tests that register variants."""

    add = staticmethod(registry.add)
    get = staticmethod(catalog.get)
    names = staticmethod(catalog.names)
    all_specs = staticmethod(catalog.all_specs)
    load_plugin = staticmethod(catalog.load_plugin)
    load_entry_points = staticmethod(catalog.load_entry_points)
    ENTRY_POINT_GROUP = catalog.ENTRY_POINT_GROUP

    @property
    def _REGISTRY(self):
        return registry._REGISTRY

    @property
    def _CURRENT_SOURCE(self):
        return registry._CURRENT_SOURCE


@contextlib.contextmanager
def registry_restored():
    """The registry (and plugin modules) as they were before the block, whatever it added.
    Builtins are loaded first, so that the snapshot holds them."""
    catalog.all_specs()  # load builtins and installed entry points before the snapshot
    before = dict(registry._REGISTRY)
    modules_before = set(sys.modules)
    try:
        yield
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(before)
        registry._CURRENT_SOURCE = "builtin"
        for name in set(sys.modules) - modules_before:
            if name.startswith("attnbench_plugin_") or name.startswith("fakepkg_attn"):
                del sys.modules[name]


@pytest.fixture
def clean_registry():
    """Snapshot the registry (and plugin modules); restore it after the test. Yields a
    :class:`RegistryView`: the test's own additions are the only difference."""
    with registry_restored():
        yield RegistryView()


@pytest.fixture
def cli_in_process(monkeypatch, capsys):
    """``python -m attnbench ARGS`` run in this process: ``cli_in_process(*args, cwd=dir)`` returns a
    ``CompletedProcess`` (returncode, stdout, stderr) from the ``main()`` that ``__main__`` calls.

    For the tables of refused commands (bad input is one line and an exit status): a fresh
    interpreter costs ~2 s of torch/hydra imports per case, so each table runs in process and
    keeps a few cases as real ``python -m attnbench`` processes. Each call runs in the given
    working directory, and what it registers (``--plugin``) is removed after it, as if each call
    were a process of its own.
    """
    from attnbench.cli import main

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        capsys.readouterr()  # what the test printed before is not the command's
        with registry_restored():
            status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["attnbench", *map(str, args)], status, out, err)

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished ``python -m attnbench run`` (a real process, its device probes included):
    full@naive at n=32 and xl@segment (not causal: a row that cannot run), 2 heads of 16, one
    thread, 0.01 s of timing. Shared by the modules that read a run (failure paths, run.json's
    probe fields): read it, or copy it to change it."""
    d = tmp_path_factory.mktemp("tiny_run")
    p = subprocess.run([sys.executable, "-m", "attnbench", "run", "--out", str(d / "run"), "--variants",
                        "full@naive,xl@segment", "--seq-lens", "32", "--threads", "1", "--heads", "2",
                        "--head-dim", "16", "timing.budget_s=0.01"],
                       cwd=d, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    return d / "run"


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module of small-shape tests: faster there, and a loaded 2-core
    machine cannot stall them (a 2-thread op waits whenever its second thread is descheduled)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def storages():
    """A dispatch mode that records every storage an aten op produces, once per storage (a view
    is no allocation): ``with storages() as rec: ...`` then ``rec.storages`` maps data_ptr ->
    (bytes, is floating point). For tests that a kernel allocates nothing of a given size."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Storages(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.storages = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    st = t.untyped_storage()
                    self.storages[st.data_ptr()] = (st.nbytes(), t.is_floating_point())
            return out

    return Storages
