"""The statistics of one variant setting on one source's layers: samples in, rows out.

Per layer: the variant's params for that layer (the model's own when it is the model's variant,
else the task's ``variant_params`` under the setting's, with a grid variant given the layer's
grid), the registry's reasons if it cannot run the layer's case, its implied attention and its
kernel's output on the layer's q, k, v (``attnbench.stats.implied``), exact attention on the same
inputs; then every statistic whose needs the sample meets. Whatever fails becomes rows with its
status and reasons; the other statistics and layers go on. After the last layer the model-scope
statistics (rollout) read every layer.

One check of the implied weights rides along: stat ``implied``, column ``kernel_rel_err`` =
‖kernel output − weights · v‖ / ‖kernel output‖, so a statistic is never drawn from weights
that are not what the kernel computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch

from attnbench import params as P
from attnbench.case import Shape
from attnbench.harness.failures import classify
from attnbench.models.attention import grid_params, takes_grid
from attnbench.registry import VariantSpec
from attnbench.stats import base, implied
from attnbench.stats.capture import Layer
from attnbench.stats.schema import make_row
from attnbench.stats.sources import Source

MAX_PAIRS = 2 ** 25  # implied attention materializes B x H x N x M float64 values
LAYER_KEYS = ("grid", "shift", "ratio")  # params a vision block gives its variant (attention.grid_params)


@dataclass
class Setting:
    spec: VariantSpec
    params: dict[str, Any]  # the setting's own overrides (from --variants' brackets)

    @property
    def label(self) -> str:
        return P.format_params(P.non_default(self.spec.params, self.params))


class Skip(Exception):
    """A layer the setting cannot describe: (status, reasons) for every statistic's row."""

    def __init__(self, status: str, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.status, self.reasons = status, reasons


def layer_params(st: Setting, src: Source, layer: Layer, index_in_stage: int) -> tuple[dict, dict]:
    """(params, tensors) the setting's kernel runs this layer with (module docstring)."""
    c, spec = layer.call, st.spec
    if src.model_variant == spec.name and not st.params:
        return dict(c.params), dict(c.tensors)
    given = dict((src.config.get("variant_params") or {}).get(spec.pattern, {}))
    given.update(st.params)
    g = layer.geometry
    if takes_grid(spec) and g.grid is not None and g.prefix == 0 and "grid" not in st.params:
        ratio = int(c.params.get("ratio") or 1) if "ratio" in c.params else None
        given.update(grid_params(spec, g.grid, index_in_stage, ratio))
    resolved = spec.resolve_params(given)
    tensors = spec.learned(c.q.shape[1], c.q.shape[3], resolved) if spec.learned else {}
    return resolved, {k: t.double() for k, t in tensors.items()}


def _reasons(spec: VariantSpec, call, params: dict) -> list[str]:
    q, k = call.q, call.k
    shape = Shape(batch=q.shape[0], heads=q.shape[1], kv_heads=k.shape[1], seq_len=q.shape[2], kv_len=k.shape[2],
                  head_dim=q.shape[3], dtype="float64", device="cpu", causal=call.causal, mode="fwd")
    if spec.kv_heads_rule is not None and spec.kv_heads_rule(q.shape[1]) != k.shape[1]:
        return [f"{spec.name} attends with {spec.kv_heads_rule(q.shape[1])} K/V head(s); this layer's keys have "
                f"{k.shape[1]} (its queries and keys come from a model with other K/V heads)"]
    return spec.not_supported_reasons(shape, params)


def to_attention(imp: implied.Implied, layer: Layer) -> base.LayerAttention:
    g = layer.geometry
    return base.LayerAttention(imp.weights, imp.allowed, imp.support, g.query_pos, g.key_pos, g.pixels,
                               g.prefix, g.prefix if imp.weights.shape[-1] == g.key_pos.shape[0] else 0, g.grid)


def sample(st: Setting, src: Source, layer: Layer, index_in_stage: int) -> tuple[base.Sample, dict, float]:
    """The layer's sample for the setting, its params and the kernel-vs-implied check; Skip."""
    params, tensors = layer_params(st, src, layer, index_in_stage)
    c = layer.call
    why = _reasons(st.spec, c, params)
    if why:
        raise Skip("unsupported", why)
    q, k, v = c.q.double(), c.k.double(), c.v.double()
    tensors = {n: t.double() for n, t in tensors.items()}
    try:
        imp = implied.implied(st.spec, q, k, v, causal=c.causal, params=params, extra=tensors, max_pairs=MAX_PAIRS)
        ex, ex_out = implied.exact(st.spec, q, k, v, causal=c.causal, params=params, extra=tensors,
                                   max_pairs=MAX_PAIRS)
        out = st.spec.forward(q, k, v, causal=c.causal, state=None, need_weights=False, **params, **tensors).out
    except Exception as e:  # noqa: BLE001 - the layer's rows say what failed
        status, reasons = classify(e)
        raise Skip(status, reasons) from None
    hkv, h = v.shape[1], q.shape[1]
    ref = torch.matmul(imp.weights, v.repeat_interleave(h // hkv, dim=1)) if imp.weights.shape[-1] == v.shape[2] \
        else None  # [B, H, N, D]
    check = float((out.double() - ref).norm() / out.double().norm().clamp_min(1e-300)) if ref is not None else None
    s = base.Sample(to_attention(imp, layer), to_attention(ex, layer), out.double(), ex_out.double(),
                    self_attention=c.q.shape[2] == c.k.shape[2], hierarchical=src.hierarchical)
    return s, params, check


def compute(stat: base.Statistic, s: base.Sample) -> Iterator[tuple[str, int | None, dict[str, Any]]]:
    """(column, head, {value | series, series_shape}) of one statistic on one sample."""
    res = stat.fn(s)
    one = stat.scope == "model"
    for col, t in res.values.items():
        for h in range(t.shape[0]):
            yield col, None if one else h, {"value": float(t[h])}
    for col, t in res.series.items():
        for h in range(t.shape[0]):
            yield col, None if one else h, {"series": [round(float(x), 6) for x in t[h].reshape(-1)],
                                            "series_shape": list(t.shape[1:])}


def stat_rows(stats: list[base.Statistic], s: base.Sample, ident: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row of ``stats`` on ``s``: values, or one row per statistic with why not."""
    rows = []
    for stat in stats:
        why = stat.reasons(s)
        if why:
            rows.append(make_row(**ident, stat=stat.name, status="unsupported", reasons=why))
            continue
        try:
            got = list(compute(stat, s))
        except Exception as e:  # noqa: BLE001 - one statistic's failure is its row
            status, reasons = classify(e)
            rows.append(make_row(**ident, stat=stat.name, status=status, reasons=reasons))
            continue
        rows += [make_row(**ident, stat=stat.name, column=col, head=h, status="ok", **fig) for col, h, fig in got]
    return rows


def identity(st: Setting, src: Source, layer: Layer, git_sha: str | None, seed: int) -> dict[str, Any]:
    """The fields that say which case a row is, known before anything is computed."""
    c, s = layer.call, st.spec
    return dict(source=src.kind, input=src.input, checkpoint_sha=src.checkpoint_sha, task=src.task, arch=src.arch,
                model_variant=src.model_variant, variant=s.name, pattern=s.pattern, kernel=s.kernel, family=s.family,
                exact=s.exact, weights_from="implied", params=st.params, param_label=st.label, seq_len=c.q.shape[2],
                kv_len=c.k.shape[2], batch=c.q.shape[0], heads=c.q.shape[1], head_dim=c.q.shape[3], causal=c.causal,
                layer=layer.index, stage=layer.geometry.stage, seed=seed, dtype="float64", device="cpu",
                git_sha=git_sha)


def setting_rows(st: Setting, src: Source, stats: list[base.Statistic], *, git_sha: str | None = None,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Every row of the setting on the source's layers (module docstring)."""
    per_layer = [s for s in stats if s.scope == "head"]
    whole = [s for s in stats if s.scope == "model"]
    rows, samples, failed = [], [], []
    for layer in src.layers:
        ident = identity(st, src, layer, git_sha, seed)
        stage_index = sum(1 for other in src.layers[:layer.index] if other.geometry.stage == layer.geometry.stage)
        try:
            s, params, check = sample(st, src, layer, stage_index)
        except Skip as e:
            rows += [make_row(**ident, stat=stat.name, status=e.status, reasons=e.reasons) for stat in per_layer]
            failed.append(f"layer {layer.index}: {'; '.join(e.reasons)}")
            continue
        named = {k: v for k, v in params.items() if k in st.params or k not in LAYER_KEYS}  # not the block's own
        ident.update(params=params, param_label=P.format_params(P.non_default(st.spec.params, named)))
        if check is not None:
            rows.append(make_row(**ident, stat="implied", column="kernel_rel_err", value=check, status="ok"))
        rows += stat_rows(per_layer, s, ident)
        samples.append((s, ident))
    if whole and src.layers:
        last = identity(st, src, src.layers[-1], git_sha, seed) if not samples else dict(samples[-1][1])
        last.update(layer=None, stage=None)
        if failed:
            rows += [make_row(**last, stat=stat.name, status="unsupported",
                              reasons=["needs every layer; " + f for f in failed]) for stat in whole]
        else:
            s = samples[-1][0]
            model = base.Sample(s.attn, s.exact, s.out, s.exact_out, layers=[x.attn for x, _ in samples],
                                self_attention=all(x.self_attention for x, _ in samples),
                                hierarchical=src.hierarchical)
            rows += stat_rows(whole, model, last)
    return rows
