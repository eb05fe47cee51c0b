"""The attention weights every registered variant's output is a weighted average of, densely.

Most kernels never form their probabilities; a statistic still needs them. :func:`implied`
evaluates the variant's definition on the same q, k (and params) in float64 and returns the
weights [B, H, N, M] with ``out_kernel = weights @ v`` up to rounding, by one of two paths:

* **masked softmax** — the variant's ``reference`` is ``'full'`` or a pattern: softmax of the
  scaled scores under the pattern's mask and bias (``check.reference_constraints``; a model's
  learned Swin ``bias_table`` given in ``extra`` replaces the seeded one);
* **its own weights** — a variant whose definition is not softmax under a mask declares
  ``weights_fn`` (FAVOR+ and linear attention: normalized feature products; LSH: softmax over
  its rounds' bucket-mates; sra: the pooled softmax spread over the original tokens;
  Transformer-XL: its relative-score softmax, learned u, v_bias, w_r given in ``extra``).

A variant with its own definition and no ``weights_fn`` raises :class:`Unsupported`: its
weights are not faked. So does a case its definition does not describe (the variant's own
reasons) and one larger than ``max_pairs``. :func:`exact` is what a variant is compared
against: softmax attention on the same q, k, v, or the variant's ``target_fn`` (LSH's
shared-QK attention), with its weights and output.

Layouts as everywhere: q [B, H, N, D], k, v [B, Hkv, M, D]; query head h reads K/V head
h // (H / Hkv); causal is bottom-right aligned.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnbench import reference
from attnbench.case import Shape, Unsupported
from attnbench.check import reference_constraints
from attnbench.patterns import dense_mask, get_pattern
from attnbench.registry import VariantSpec

MAX_PAIRS = 2 ** 24  # B H N M float64 weights: 128 MiB, and a few such temporaries


@dataclass
class Implied:
    """A variant's attention on one batch, float64.

    weights: [B, H, N, M]; a row sums to 1 over the keys it attends, 0 when it attends none
             (linear@relu's rows sum to A 1 / (A 1 + eps), a hair under 1).
    allowed: bool broadcastable to [B, H, N, M]: the keys each row may attend (support and
             causality together).
    support: the keys a row may attend beyond causality's rule (a pattern's mask, LSH's
             bucket-mates); None when every causal key may be attended.
    source:  'implied' (the variant's dense definition) or 'exact' (what it is compared with).
    """

    weights: torch.Tensor
    allowed: torch.Tensor
    support: torch.Tensor | None
    source: str


def _float64(*ts: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().to(torch.float64) for t in ts]


def _shape(spec: VariantSpec, q, k, causal: bool) -> Shape:
    """The case where the variant runs best: CUDA if it runs there, else its first device, and
    float32 if it takes it. The definition's domain does not depend on where the kernel runs:
    one device's kernel limits (xformers' CPU dispatch, FlexAttention's fp64 on CPU) are not
    reasons against its weights."""
    dtype = "float32" if "float32" in spec.dtypes else spec.dtypes[0]
    device = "cuda" if "cuda" in spec.devices else spec.devices[0]
    b, h, n, d = q.shape
    return Shape(batch=b, heads=h, kv_heads=k.shape[1], seq_len=n, kv_len=k.shape[2], head_dim=d,
                 dtype=dtype, device=device, causal=causal)


def _check_case(spec: VariantSpec, shape: Shape, params: dict, max_pairs: int) -> None:
    """Unsupported, with every reason, when the variant cannot run this case or it is too big.

    Missing packages are not a reason here (the definition needs none); they come first in
    ``not_supported_reasons``, which then skips the kernel's own extra reasons."""
    reasons = spec.not_supported_reasons(shape, params)[len(spec.missing_packages()):]
    pairs = shape.batch * shape.heads * shape.seq_len * shape.kv_len
    if pairs > max_pairs:
        reasons.append(f"implied attention materializes [B, H, N, M] = [{shape.batch}, {shape.heads}, "
                       f"{shape.seq_len}, {shape.kv_len}] = {pairs} pairs; above max_pairs={max_pairs}; "
                       f"use a smaller n")
    if reasons:
        raise Unsupported(f"{spec.name}: " + "; ".join(reasons))


def _causal_allowed(n: int, m: int, causal: bool, device) -> torch.Tensor:
    """Bool [N, M]: the keys causality leaves each row (all of them when not causal)."""
    if causal:
        return reference.causal_mask(n, m, device)
    return torch.ones(n, m, dtype=torch.bool, device=device)


def _pattern_bias(spec: VariantSpec, shape: Shape, params: dict, extra: dict, device):
    """The pattern's dense bias [H, N, M] from a given (learned) ``bias_table``; None if none given."""
    table = extra.get("bias_table")
    if table is None:
        return None
    p = get_pattern(spec.reference)
    if p.make_bias is None:
        raise Unsupported(f"{spec.name}: pattern {p.name} has no relative-position bias; bias_table is not taken")
    n, m = shape.seq_len, shape.kv_len
    _, dense_bias = p.make_bias(n, m, shape.heads, params, device, torch.float64, table=table.detach())
    return dense_bias(torch.arange(n, device=device), torch.arange(m, device=device))  # [H, N, M]


def _masked_softmax(spec: VariantSpec, shape: Shape, q, k, v, params: dict, extra: dict) -> Implied:
    """Softmax under the reference's mask and bias: the definition of every exact variant."""
    unknown = sorted(set(extra) - {"bias_table"})
    if unknown:
        raise Unsupported(f"{spec.name}: its implied attention takes no {', '.join(unknown)} (masked softmax "
                          f"under {spec.reference!r} takes only a learned bias_table)")
    n, m, dev = shape.seq_len, shape.kv_len, q.device
    if spec.reference == "full":
        if extra:
            raise Unsupported(f"{spec.name}: full attention has no relative-position bias; bias_table is not taken")
        w = reference.attention(q, k, v, causal=shape.causal).weights  # [B, H, N, M]
        return Implied(w, _causal_allowed(n, m, shape.causal, dev), None, "implied")
    mask, bias, _ = reference_constraints(spec.reference, shape, params, device=dev)  # [N, M], [H, N, M]
    given = _pattern_bias(spec, shape, params, extra, dev)
    bias = given if given is not None else bias
    w = reference.attention(q, k, v, mask=mask, bias=bias).weights  # [B, H, N, M]
    support = dense_mask(get_pattern(spec.reference), n, m, params, device=dev)  # [N, M]
    return Implied(w, mask, support, "implied")


def _own_weights(spec: VariantSpec, shape: Shape, q, k, v, params: dict, extra: dict) -> Implied:
    """The variant's ``weights_fn`` on the float64 inputs, its learned tensors as keywords."""
    given = {name: t.detach().to(torch.float64) if torch.is_tensor(t) else t for name, t in extra.items()}
    w, support = spec.weights_fn(q, k, v, causal=shape.causal, **params, **given)
    allowed = _causal_allowed(shape.seq_len, shape.kv_len, shape.causal, q.device)
    return Implied(w, allowed if support is None else allowed & support, support, "implied")


@torch.no_grad()
def implied(spec: VariantSpec, q, k, v, *, causal: bool, params: dict, extra: dict | None = None,
            max_pairs: int = MAX_PAIRS) -> Implied:
    """The weights [B, H, N, M] ``spec``'s output is an average of, on q [B, H, N, D] and
    k, v [B, Hkv, M, D] with the resolved ``params`` and the kernel's tensor keywords ``extra``
    (learned u / v_bias / w_r, bias_table), in float64 (module docstring). Unsupported: a case
    the variant cannot run, more than ``max_pairs`` pairs, or no way to form its weights."""
    shape, params = _shape(spec, q, k, causal), spec.resolve_params(params)
    _check_case(spec, shape, params, max_pairs)
    q, k, v = _float64(q, k, v)
    if spec.weights_fn is not None:
        return _own_weights(spec, shape, q, k, v, params, dict(extra or {}))
    if spec.reference_fn is not None:
        raise Unsupported(f"{spec.name}: its own definition (reference_fn) is not softmax under a mask and it "
                          f"declares no weights_fn, so its implied attention cannot be formed")
    return _masked_softmax(spec, shape, q, k, v, params, dict(extra or {}))


def _target_weights(spec: VariantSpec, q, k, v, causal: bool, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [B, H, N, M], out [B, H, N, D]) of ``spec.target_fn``. A target is a weighted
    average of v, so applied to the identity as values (v_j = e_j) it outputs its weights; that
    it really is linear in v is checked against its output on v (Unsupported otherwise)."""
    b, hkv, m, _ = v.shape
    eye = torch.eye(m, dtype=v.dtype, device=v.device).expand(b, hkv, m, m)  # [B, Hkv, M, M]
    w = spec.target_fn(q, k, eye, causal=causal, **params)  # [B, H, N, M]
    out = spec.target_fn(q, k, v, causal=causal, **params)  # [B, H, N, D]
    g = q.shape[1] // hkv
    via = torch.matmul(w.reshape(b, hkv, g, -1, m), v.unsqueeze(2)).reshape(out.shape)  # [B, H, N, D]
    if not torch.allclose(via, out, rtol=1e-9, atol=1e-9 * (1.0 + out.abs().max().item())):
        raise Unsupported(f"{spec.name}: its target (target_fn) is not a weighted average of v, so it has no weights")
    return w, out


@torch.no_grad()
def exact(spec: VariantSpec, q, k, v, *, causal: bool, params: dict, extra: dict | None = None,
          max_pairs: int = MAX_PAIRS) -> tuple[Implied, torch.Tensor]:
    """What ``spec`` is compared against on the same q, k, v: softmax attention (causal as
    given), or the attention its ``target_fn`` defines (LSH: shared-QK softmax). Returns its
    weights as an :class:`Implied` (support None, source 'exact') and its output [B, H, N, D],
    float64. ``extra`` is the kernel's own tensors, which no target reads. Unsupported as
    :func:`implied` for a case the variant cannot run or more than ``max_pairs`` pairs."""
    shape, params = _shape(spec, q, k, causal), spec.resolve_params(params)
    _check_case(spec, shape, params, max_pairs)
    q, k, v = _float64(q, k, v)
    if spec.target_fn is not None:
        w, out = _target_weights(spec, q, k, v, causal, params)
    else:
        r = reference.attention(q, k, v, causal=causal)
        w, out = r.weights, r.out
    allowed = _causal_allowed(shape.seq_len, shape.kv_len, causal, q.device)
    return Implied(w, allowed, None, "exact"), out


__all__ = ["Implied", "MAX_PAIRS", "exact", "implied"]
