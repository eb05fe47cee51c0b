"""Isolated workers with a wall-clock limit: a failure costs only its own case.

Each worker is a fresh ``python -m attnbench.harness.worker`` in a new process group. The
parent sends a case, waits on the result pipe with a deadline, and on timeout kills the whole
group. A worker that dies (segfault, abort, the kernel's OOM killer) yields a row whose reason
names the signal and the tail of the worker's log; the next case gets a fresh worker. Ctrl-C
reaches only the parent (the worker has its own session); the parent then kills the worker's
group (``close``), so nothing outlives an interrupted run.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from attnbench.harness import allocator as allocator_mod
from attnbench.harness.env import inductor_cache_dir

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
POLL_S = 0.1  # the longest a wait on the worker goes without looking at pending signals


def child_env(threads: int, allocator: str = allocator_mod.DEFAULT) -> dict[str, str]:
    """The environment of a measuring child process: its thread count fixed before torch is
    imported (0: torch's default), its memory allocator (:mod:`attnbench.harness.allocator`),
    unbuffered output, inductor's cache kept between runs."""
    env = {**os.environ, **allocator_mod.allocator_env(allocator)}
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
        env["ATTNBENCH_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", inductor_cache_dir())  # compiled kernels kept between runs
    return env


class WorkerDied(Exception):
    def __init__(self, status: str, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.status, self.reasons = status, reasons


class Worker:
    """One worker process. ``request(msg, timeout)`` returns its reply or raises WorkerDied."""

    def __init__(self, *, threads: int = 0, plugins: tuple[str, ...] = (), start_timeout: float = 120,
                 allocator: str = allocator_mod.DEFAULT):
        env = child_env(threads, allocator)
        env["ATTNBENCH_PARENT_PID"] = str(os.getpid())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
        self.log = tempfile.NamedTemporaryFile(prefix="attnbench-worker-", suffix=".log", delete=False)
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "attnbench.harness.worker", str(w), *plugins],
            stdin=subprocess.PIPE, stdout=self.log, stderr=self.log, pass_fds=(w,),
            start_new_session=True, env=env, text=True,
        )
        os.close(w)
        self._r = r
        self._buf = b""
        self._killed_by_us = False
        try:
            self.ready = self._read(start_timeout)
        except BaseException:  # Ctrl-C while it starts, or it died: no process outlives this
            self.close()
            raise

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _log_tail(self, n: int = 600) -> str:
        try:
            text = Path(self.log.name).read_text(errors="replace")
        except OSError:
            return ""
        lines = [ln for ln in text.strip().splitlines() if "XFORMERS" not in ln]
        return " | ".join(lines[-6:])[-n:]

    def _read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise WorkerDied("timeout", [f"exceeded the wall-clock limit of {timeout:g} s; worker killed"])
            # slices of POLL_S: a Ctrl-C delivered to another thread of this process (rich's
            # refresh thread) does not interrupt this select; the main thread sees it on return
            ready, _, _ = select.select([self._r], [], [], min(left, POLL_S))
            if not ready:
                continue
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise self._death()
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _death(self) -> WorkerDied:
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.returncode
        tail = self._log_tail()
        if rc is not None and rc < 0:
            sig = signal.Signals(-rc).name
            if sig == "SIGKILL" and not self._killed_by_us:
                return WorkerDied("oom", [f"worker killed by SIGKILL (likely the kernel's OOM killer); log: {tail}"])
            return WorkerDied("crash", [f"worker died with {sig}; log: {tail}"])
        return WorkerDied("crash", [f"worker exited with code {rc}; log: {tail}"])

    def request(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        if not self.alive:
            raise self._death()
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._death() from None
        return self._read(timeout)

    def kill(self) -> None:
        if self.alive:
            self._killed_by_us = True
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """End the worker at once: it holds nothing to save, and a graceful interpreter and torch
        teardown (0.5 s of CPU) would overlap the next worker's timing."""
        self.kill()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        os.close(self._r)
        try:
            os.unlink(self.log.name)
        except OSError:
            pass

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
