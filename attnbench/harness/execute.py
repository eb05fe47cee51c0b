"""One benchmark case, run inside a worker process: inputs, first call, check, timing, memory.

Order per case (DESIGN.md, measurement protocol):
1. build inputs (seeded) and, for backward modes, the forward graph;
2. the first call, timed apart (compile, autotune, block-mask build);
3. the first call's output is checked against the definition on a sample of query rows
   (rows are independent, so this is cheap at any n) — a mismatch is ``incorrect``;
4. memory: the peak above the baseline once the inputs exist, of one call. In a worker that has
   run a case already (lazy initialization done), the first call's peak is taken when that call
   was a steady one — it took at most ``FIRST_CALL_STEADY`` times the median (no compile, no plan
   or mask built) — which saves a call of seconds at large n; otherwise one call in a memory
   pass of its own (``mem_source`` says which);
5. warm-up (skipped when the call before took longer than it) and timed repeats
   (``timing.measure``: a confidence rule, a budget; on CPU each sample's run-queue wait is
   measured, disturbed samples are re-measured and a case without enough clean ones is
   ``noisy``).
"""
from __future__ import annotations

import time
from typing import Any

import torch

from attnbench.case import Case, Shape
from attnbench.check import check_rows
from attnbench.harness import cpuwait, memory, timing
from attnbench.harness.failures import classify
from attnbench.harness.inputs import make_inputs
from attnbench.registry import VariantSpec

FIRST_CALL_STEADY = 1.25  # a first call within this factor of the median did no one-off work

def calls(spec: VariantSpec, shape: Shape, q, k, v, params: dict):
    """(setup output, timed callable) for the case's mode; the callable returns what it made.

    ``params`` are the case's resolved params, passed to the kernel as they are.
    """
    def fwd():
        return spec.forward(q, k, v, causal=shape.causal, **params).out

    if shape.mode == "decode" and spec.decode_state is not None and k.shape[2] > 1:
        # A running-state decoder: the state of the first M-1 tokens is built untimed; each
        # step reads only the newest token's k, v and the state (O(1) in M).
        with torch.inference_mode():
            state = spec.decode_state(k[:, :, :-1], v[:, :, :-1], **params)
        k1, v1 = k[:, :, -1:], v[:, :, -1:]

        def step():
            with torch.inference_mode():
                return spec.forward(q, k1, v1, causal=shape.causal, state=state, **params).out
        return None, step
    if shape.mode in ("fwd", "decode"):
        def call():
            with torch.inference_mode():
                return fwd()
        return None, call
    inputs = (q, k, v)
    if shape.mode == "bwd":
        out = fwd()
        grad = torch.randn_like(out)
        return out, lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True)
    grad = None

    def call():
        nonlocal grad
        o = fwd()
        if grad is None:
            grad = torch.randn_like(o)
        torch.autograd.grad(o, inputs, grad)
        return o.detach()
    return None, call


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _first_call(call, device: str, watch: bool) -> tuple[Any, float, int | None]:
    """(output, ms, peak bytes above the baseline when ``watch``) of the first call."""
    mark = memory.Watermark(device) if watch else None
    t0 = time.perf_counter()
    out = call()
    _sync(device)
    ms = (time.perf_counter() - t0) * 1e3
    return out, ms, mark.peak() if mark is not None else None


def _check(case: Case, q, k, v, out, res: dict) -> bool:
    """rel_err for approximate variants; the sampled-row check; False when incorrect."""
    spec, shape, params = case.spec, case.shape, case.kwargs
    if not spec.exact:
        from attnbench.approx import rel_errors

        res.update(rel_errors(spec, shape, params))
    if not (spec.exact or spec.reference_fn is not None):
        return True
    chk = check_rows(spec, shape, q, k, v, out, params=params)
    res.update(max_abs_err=chk["max_abs_err"], allowed_err=chk["allowed_err"])
    if chk["ok"]:
        return True
    res["status"] = "incorrect"
    res["reasons"] = [
        f"max abs error {chk['max_abs_err']:.3g} on {chk['rows_checked']} sampled query rows exceeds the "
        f"allowed {chk['allowed_err']:.3g} (2x torch's own error at {shape.dtype} + floor)"
        + (" against the variant's own dense definition" if spec.reference_fn else "")]
    return False


def _memory_and_time(case: Case, call, first_ms: float, first_peak: int | None, opts: dict, res: dict) -> None:
    device, warm_ms = case.shape.device, first_ms
    other = cpuwait.OtherCpu().start() if device == "cpu" else None  # from here on, no compile workers run
    measure_memory = opts.get("memory", True)
    if measure_memory and first_peak is None:
        t0 = time.perf_counter()
        res.update(peak_mem_bytes=memory.peak_bytes(call, device), mem_source="memory_pass")
        warm_ms = (time.perf_counter() - t0) * 1e3
    threads = torch.get_num_threads() if device == "cpu" else None
    stats = timing.measure(call, device=device, warm_ms=warm_ms, threads=threads, other=other, **opts.get("timing", {}))
    res.update(time_ms_median=stats.median_ms, time_ms_iqr=stats.iqr_ms, time_ms_min=stats.min_ms,
               repeats=stats.repeats, time_ci_rel=stats.ci_rel, timing_stop=stats.stop,
               samples_ms=[round(s, 6) for s in timing.compact_samples(stats.samples_ms)],
               wait_share=stats.wait_share, disturbed_samples=stats.disturbed, other_cpu_share=stats.other_cpu_share,
               noisy=stats.noisy if stats.wait_share is not None else None)
    if stats.noisy:
        res["reasons"].append(_noisy_reason(stats, opts.get("timing", {}).get("disturbed_wait", cpuwait.DISTURBED_WAIT)))
    if measure_memory and first_peak is not None:
        if first_ms <= FIRST_CALL_STEADY * stats.median_ms:
            res.update(peak_mem_bytes=first_peak, mem_source="first_call")
        else:
            res.update(peak_mem_bytes=memory.peak_bytes(call, device), mem_source="memory_pass")


def _noisy_reason(stats: timing.TimingStats, limit: float) -> str:
    """Why a case's figures are not clean, and what to do."""
    if stats.disturbed and stats.repeats == stats.disturbed:
        why = (f"{stats.disturbed} of {stats.repeats} timed calls lost more than {limit:.0%} of their CPU time "
               f"waiting behind other processes (wait share {stats.wait_share:.0%}); the figures include them")
    else:
        why = (f"other processes used {stats.other_cpu_share:.0%} of the machine while it was timed "
               f"(over {cpuwait.OTHER_CPU_LIMIT:.0%})")
    return f"noisy: {why}: rerun on a quiet machine or with fewer threads per worker"


def run_case(case: Case, opts: dict) -> dict[str, Any]:
    """Execute ``case`` and return its measured fields. ``opts``: seed, check, memory, timing."""
    res: dict[str, Any] = {"status": "ok", "reasons": []}
    t_case = time.perf_counter()
    try:
        reasons = case.reasons()
        if reasons:
            return {"status": "unsupported", "reasons": reasons}
        seed = opts.get("seed", 0)
        torch.manual_seed(seed)
        q, k, v = make_inputs(case.shape, seed, requires_grad=case.shape.needs_grad)
        setup_out, call = calls(case.spec, case.shape, q, k, v, case.kwargs)
        watch = opts.get("memory", True) and opts.get("warm_worker", False)
        first, first_ms, first_peak = _first_call(call, case.shape.device, watch)
        res["first_call_ms"] = first_ms
        ok = _check(case, q, k, v, setup_out if setup_out is not None else first, res) if opts.get("check", True) else True
        del first
        if ok:
            _memory_and_time(case, call, first_ms, first_peak, opts, res)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a row
        if isinstance(exc, KeyboardInterrupt):
            raise
        res["status"], res["reasons"] = classify(exc)
    finally:
        res["case_wall_s"] = time.perf_counter() - t_case
    return res


def run_json(case_json: dict, opts: dict) -> dict[str, Any]:
    """The case a parent sent (``Case.to_json``), rebuilt from the registry and run. An unknown
    name or parameters the registry refuses (a stale stored case) is the case's row."""
    from attnbench.catalog import get

    try:
        case = Case.make(get(case_json["variant"]), Shape(**case_json["shape"]), case_json.get("params"))
    except Exception as exc:  # noqa: BLE001
        status, reasons = classify(exc)
        return {"status": status, "reasons": reasons}
    return run_case(case, opts)
