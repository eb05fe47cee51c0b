"""The one multi-head attention module every skeleton uses: projections, H query heads and Hkv
K/V heads, the registry variant (by name, with its resolved params) on [B, H, N, D], dropout.

Choices made once here, for every variant alike (the Long Range Arena's fairness rule):

* **Padding.** Registry kernels take no key-padding mask, so attention sees PAD tokens like any
  other: a deliberate, uniform choice (a mask only some kernels could honour would give
  variants different models). Mean pooling, in the encoder, does exclude PAD positions.
* **Attention dropout** (``attn_dropout``) drops elements of the attention *output* [B, H, N, D]
  before the output projection. Fused kernels never form the probabilities, so dropping them
  would be possible for some variants only.
* **Weights** are asked of the kernel only inside :meth:`Skeleton.attention_weights`; a kernel
  that cannot return them gives None.
* **The variant's own tensors.** A spec's ``learned`` (XL's u, v_bias, W_r) become parameters
  here, passed to the kernel as keywords and counted. Everything else a kernel draws stays a
  fixed draw from its seed params, not learned: Performer's random features, LSH's rotations,
  and, in the 1-D skeletons, Swin's relative-position bias table. Swin on a 1-D sequence uses
  its default grid, the most nearly square factorization of N. ``lsh@shared_qk`` ignores k (keys
  are the normalized queries): its K projection is kept, unused, so that every variant has the
  same skeleton.
* **A block's own params and tensors.** A block may add params of its own over the config's
  (``params``: the vision skeletons give a grid variant its stage's ``grid``, Swin's alternating
  ``shift``, PVT's ``ratio``; :func:`grid_params`) and tensors the kernel takes as keywords
  (``extra``: the vision skeletons' learned Swin bias table); they are parameters here, passed to
  the kernel and counted as the variant's own.
* **Cross attention.** ``forward(x, context=...)`` takes K and V from ``context`` [B, M, C]
  instead of ``x`` (PVT's spatially reduced tokens): N queries against M keys.
* **State.** A variant of the ``memory`` family (Transformer-XL) returns a state, its memory of
  earlier segments' keys and values (detached); the module hands it back to the caller. The
  memory caches projected K/V, not hidden states as the paper does: the forward is the same,
  but the K/V projections get no gradient through the memory.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn

from attnbench import catalog
from attnbench.case import Shape, Unsupported
from attnbench.models.config import ModelConfig
from attnbench.models.positions import Rotary
from attnbench.registry import VariantSpec


def carries_state(spec: VariantSpec) -> bool:
    """Variants that carry memory across calls (the ``memory`` family: Transformer-XL)."""
    return spec.family == "memory"


def positions_used(cfg: ModelConfig, spec: VariantSpec) -> str:
    """The config's positions, or 'none' for a variant with its own relative positions (unless
    the config asks for both)."""
    if spec.relative_positions and not cfg.positions_with_relative:
        return "none"
    return cfg.positions


def kv_heads_used(cfg: ModelConfig, spec: VariantSpec) -> int:
    """K/V heads: the variant's own rule (mqa: 1, gqa: H/4), else the config's, else H."""
    if spec.kv_heads_rule is not None:
        return spec.kv_heads_rule(cfg.heads)
    return cfg.kv_heads or cfg.heads


def takes_grid(spec: VariantSpec) -> bool:
    """Variants that attend over a 2-D token grid (they declare a ``grid`` parameter: swin, sra)."""
    return "grid" in spec.params


def grid_params(spec: VariantSpec, grid: tuple[int, int], index: int, ratio: int | None = None) -> dict[str, Any]:
    """A vision block's params for a variant, of those it declares: the stage's ``grid`` (H, W),
    ``shift`` False then True block after block (Swin's W-MSA, SW-MSA), the stage's ``ratio``."""
    if not takes_grid(spec):
        return {}
    given = {"grid": (int(grid[0]), int(grid[1])), "shift": index % 2 == 1, "ratio": ratio}
    return {k: v for k, v in given.items() if k in spec.params and v is not None}


def require_supported(cfg: ModelConfig, n: int, causal: bool, *, device: str = "cpu",
                      dtype: str = "float32", train: bool = True) -> None:
    """Raise :class:`Unsupported` with the registry's reasons if the config's variant cannot run
    attention over ``n`` tokens here (a training step needs its backward)."""
    spec = catalog.get(cfg.variant)
    shape = Shape(batch=1, heads=cfg.heads, kv_heads=kv_heads_used(cfg, spec), seq_len=n, kv_len=n,
                  head_dim=cfg.head_dim, dtype=dtype, device=device, causal=causal,
                  mode="fwd+bwd" if train else "fwd")
    reasons = spec.not_supported_reasons(shape, spec.resolve_params(cfg.params))
    if reasons:
        raise Unsupported(f"{spec.name} cannot run this model ({n} tokens, causal={causal}, {device}): "
                          + "; ".join(reasons))


def model_record(cfg: ModelConfig, causal: bool, **choices: Any) -> dict[str, Any]:
    """What a model used, for its rows: the variant as resolved, positions, heads, the choices."""
    spec = catalog.get(cfg.variant)
    return {"variant": spec.name, "pattern": spec.pattern, "params": spec.resolve_params(cfg.params),
            "positions": positions_used(cfg, spec), "positions_configured": cfg.positions,
            "heads": cfg.heads, "kv_heads": kv_heads_used(cfg, spec), "causal": causal,
            "own_params": sorted(spec.learned(cfg.heads, cfg.head_dim, spec.resolve_params(cfg.params)))
            if spec.learned else [],
            "attn_dropout": {"p": cfg.attn_dropout, "on": "attention output [B, H, N, D], before the output projection"},
            "padding": "attention sees PAD tokens (registry kernels take no key-padding mask)",
            **choices}


@dataclass
class Call:
    """One attention call as the kernel saw it (:meth:`Skeleton.capturing`): q [B, H, N, D], k, v
    [B, Hkv, M, D] after projections and rotary, the kernel's output [B, H, N, D], its resolved
    params, the tensors it took as keywords (learned: Swin's bias table, XL's u, v_bias, W_r)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor
    params: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    causal: bool


class Attention(nn.Module):
    """x [B, N, C] (K/V from ``context`` [B, M, C] if given) -> (y [B, N, C], state): the registry
    variant between the projections. ``params``: the block's own over the config's; ``extra``:
    tensors the kernel takes as keywords, learned here (module docstring)."""

    def __init__(self, cfg: ModelConfig, causal: bool, params: dict[str, Any] | None = None,
                 extra: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.spec = catalog.get(cfg.variant)  # UnknownVariant: the registry's own message
        self.overrides = {**cfg.params, **(params or {})}
        self.params = self.spec.resolve_params(self.overrides)  # resolved once (ParamError)
        self.causal = causal
        self.h, self.hkv, self.d = cfg.heads, kv_heads_used(cfg, self.spec), cfg.head_dim
        self.q = nn.Linear(cfg.d_model, self.h * self.d)
        self.kv = nn.Linear(cfg.d_model, 2 * self.hkv * self.d)
        self.proj = nn.Linear(self.h * self.d, cfg.d_model)
        self.drop = nn.Dropout(cfg.attn_dropout)  # on the attention output (module docstring)
        self.rotary = Rotary(self.d) if positions_used(cfg, self.spec) == "rotary" else None
        own = self.spec.learned(self.h, self.d, self.params) if self.spec.learned else {}
        self.own = nn.ParameterDict({k: nn.Parameter(t.detach().clone().to(torch.get_default_dtype()))
                                     for k, t in own.items()})
        self.extra = nn.ParameterDict({k: nn.Parameter(t.detach().clone()) for k, t in (extra or {}).items()})
        self.need_weights, self.weights = False, None
        self.capture: list | None = None  # Skeleton.capturing(): each call's q, k, v and output
        self._checked: set[tuple] = set()

    def forward(self, x: torch.Tensor, state: Any = None, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, Any]:
        B, N, _ = x.shape
        src = x if context is None else context  # [B, M, C]: where keys and values come from
        M = src.shape[1]
        q = self.q(x).view(B, N, self.h, self.d).transpose(1, 2)  # [B, H, N, D]
        k, v = self.kv(src).view(B, M, 2, self.hkv, self.d).permute(2, 0, 3, 1, 4)  # 2 x [B, Hkv, M, D]
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        self._check(q, k)
        r = self.spec.forward(q, k, v, causal=self.causal, state=state, need_weights=self.need_weights,
                              **self.params, **self.own, **self.extra)
        self.weights = r.weights if self.need_weights else None  # [B, H, N, M] or None
        if self.capture is not None:
            self.capture.append(Call(q.detach(), k.detach(), v.detach(), r.out.detach(), dict(self.params),
                                     {n: t.detach() for n, t in {**self.own, **self.extra}.items()}, self.causal))
        y = self.drop(r.out).transpose(1, 2).reshape(B, N, self.h * self.d)  # [B, N, C]
        return self.proj(y), r.state

    def require(self, n: int, m: int, *, device: str = "cpu", dtype: str = "float32", train: bool = True,
                batch: int = 1) -> None:
        """Raise :class:`Unsupported` with the registry's reasons if this block's variant, with its
        resolved params, cannot attend ``n`` queries to ``m`` keys here."""
        shape = Shape(batch=batch, heads=self.h, kv_heads=self.hkv, seq_len=n, kv_len=m, head_dim=self.d,
                      dtype=dtype, device=device, causal=self.causal, mode="fwd+bwd" if train else "fwd")
        reasons = self.spec.not_supported_reasons(shape, self.params)
        if reasons:
            raise Unsupported(f"{self.spec.name}: " + "; ".join(reasons))

    def _check(self, q: torch.Tensor, k: torch.Tensor) -> None:
        """The registry's reasons for this call's case, once per case (Unsupported if any)."""
        train = torch.is_grad_enabled() and q.requires_grad
        key = (q.shape[2], k.shape[2], str(q.device), q.dtype, train)
        if key in self._checked:
            return
        self.require(key[0], key[1], device=key[2], dtype=str(q.dtype).removeprefix("torch."), train=train,
                     batch=q.shape[0])
        self._checked.add(key)

    def set_params(self, overrides: dict[str, Any]) -> None:
        """Re-resolve the variant's params with ``overrides``; learned tensors keep their shapes."""
        params = self.spec.resolve_params({**self.overrides, **overrides})
        if self.spec.learned:
            new = self.spec.learned(self.h, self.d, params)
            bad = [k for k, t in new.items() if t.shape != self.own[k].shape]
            if bad:
                raise ValueError(f"params {overrides!r} change the shape of the learned {', '.join(bad)}; "
                                 f"allowed: overrides that keep the model's parameters")
        self.overrides, self.params = {**self.overrides, **overrides}, params
        self._checked.clear()


class Skeleton(nn.Module):
    """What every model adds to nn.Module: its record, variant params for evaluation, weights."""

    record: dict[str, Any]

    def attentions(self) -> list[Attention]:
        return [m for m in self.modules() if isinstance(m, Attention)]

    def has_memory(self) -> bool:
        """Whether the variant carries memory across calls (state worth passing back)."""
        return any(carries_state(a.spec) for a in self.attentions())

    def set_variant_params(self, **overrides: Any) -> None:
        """Evaluate with other variant params from now on (``mem_len=0``: what XL's memory buys)."""
        for a in self.attentions():
            a.set_params(overrides)
        self.record["params"] = dict(self.attentions()[0].params)

    @contextlib.contextmanager
    def variant_params(self, **overrides: Any) -> Iterator[None]:
        """``with model.variant_params(mem_len=0): ...`` then back to the params before."""
        before = [(a.overrides, a.params) for a in self.attentions()]
        self.set_variant_params(**overrides)
        try:
            yield
        finally:
            for a, (o, p) in zip(self.attentions(), before):
                a.overrides, a.params = o, p
                a._checked.clear()
            self.record["params"] = dict(self.attentions()[0].params)

    @contextlib.contextmanager
    def capturing(self) -> Iterator[list[list[Call]]]:
        """``with model.capturing() as calls: model(x)``; ``calls[i]`` holds the :class:`Call` s of
        the i-th attention module (in ``attentions()`` order) made inside the block."""
        mods = self.attentions()
        calls: list[list[Call]] = [[] for _ in mods]
        for a, c in zip(mods, calls):
            a.capture = c
        try:
            yield calls
        finally:
            for a in mods:
                a.capture = None

    @contextlib.contextmanager
    def attention_weights(self) -> Iterator[list]:
        """``with model.attention_weights() as ws: model(x)``; after the block ws holds each
        layer's weights of the last call [B, H, N, M] (None where the kernel cannot return them)."""
        ws: list = []
        for a in self.attentions():
            a.need_weights = True
        try:
            yield ws
        finally:
            for a in self.attentions():
                ws.append(a.weights)
                a.need_weights, a.weights = False, None
