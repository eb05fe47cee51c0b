"""One model-level probe in its own process: ``python -m attnbench.modelbench.child JOB RESULT``.

Started by :mod:`attnbench.modelbench.isolate` in a process group of its own, with its thread
count in the environment (fixed before torch is imported). It reads the job (JSON), loads the
run's plugins, takes the memory baseline, applies the memory cap, runs :func:`probe.run` and
writes the result (JSON, atomically). A death (the kernel's OOM killer, a segfault) or a timeout
leaves no result, and the parent writes the row.

What "out of memory at budget B" means (``mem_cap_bytes`` = B):

* the measure: ``peak_mem_bytes``, the resident high-water mark (CUDA: max allocated) of the
  first two training steps above the process before the model was built. A probe whose peak
  exceeds B is ``oom`` at B, with the peak in its reason;
* the guard, so that a probe far beyond B fails instead of swapping the machine or waking the
  OOM killer: on CPU ``RLIMIT_AS`` = the address space at the baseline + B + ``slack`` (thread
  stacks and glibc's per-thread arenas reserve address space they never touch:
  :func:`virtual_slack`), so an allocation the guard refuses is above B resident too; on CUDA
  ``set_per_process_memory_fraction`` at (baseline + B) / the device's memory. An allocation
  refused by the guard is ``oom`` like a measured peak above B.
"""
from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

VIRTUAL_SLACK_BASE = 256 * 2**20  # address space reserved but not resident: measured ~60 MiB with 2 threads
VIRTUAL_SLACK_PER_THREAD = 80 * 2**20  # an OpenMP thread's stack (8 MiB) and a glibc arena (64 MiB reserved)


def virtual_slack(threads: int) -> int:
    """Address space a probe may reserve beyond its resident growth (RLIMIT_AS's allowance)."""
    return VIRTUAL_SLACK_BASE + VIRTUAL_SLACK_PER_THREAD * max(1, threads)


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmSize not in /proc/self/status")


def apply_cap(cap: int | None, device: str, threads: int) -> str | None:
    """Cap this process's memory at ``cap`` bytes above now (module docstring); how, or None."""
    if not cap:
        return None
    if device.startswith("cuda"):
        import torch

        total = torch.cuda.get_device_properties(device).total_memory
        base = torch.cuda.memory_allocated(device)
        torch.cuda.set_per_process_memory_fraction(min(1.0, (base + cap) / total), device)
        return "cuda_fraction"
    limit = _vm_size() + int(cap) + virtual_slack(threads)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return "rlimit_as"


def main() -> None:
    import ctypes
    import signal

    try:  # PR_SET_PDEATHSIG: die with the parent, even when it is killed with SIGKILL
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    job_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    job = json.loads(job_path.read_text())
    import faulthandler

    faulthandler.enable()  # a segfault's Python stack lands in the log, hence the row
    import torch

    threads = int(os.environ.get("ATTNBENCH_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    from attnbench.catalog import load_plugin
    from attnbench.harness import memory
    from attnbench.harness.env import device_environment
    from attnbench.harness.failures import classify
    from attnbench.modelbench import probe

    result: dict = {"status": "ok", "reasons": []}
    try:
        for p in job.get("plugins") or []:
            load_plugin(p)
        result["device_name"] = device_environment(job["device"]).get("device_name")
        probe.warm_up(job)
        base = memory.Watermark(job["device"])
        result["mem_cap"] = apply_cap(job.get("mem_cap_bytes"), job["device"], torch.get_num_threads())
        result.update(probe.run(job, base))
    except Exception as exc:  # noqa: BLE001 - every failure becomes the probe's row
        result["status"], result["reasons"] = classify(exc)
    over_budget(job.get("mem_cap_bytes"), result)
    result["threads"] = torch.get_num_threads()
    tmp = result_path.with_name(result_path.name + ".tmp")
    tmp.write_text(json.dumps(result, default=str))
    tmp.replace(result_path)


def over_budget(cap: int | None, result: dict) -> None:
    """A measured peak above the cap: oom at that budget (module docstring)."""
    peak = result.get("peak_mem_bytes")
    if cap and peak is not None and peak > cap and result["status"] == "ok":
        result["status"] = "oom"
        result["reasons"] = [f"peak memory {peak / 1e9:.2f} GB above the process's baseline exceeds the budget "
                             f"{cap / 1e9:.2f} GB (measured)"] + result["reasons"]
    elif result["status"] == "oom" and cap:
        result["reasons"] = [f"an allocation failed under the memory cap of {cap / 1e9:.2f} GB above the baseline "
                             f"(plus address-space slack)"] + result["reasons"]


if __name__ == "__main__":
    main()
