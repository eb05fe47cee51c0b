"""Worker process: runs cases sent by the parent, one JSON line in, one JSON line out.

Started by :mod:`attnbench.harness.isolate` in its own process group with the thread count
already in its environment (so it is fixed before torch is imported). Results go to a
dedicated pipe, not stdout, so nothing a kernel prints can corrupt the protocol.
"""
from __future__ import annotations

import json
import os
import sys


def main() -> None:
    import ctypes
    import signal

    try:  # PR_SET_PDEATHSIG: die with the parent, even when it is killed with SIGKILL
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if str(os.getppid()) != os.environ.get("ATTNBENCH_PARENT_PID", str(os.getppid())):
        sys.exit(1)  # the parent died before prctl took effect
    import faulthandler

    faulthandler.enable()  # a segfault's Python stack lands in the worker log, hence the row
    result_fd = int(sys.argv[1])
    plugins = sys.argv[2:]
    out = os.fdopen(result_fd, "w", buffering=1)
    os.dup2(2, 1)  # stray prints from kernels go to the worker's log, not the protocol

    import torch

    threads = int(os.environ.get("ATTNBENCH_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    from attnbench.catalog import load_plugin

    for p in plugins:
        load_plugin(p)

    def send(obj) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    send({"ready": True, "pid": os.getpid(), "threads": torch.get_num_threads()})
    # After a case of a mode, that mode's lazy initialization is done (the first backward of a
    # worker allocates one-off buffers: mqa@sdpa's first fwd+bwd call peaked at 5x its steady
    # calls), so a later first call of the same mode may be a steady one.
    modes_run: set[str] = set()
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg.get("op")
        if op == "case":
            from attnbench.harness.execute import run_json

            mode = (msg["case"].get("shape") or {}).get("mode")
            send(run_json(msg["case"], {**(msg.get("opts") or {}), "warm_worker": mode in modes_run}))
            modes_run.add(mode)
        elif op == "probe":
            send(probe(msg))
        elif op == "exit":
            break
        else:
            send({"status": "error", "reasons": [f"unknown worker op {op!r}"]})


def probe(msg: dict) -> dict:
    """The device facts and the run's ceilings: GEMM peak, memory bandwidth, batched 64^3 GEMM;
    with ``gemm_only`` the GEMM peak alone (the run's closing probe: has the machine's speed
    moved?)."""
    from attnbench.harness.bandwidth import memory_bandwidth_gbs
    from attnbench.harness.env import device_environment
    from attnbench.harness.flops import block_gemm_gflops, gemm_peak_gflops

    budget = msg.get("budget_s", 2.0)
    if msg.get("gemm_only"):
        return gemm_peak_gflops(msg["device"], msg["dtype"], budget)
    info = device_environment(msg["device"])
    info.update(gemm_peak_gflops(msg["device"], msg["dtype"], budget), gemm_probe_s=budget)
    info.update(memory_bandwidth_gbs(msg["device"], msg["dtype"]))  # the roofline's second ceiling
    info.update(block_gemm_gflops(msg["device"], msg["dtype"], budget / 3))  # ... and third
    return info


if __name__ == "__main__":
    main()
