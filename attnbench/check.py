"""Correctness of a kernel against its definition: outputs and gradients, and sampled rows.

What a variant must output (:func:`expected_output`) is its own dense definition
(``reference_fn``: FAVOR+, LSH, XL) or softmax attention under its reference's mask and bias
(``full``, or a pattern). A kernel passes by the one tolerance rule (``attnbench.tolerance``):
its max error against the fp64 definition is at most twice that of the definition evaluated at
the case's dtype, plus the spec's floor. Used by ``attnbench check``, by ``run`` (sampled query
rows before timing) and by the pytest suite.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from attnbench import reference
from attnbench.case import Shape
from attnbench.harness.failures import classify
from attnbench.harness.inputs import make_inputs
from attnbench.patterns import constraints, get_pattern
from attnbench.registry import VariantSpec
from attnbench.tolerance import allowed_error


def reference_constraints(ref: str, shape: Shape, params: dict, rows: torch.Tensor | None = None,
                          device=None, dtype=torch.float64):
    """(mask, bias, causal) to pass to ``reference.attention`` for a spec's ``reference``.

    ``full``: no mask, causal by flag. A pattern: its dense mask (causal folded in) and, for
    Swin, the relative-position bias, both restricted to ``rows`` when given.
    """
    if ref == "full":
        if rows is None:
            return None, None, shape.causal
        mask = reference.causal_mask(shape.seq_len, shape.kv_len, device, rows) if shape.causal else None
        return mask, None, False
    mask, bias = constraints(get_pattern(ref), shape, params, rows=rows, device=device, dtype=dtype)
    return mask, bias, False


def expected_output(spec: VariantSpec, shape: Shape, q, k, v, params: dict,
                    rows: torch.Tensor | None = None) -> torch.Tensor:
    """What ``spec``'s kernels must output for q, k, v with the resolved ``params``, computed at
    the inputs' dtype and device: [B, H, R, D] for the query ``rows`` when given, else
    [B, H, N, D] (differentiable)."""
    if spec.reference_fn is not None:
        return spec.reference_fn(q, k, v, causal=shape.causal, rows=rows, **params)
    mask, bias, causal = reference_constraints(spec.reference, shape, params, rows=rows, device=q.device)
    qr = q if rows is None else q[:, :, rows]
    bias = None if bias is None else bias.to(q.dtype)
    return reference.attention(qr, k, v, causal=causal, mask=mask, bias=bias).out


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def check_rows(spec: VariantSpec, shape: Shape, q, k, v, out: torch.Tensor, n_rows: int = 16,
               params: dict | None = None) -> dict:
    """Compare ``out`` with the fp64 definition on sampled query rows (cheap at any n: rows are
    independent). ``params``: the resolved params the kernel received."""
    params = spec.resolve_params(params)
    rows = reference.sample_rows(shape.seq_len, n_rows, device=q.device)
    with torch.no_grad():
        qd, kd, vd = q.detach(), k.detach(), v.detach()
        ref64 = expected_output(spec, shape, qd.double(), kd.double(), vd.double(), params, rows)
        ref_lp = expected_output(spec, shape, qd, kd, vd, params, rows)
        got = out.detach()[:, :, rows].double()
        err, err_torch = _max_err(got, ref64), _max_err(ref_lp, ref64)
        scale = ref64.abs().max().item() if got.numel() else 0.0
    allowed = allowed_error(err_torch, scale, spec.tolerance(shape.dtype))
    ok = bool(err <= allowed) and bool(torch.isfinite(got).all())
    return {"ok": ok, "max_abs_err": err, "allowed_err": allowed, "rows_checked": int(rows.numel())}


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


def _grad_errors(out, ref64, reflp, inputs, seed: int, tol, errors: dict, allowed: dict) -> None:
    """dq, dk, dv of the kernel against the fp64 definition's, by the same rule as the output."""
    (q, k, v), (q64, k64, v64), (qlp, klp, vlp) = inputs
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(out)
    # allow_unused: a kernel that ignores k or v gets zero gradients, hence "incorrect".
    got = [torch.zeros_like(t) if d is None else d for t, d in
           zip((q, k, v), torch.autograd.grad(out, (q, k, v), g, allow_unused=True))]
    want64 = torch.autograd.grad(ref64, (q64, k64, v64), g.double())
    wantlp = torch.autograd.grad(reflp, (qlp, klp, vlp), g)
    # One scale for all three: dk can be exactly 0 (a single key) while its rounding noise is
    # set by the size of the other gradients.
    gscale = max(b.abs().max().item() if b.numel() else 0.0 for b in want64)
    for name, a, b, c in zip(("dq", "dk", "dv"), got, want64, wantlp):
        errors[name] = _max_err(a, b)
        allowed[name] = allowed_error(_max_err(c, b), gscale, tol)


def check_case(spec: VariantSpec, shape: Shape, *, grads: bool = True, seed: int = 0,
               params: dict | None = None) -> CheckResult:
    """Run ``spec`` on ``shape`` (mode ignored) with ``params`` and compare with its definition."""
    params = spec.resolve_params(params)
    reasons = spec.not_supported_reasons(shape, params)
    if reasons:
        return CheckResult(spec.name, shape, "unsupported", reasons)
    grad_reasons = spec.not_supported_reasons(replace(shape, mode="fwd+bwd"), params)
    want_grads = grads and not grad_reasons
    try:
        rshape = spec.resolve_shape(shape)
        q, k, v = make_inputs(rshape, seed, requires_grad=want_grads)
        out = spec.forward(q, k, v, causal=shape.causal, **params).out
        q64, k64, v64 = (t.detach().double().requires_grad_(want_grads) for t in (q, k, v))
        qlp, klp, vlp = (t.detach().clone().requires_grad_(want_grads) for t in (q, k, v))
        ref64 = expected_output(spec, rshape, q64, k64, v64, params)
        reflp = expected_output(spec, rshape, qlp, klp, vlp, params)
        tol = spec.tolerance(shape.dtype)
        errors = {"out": _max_err(out, ref64) if torch.isfinite(out).all() else float("inf")}
        allowed = {"out": allowed_error(_max_err(reflp, ref64), ref64.abs().max().item() if ref64.numel() else 0.0, tol)}
        if want_grads:
            _grad_errors(out, ref64, reflp, ((q, k, v), (q64, k64, v64), (qlp, klp, vlp)), seed, tol, errors, allowed)
    except Exception as exc:  # noqa: BLE001 - reported as a row
        status, why = classify(exc)
        return CheckResult(spec.name, shape, status, why)
    bad = [k for k in errors if not errors[k] <= allowed[k]]
    if bad:
        why = [f"{k}: max abs error {errors[k]:.3g} > allowed {allowed[k]:.3g}" for k in bad]
        return CheckResult(spec.name, shape, "incorrect", why, errors, allowed)
    notes = [] if want_grads or not grads else [f"gradients not checked: {'; '.join(grad_reasons)}"]
    return CheckResult(spec.name, shape, "ok", notes, errors, allowed)


# (N, M): single query, odd sizes, cross both ways — N > M and N > 2M put queries at negative
# key positions — and decode-like. Large sizes run at a smaller head dim.
CHECK_SIZES = [(1, 1), (7, 7), (1023, 1023), (37, 91), (1, 300), (40, 37), (91, 37)]
QUICK_SIZES = [(7, 7), (37, 91), (1, 300), (91, 37)]


def standard_shapes(device: str = "cpu", dtypes: tuple[str, ...] | None = None, quick: bool = False) -> list[Shape]:
    """The grid ``check`` runs: odd sizes, N != M both ways, causal or not, K/V heads H, H/4, 1
    (the large size at one batch and K/V heads H and 1: its fp64 reference with gradients is
    the cost of ``check``)."""
    dtypes = dtypes or (("float32", "float64") if device == "cpu" else ("float16", "bfloat16"))
    shapes = []
    for dt in dtypes:
        for n, m in (QUICK_SIZES if quick else CHECK_SIZES):
            big = n > 500  # past every kernel's block sizes: one batch, D = 32, K/V heads H and 1
            for causal in (False, True):
                for hkv in (8, 2, 1):
                    if (quick or big) and hkv == 2:
                        continue
                    shapes.append(Shape(batch=1 if big else 2, heads=8, kv_heads=hkv, seq_len=n, kv_len=m,
                                        head_dim=32 if big else 64, dtype=dt, device=device, causal=causal))
    return shapes


COMPILED_SIZES = ((37, 91), (91, 37))  # a compile per shape (seconds each): cross both ways; run checks every n


def is_compiled(spec: VariantSpec) -> bool:
    """Kernels that compile per shape (FlexAttention): ``check`` gives them fewer shapes."""
    return spec.kernel == "flex"


def shapes_for(spec: VariantSpec, shapes: list[Shape], setting: dict | None = None) -> list[Shape]:
    """The check grid for ``spec`` at one parameter setting: all of it at the defaults; at an
    example setting its first dtype, small sizes and K/V heads H and 1 (the example exercises the
    mask; dtypes, the large size and GQA are covered at the defaults); for a compiled kernel the
    shapes of COMPILED_SIZES at its first dtype with K/V heads H (each shape is a compile of
    several seconds; ``run`` checks sampled rows of the first call at every n)."""
    first = shapes[0].dtype if shapes else None
    if is_compiled(spec):
        return [s for s in shapes if (s.seq_len, s.kv_len) in COMPILED_SIZES and s.kv_heads == s.heads
                and s.dtype == first]
    if setting:
        return [s for s in shapes if max(s.seq_len, s.kv_len) < 1000 and s.kv_heads in (s.heads, 1)
                and s.dtype == first]
    return shapes


def check_settings(spec: VariantSpec, overrides: list[dict]) -> list[dict]:
    """Parameter settings ``check`` runs: the user's (a grid in the selection), else the defaults
    and, for a pattern's kernels, the pattern's small ``examples`` (at check sizes the defaults of
    most patterns cover every key); a compiled kernel gets the first example only."""
    if overrides != [{}] or spec.reference == "full":
        return overrides
    examples = [{k: v for k, v in ex.items() if k in spec.params} for ex in get_pattern(spec.reference).examples]
    if is_compiled(spec):
        return examples[:1] or [{}]
    return [{}] + examples
