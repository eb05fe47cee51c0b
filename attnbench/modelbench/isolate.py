"""One probe, one fresh process, one deadline: a failure costs only its own row.

Every probe gets a new ``python -m attnbench.modelbench.child`` in a process group of its own
(a model probe's memory cap and baseline are per process, and a fresh process is the cleanest
baseline). The parent waits with a wall-clock limit and on timeout kills the whole group; a
process that dies without a result (segfault, abort, the kernel's OOM killer) becomes a row
whose reason names the signal and the tail of its log. Ctrl-C kills the child's group before it
reaches the caller, so nothing outlives an interrupted run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from attnbench.harness.isolate import PACKAGE_ROOT
from attnbench.harness.isolate import child_env as worker_env

POLL_S = 0.1
LOG_TAIL = 600  # characters of a dead probe's log quoted in its row


def child_env(threads: int) -> dict[str, str]:
    """The harness's child environment, with this package importable from any working directory."""
    env = worker_env(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    return env


def _tail(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").strip().splitlines() if "XFORMERS" not in ln]
    except OSError:
        return ""
    return " | ".join(lines[-6:])[-LOG_TAIL:]


def _death(rc: int, log: Path) -> dict[str, Any]:
    tail = _tail(log)
    if rc < 0:
        sig = signal.Signals(-rc).name
        if sig == "SIGKILL":  # we kill only on timeout, and say so there
            return {"status": "oom", "reasons": [f"probe process killed by SIGKILL (likely the kernel's OOM killer); "
                                                 f"log: {tail}"]}
        return {"status": "crash", "reasons": [f"probe process died with {sig}; log: {tail}"]}
    return {"status": "crash", "reasons": [f"probe process exited with code {rc} without a result; log: {tail}"]}


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_probe(job: dict[str, Any], *, timeout_s: float, threads: int) -> dict[str, Any]:
    """The child's result for ``job`` (status, reasons, measured fields), or a timeout / death row's
    fields; ``probe_wall_s`` always."""
    with tempfile.TemporaryDirectory(prefix="attnbench-model-") as d:
        job_path, result_path, log = Path(d) / "job.json", Path(d) / "result.json", Path(d) / "log.txt"
        job_path.write_text(json.dumps(job, default=str))
        t0 = time.perf_counter()
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "attnbench.modelbench.child", str(job_path),
                                     str(result_path)], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=child_env(threads))
        res = _wait(proc, timeout_s, result_path, log)
        res["probe_wall_s"] = time.perf_counter() - t0
        return res


def _wait(proc: subprocess.Popen, timeout_s: float, result_path: Path, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                _kill(proc)
                return {"status": "timeout", "reasons": [f"exceeded the wall-clock limit of {timeout_s:g} s per probe "
                                                         f"(--timeout); probe process killed"]}
            time.sleep(POLL_S)
    except BaseException:  # Ctrl-C: nothing outlives the parent
        _kill(proc)
        raise
    if proc.returncode == 0 and result_path.is_file():
        return json.loads(result_path.read_text())
    return _death(proc.returncode, log)
