"""One benchmark case, run inside a worker process: inputs, check, first call, memory, timing.

Order per case (DESIGN.md, measurement protocol):
1. build inputs (seeded) and, for backward modes, the forward graph;
2. first call, timed apart (compile, autotune, block-mask build);
3. the first call's output is checked against the reference on a sample of query rows
   (rows are independent, so this is cheap at any n) — a mismatch is ``incorrect``;
4. one call in a memory pass of its own (peak above the baseline once inputs exist);
5. warm-up and adaptive timed repeats.
"""
from __future__ import annotations

import time
import traceback
from typing import Any

import torch

from attnbench import reference
from attnbench.harness import memory, timing
from attnbench.registry import Shape, Unsupported, VariantSpec, get

OOM_MARKERS = ("out of memory", "can't allocate memory", "DefaultCPUAllocator", "not enough memory")


def make_inputs(shape: Shape, seed: int = 0, requires_grad: bool = False):
    """Seeded q [B, H, N, D], k, v [B, Hkv, M, D] on the case's device and dtype."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    dt = shape.torch_dtype

    def rnd(*s):
        t = torch.randn(*s, generator=g, dtype=torch.float32).to(device=shape.device, dtype=dt)
        return t.requires_grad_(requires_grad)

    q = rnd(shape.batch, shape.heads, shape.seq_len, shape.head_dim)
    k = rnd(shape.batch, shape.kv_heads, shape.kv_len, shape.head_dim)
    v = rnd(shape.batch, shape.kv_heads, shape.kv_len, shape.head_dim)
    return q, k, v


def check_rows(spec: VariantSpec, shape: Shape, q, k, v, out: torch.Tensor, n_rows: int = 16,
               params: dict | None = None) -> dict:
    """Compare ``out`` with the fp64 reference on sampled query rows.

    Tolerance (FlashAttention's rule): the kernel's error against fp64 may be at most twice
    that of the reference evaluated at the case's dtype, plus the spec's floor for the dtype.
    The reference is the spec's: full attention, or its pattern's mask (and bias).
    """
    from attnbench.patterns import spec_reference_out

    rows = reference.sample_rows(shape.seq_len, n_rows, device=q.device)
    full_params = {**spec.defaults, **(params or {})}
    with torch.no_grad():
        qd, kd, vd = q.detach(), k.detach(), v.detach()
        ref64 = spec_reference_out(spec, shape, qd.double(), kd.double(), vd.double(), full_params, rows)
        ref_lp = spec_reference_out(spec, shape, qd, kd, vd, full_params, rows)
        got = out.detach()[:, :, rows].double()
        err = (got - ref64).abs().max().item() if got.numel() else 0.0
        err_torch = (ref_lp.double() - ref64).abs().max().item() if got.numel() else 0.0
        scale = ref64.abs().max().item() if got.numel() else 0.0
    tol = spec.tolerance(shape.dtype)
    allowed = 2.0 * err_torch + tol.atol + tol.rtol * scale
    ok = bool(err <= allowed) and bool(torch.isfinite(got).all())
    return {"ok": ok, "max_abs_err": err, "allowed_err": allowed, "rows_checked": int(rows.numel())}


def _calls(spec: VariantSpec, shape: Shape, q, k, v, params: dict):
    """(setup output, timed callable) for the case's mode; the callable returns what it made."""
    fwd = lambda: spec(q, k, v, causal=shape.causal, **params).out  # noqa: E731
    if shape.mode == "decode" and spec.decode_state is not None and k.shape[2] > 1:
        # A running-state decoder: the state of the first M-1 tokens is built untimed; each
        # step reads only the newest token's k, v and the state (O(1) in M).
        with torch.inference_mode():
            state = spec.decode_state(k[:, :, :-1], v[:, :, :-1], **{**spec.defaults, **params})
        k1, v1 = k[:, :, -1:], v[:, :, -1:]

        def step():
            with torch.inference_mode():
                return spec(q, k1, v1, causal=shape.causal, state=state, **params).out
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


def classify(exc: BaseException) -> tuple[str, list[str]]:
    """Map an exception to (status, reasons)."""
    msg = " ".join(str(exc).split())[:2000]
    if isinstance(exc, Unsupported):
        return "unsupported", [msg]
    if isinstance(exc, MemoryError) or isinstance(exc, getattr(torch, "OutOfMemoryError", ())) \
            or any(m in msg for m in OOM_MARKERS):
        return "oom", [f"{type(exc).__name__}: {msg}"]
    where = traceback.extract_tb(exc.__traceback__)
    at = f" (at {where[-1].filename}:{where[-1].lineno})" if where else ""
    return "error", [f"{type(exc).__name__}: {msg}{at}"]


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Execute one case description (see ``attnbench.bench.plan``) and return its result fields."""
    spec = get(case["variant"])
    shape = Shape(**case["shape"])
    params = dict(case.get("params") or {})
    res: dict[str, Any] = {"status": "ok", "reasons": []}
    t_case = time.perf_counter()
    try:
        reasons = spec.not_supported_reasons(shape)
        if reasons:
            return {"status": "unsupported", "reasons": reasons}
        torch.manual_seed(case.get("seed", 0))
        q, k, v = make_inputs(shape, case.get("seed", 0), requires_grad=shape.needs_grad)
        setup_out, call = _calls(spec, shape, q, k, v, params)

        t0 = time.perf_counter()
        first = call()
        _sync(shape.device)
        res["first_call_ms"] = (time.perf_counter() - t0) * 1e3

        out_to_check = setup_out if setup_out is not None else first
        if case.get("check", True) and not spec.exact:
            from attnbench.approx import rel_errors

            res.update(rel_errors(spec, shape, params))
        if case.get("check", True) and (spec.exact or spec.reference_fn is not None):
            chk = check_rows(spec, shape, q, k, v, out_to_check, params=params)
            res.update(max_abs_err=chk["max_abs_err"], allowed_err=chk["allowed_err"])
            if not chk["ok"]:
                del first
                res["status"] = "incorrect"
                res["reasons"] = [
                    f"max abs error {chk['max_abs_err']:.3g} on {chk['rows_checked']} sampled query rows "
                    f"exceeds the allowed {chk['allowed_err']:.3g} (2x torch's own error at {shape.dtype} + floor)"
                    + (" against the variant's own dense definition" if spec.reference_fn else "")
                ]
                return res
        del first

        warm_ms = 0.0
        if case.get("memory", True):
            t0 = time.perf_counter()
            res["peak_mem_bytes"] = memory.peak_bytes(call, shape.device)
            warm_ms = (time.perf_counter() - t0) * 1e3

        t = case.get("timing", {})
        stats = timing.measure(call, device=shape.device, warm_ms=warm_ms, **t)
        res.update(
            time_ms_median=stats.median_ms, time_ms_iqr=stats.iqr_ms, time_ms_min=stats.min_ms,
            repeats=stats.repeats,
            samples_ms=[round(s, 6) for s in timing.compact_samples(stats.samples_ms)],
        )
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a row
        if isinstance(exc, KeyboardInterrupt):
            raise
        res["status"], res["reasons"] = classify(exc)
    finally:
        res["case_wall_s"] = time.perf_counter() - t_case
    return res
