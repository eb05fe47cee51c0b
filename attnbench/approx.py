"""Approximation error of non-exact variants against the exact attention they stand in for.

``rel_err = ||out - exact||_F / ||exact||_F`` over the whole output [B, H, N, D], at a fixed
n = 1024 (so rows at every n of a run carry the same figure), on two kinds of input:

* ``gaussian``: q, k, v ~ N(0, 1) — scores are flat, the easy case for random features;
* ``sharp``: each query is built from a few (3) random keys, so its softmax puts most of its
  mass on them (logit ~ 8 against ~N(0, 1)) — the structure real attention has and low-rank or hashed
  approximations miss.

The exact target is softmax attention (``attnbench.reference``) unless the spec names its own
(``target_fn``: Reformer's shared-QK attention, for instance).
"""
from __future__ import annotations

import functools
from dataclasses import replace

import torch

from attnbench import reference
from attnbench.case import Shape, freeze
from attnbench import registry
from attnbench.registry import VariantSpec

REL_ERR_N = 1024
SHARP_KEYS = 3  # keys each "sharp" query is made of
SHARP_LOGIT = 8.0  # their logit; the rest are ~N(0, 1)


def inputs(shape: Shape, kind: str, seed: int = 0):
    """q [B, H, N, D], k, v [B, Hkv, M, D] of the given kind ('gaussian' | 'sharp'), float32 on CPU."""
    if kind not in ("gaussian", "sharp"):
        raise ValueError(f"input kind {kind!r}: allowed: 'gaussian', 'sharp'")
    g = torch.Generator().manual_seed(seed)
    b, h, hkv, n, m, d = shape.batch, shape.heads, shape.kv_heads, shape.seq_len, shape.kv_len, shape.head_dim
    k = torch.randn(b, hkv, m, d, generator=g)
    v = torch.randn(b, hkv, m, d, generator=g)
    if kind == "gaussian":
        return torch.randn(b, h, n, d, generator=g), k, v
    # q_i = beta * (sum of SHARP_KEYS unit keys): its logit with each is beta |k| / sqrt(d) ~ beta
    idx = torch.randint(0, m, (b, h, n, SHARP_KEYS), generator=g)
    kh = (k / k.norm(dim=-1, keepdim=True)).repeat_interleave(h // hkv, dim=1)  # [B, H, M, D]
    q = SHARP_LOGIT * _gather_rows(kh, idx).sum(3) + 0.1 * torch.randn(b, h, n, d, generator=g)
    return q, k, v


def _gather_rows(kh: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """kh [B, H, M, D], idx [B, H, N, S] -> [B, H, N, S, D] without an [N, M] intermediate."""
    b, h, n, s = idx.shape
    flat = idx.reshape(b, h, n * s)
    out = torch.gather(kh, 2, flat.unsqueeze(-1).expand(b, h, n * s, kh.shape[-1]))
    return out.reshape(b, h, n, s, kh.shape[-1])


def relative_error(spec: VariantSpec, shape: Shape, kind: str, params: dict | None = None,
                   seed: int = 0) -> float:
    """||spec(q, k, v) - exact|| / ||exact|| on inputs of ``kind`` at ``shape`` (forward only)."""
    params = {**spec.defaults, **(params or {})}
    q, k, v = inputs(shape, kind, seed)
    dt, dev = shape.torch_dtype, shape.device
    with torch.no_grad():
        out = spec(q.to(dev, dt), k.to(dev, dt), v.to(dev, dt), causal=shape.causal, **params).out
        q64, k64, v64 = q.double(), k.double(), v.double()
        if spec.target_fn is not None:
            exact = spec.target_fn(q64, k64, v64, causal=shape.causal, **params)
        else:
            exact = reference.attention(q64, k64, v64, causal=shape.causal).out
        diff = (out.double().cpu() - exact.cpu()).norm()
        return float(diff / exact.norm().clamp_min(1e-300))


@functools.lru_cache(maxsize=64)
def _cached(name: str, shape: Shape, frozen: tuple) -> tuple[float, float]:
    """Both errors, once per (variant, shape, params) in a worker: every n of a run stores the
    same n = 1024 figures."""
    spec, params = registry.lookup(name), dict(frozen)
    return relative_error(spec, shape, "gaussian", params), relative_error(spec, shape, "sharp", params)


def rel_errors(spec: VariantSpec, shape: Shape, params: dict | None = None) -> dict[str, float]:
    """The two figures a run row stores for a non-exact variant: ``rel_err`` (gaussian inputs)
    and ``rel_err_sharp``, both at n = 1024 with the case's heads, head_dim, dtype, causality
    and parameters."""
    s = replace(shape, seq_len=REL_ERR_N, kv_len=REL_ERR_N, mode="fwd")
    try:
        resolved = spec.resolve_params(params)
        if registry.registered(spec.name) is spec:
            g, sh = _cached(spec.name, s, freeze(resolved))
        else:
            g, sh = relative_error(spec, s, "gaussian", resolved), relative_error(spec, s, "sharp", resolved)
    except Exception as e:  # noqa: BLE001 - the error figure must not cost the timing row
        return {"rel_err": None, "rel_err_sharp": None, "rel_err_failed": f"{type(e).__name__}: {e}"}
    return {"rel_err": g, "rel_err_sharp": sh}

