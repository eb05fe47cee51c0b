"""Correctness of a kernel against its dense reference: outputs and gradients.

Tolerance follows FlashAttention's rule: a kernel's max error against an fp64 reference may be
at most twice the error of PyTorch's own (materialized) attention at the same dtype, plus a
small per-dtype floor from the spec. Used by ``attnbench check`` and by the pytest suite.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from attnbench.harness.execute import classify, make_inputs
from attnbench.patterns import spec_reference_out
from attnbench.registry import Shape, VariantSpec


@dataclass
class CheckResult:
    variant: str
    shape: Shape
    status: str  # ok | incorrect | unsupported | error | oom
    reasons: list[str] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)  # out / dq / dk / dv: max abs error
    allowed: dict[str, float] = field(default_factory=dict)

    @property
    def worst_ratio(self) -> float:
        r = [self.errors[k] / self.allowed[k] for k in self.errors if self.allowed.get(k)]
        return max(r) if r else 0.0


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def check_case(spec: VariantSpec, shape: Shape, *, grads: bool = True, seed: int = 0,
               params: dict | None = None) -> CheckResult:
    """Run ``spec`` on ``shape`` (mode ignored) and compare with the reference."""
    params = params or {}
    grad_shape = replace(shape, mode="fwd+bwd")
    reasons = spec.not_supported_reasons(shape)
    if reasons:
        return CheckResult(spec.name, shape, "unsupported", reasons)
    want_grads = grads and not spec.not_supported_reasons(grad_shape)
    try:
        rshape = spec.resolve_shape(shape)
        q, k, v = make_inputs(rshape, seed, requires_grad=want_grads)
        out = spec(q, k, v, causal=shape.causal, **params).out
        q64, k64, v64 = (t.detach().double().requires_grad_(want_grads) for t in (q, k, v))
        qlp, klp, vlp = (t.detach().clone().requires_grad_(want_grads) for t in (q, k, v))
        full_params = {**spec.defaults, **params}
        ref64 = spec_reference_out(spec, rshape, q64, k64, v64, full_params)
        reflp = spec_reference_out(spec, rshape, qlp, klp, vlp, full_params)
        tol = spec.tolerance(shape.dtype)
        errors = {"out": _max_err(out, ref64)}
        allowed = {"out": 2 * _max_err(reflp, ref64) + tol.atol + tol.rtol * ref64.abs().max().item()}
        if not torch.isfinite(out).all():
            errors["out"] = float("inf")
        if want_grads:
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(out)
            # allow_unused: a kernel that ignores k or v gets zero gradients, hence "incorrect".
            got = [torch.zeros_like(t) if d is None else d for t, d in
                   zip((q, k, v), torch.autograd.grad(out, (q, k, v), g, allow_unused=True))]
            want64 = torch.autograd.grad(ref64, (q64, k64, v64), g.double())
            wantlp = torch.autograd.grad(reflp, (qlp, klp, vlp), g)
            # One scale for all three: dk can be exactly 0 (a single key) while its rounding
            # noise is set by the size of the other gradients.
            gscale = max(b.abs().max().item() if b.numel() else 0.0 for b in want64)
            for name, a, b, c in zip(("dq", "dk", "dv"), got, want64, wantlp):
                errors[name] = _max_err(a, b)
                allowed[name] = 2 * _max_err(c, b) + tol.atol + tol.rtol * gscale
    except Exception as exc:  # noqa: BLE001 - reported as a row
        status, why = classify(exc)
        return CheckResult(spec.name, shape, status, why)
    bad = [k for k in errors if not errors[k] <= allowed[k]]
    if bad:
        why = [f"{k}: max abs error {errors[k]:.3g} > allowed {allowed[k]:.3g}" for k in bad]
        return CheckResult(spec.name, shape, "incorrect", why, errors, allowed)
    notes = [] if want_grads or not grads else [f"gradients not checked: {'; '.join(spec.not_supported_reasons(grad_shape))}"]
    return CheckResult(spec.name, shape, "ok", notes, errors, allowed)


def standard_shapes(device: str = "cpu", dtypes: tuple[str, ...] | None = None, quick: bool = False) -> list[Shape]:
    """The grid ``check`` runs: odd sizes, N != M, causal or not, K/V heads H, H/4 and 1."""
    dtypes = dtypes or (("float32", "float64") if device == "cpu" else ("float16", "bfloat16"))
    sizes = [(1, 1), (7, 7), (1023, 1023), (37, 91), (1, 300)] if not quick else [(7, 7), (37, 91), (1, 300)]
    shapes = []
    for dt in dtypes:
        for n, m in sizes:
            for causal in (False, True):
                for hkv in (8, 2, 1):
                    if quick and hkv == 2:
                        continue
                    shapes.append(Shape(batch=2, heads=8, kv_heads=hkv, seq_len=n, kv_len=m,
                                        head_dim=32 if n > 500 else 64, dtype=dt, device=device,
                                        causal=causal))
    return shapes
