"""One measurement of scripts/peers.py in its own fresh process (spawned by it; not a CLI).

    python scripts/peers_child.py '{"kind": "speed", "impl": "hf-bigbird", "n": 16384, ...}'

Prints its row's measured fields as one line ``PEERS_ROW {json}`` on stdout (the parent adds
the rest); an exception becomes a row as attnbench's harness makes one (``classify``: ``oom``
for an allocation failure, else ``error`` with where it was raised), an ImportError one with
status ``missing``. A process killed (the OOM killer, the
parent's deadline) prints nothing: the parent writes that row.

speed: build the module (before the baseline), baseline = resident size, create q, k, v,
first call timed apart, its output freed, then one call under a reset high-water mark (the
memory figures, ``peers_rows``), then ``attnbench.harness.timing.measure`` (median, IQR,
repeats; samples in which this process waited for a CPU are set aside and re-measured).
"""
from __future__ import annotations

import ctypes
import gc
import json
import sys
import time

import torch

from attnbench.harness import memory, timing
from attnbench.harness.failures import classify
from attnbench.harness.inputs import make_inputs

import peers_impls

MARK = "PEERS_ROW "
MB = 2**20


def settle() -> None:
    """Garbage collected and freed heap handed back, so the resident size is what is alive."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def speed(impl: peers_impls.Impl, shape, budget_s: float) -> dict:
    bind = impl.build(shape)
    settle()
    base = memory.rss_bytes()
    bound = bind(*make_inputs(shape, seed=0))  # the originals freed: the peer's layout only
    settle()
    inputs = memory.rss_bytes() - base
    t0 = time.perf_counter()
    out = bound.call()
    first_ms = (time.perf_counter() - t0) * 1e3
    del out
    settle()
    residue = memory.rss_bytes() - base - inputs
    mark = memory.Watermark("cpu")
    t0 = time.perf_counter()
    out = bound.call()
    warm_ms = (time.perf_counter() - t0) * 1e3
    call_peak = mark.peak()
    del out
    st = timing.measure(bound.call, budget_s=budget_s, warm_ms=warm_ms, threads=torch.get_num_threads())
    return {"time_ms_median": st.median_ms, "iqr_ms": st.iqr_ms, "min_ms": st.min_ms, "repeats": st.repeats,
            "ci_rel": st.ci_rel, "stop": st.stop, "noisy": st.noisy, "other_cpu_share": st.other_cpu_share,
            "first_call_ms": first_ms, "inputs_mb": inputs / MB, "residue_mb": residue / MB,
            "call_peak_mb": call_peak / MB, "peak_rss_mb": (inputs + call_peak) / MB}


def check(impl: peers_impls.Impl, shape) -> dict:
    res = peers_impls.check(impl, shape)
    ok = res["check_max_abs_diff"] <= res["check_tol"]
    reasons = [] if ok else [f"max |diff| {res['check_max_abs_diff']:.3g} > {res['check_tol']:g}: "
                             f"{impl.name} does not compute {impl.check_against}'s attention"]
    return {**res, "status": "ok" if ok else "incorrect", "reasons": reasons}


def run(case: dict) -> dict:
    impl = peers_impls.IMPLS[case["impl"]]
    shape = peers_impls.shape_for(case["n"], case["batch"], case["heads"], case["head_dim"])
    t0 = time.perf_counter()
    try:
        res = speed(impl, shape, case["budget_s"]) if case["kind"] == "speed" else check(impl, shape)
        res.setdefault("status", "ok")
    except ImportError as e:
        res = {"status": "missing", "reasons": [f"{type(e).__name__}: {e}"]}
    except Exception as e:  # noqa: BLE001  any failure is this case's row, never the run's end
        status, reasons = classify(e)  # oom, unsupported or error, with where it was raised
        res = {"status": status, "reasons": reasons}
    res["threads"] = torch.get_num_threads()
    res["elapsed_s"] = time.perf_counter() - t0
    return res


def main(argv: list[str]) -> int:
    print(MARK + json.dumps(run(json.loads(argv[1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
