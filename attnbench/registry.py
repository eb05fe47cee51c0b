"""The variant registry: what every attention operator is, declared once. A leaf module: it
imports the ground floor (case, params, costs, vocab) and no variant. ``attnbench.catalog`` is
the one loader that fills it (builtins, plugins, entry points); look names up through it.

A variant is named ``pattern@kernel`` (``full@sdpa``, ``sliding_window@blocked``). Capabilities
live on the kernel (as in xformers' fmha operators): devices, dtypes, causal, K/V-head sharing,
backward, optional dependencies, and its parameters with their defaults (``params``).
``not_supported_reasons(shape, params)`` turns them into plain-language reasons, every one of
them at once; an empty list means the case can run.
"""
from __future__ import annotations

import contextlib
import difflib
import fnmatch
import importlib.util
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping

from attnbench import params as P
from attnbench.case import DTYPES, AttnOutput, Shape, Unsupported
from attnbench.costs import dense_bytes, dense_flops
from attnbench.tolerance import DEFAULT_TOLERANCES, Tolerance
from attnbench.vocab import FAMILIES, MODES

__all__ = ["AttnOutput", "Shape", "Unsupported", "VariantSpec", "UnknownVariant", "DuplicateVariant",
           "register", "add"]

CostFn = Callable[[Shape, Mapping[str, Any]], float]


def _dense_flops(shape: Shape, params: Mapping[str, Any]) -> float:
    return dense_flops(shape)


def _dense_bytes(shape: Shape, params: Mapping[str, Any]) -> float:
    return dense_bytes(shape)


@dataclass(frozen=True)
class VariantSpec:
    """Everything the suite knows about one ``pattern@kernel``.

    ``forward(q, k, v, *, causal=False, state=None, need_weights=False, **params)`` takes
    q [B, H, N, D], k/v [B, Hkv, M, D] and returns an :class:`AttnOutput`. ``params`` declares
    every keyword the kernel takes beyond those, with its default and what is allowed.
    Cost functions take ``(shape, params)`` with the case's resolved params.
    """

    name: str
    forward: Callable[..., AttnOutput]
    family: str
    exact: bool
    time: str
    memory: str
    doc: str = ""
    params: dict[str, P.Param] = field(default_factory=dict)
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float32", "float64", "bfloat16", "float16")
    causal: bool = True
    cross: bool = True  # N != M supported
    kv_heads: bool = True  # Hkv < H supported (MQA / GQA)
    backward: tuple[str, ...] = ("cpu", "cuda")  # devices with a backward pass
    needs: tuple[str, ...] = ()  # optional packages, imported lazily
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    paper: str = ""
    returns_weights: bool = False
    # Fixed K/V-head rule (mqa: 1 head, gqa: heads // 4); None means the case's --kv-heads.
    kv_heads_rule: Callable[[int], int] | None = None
    flops_fn: CostFn = _dense_flops  # forward FLOPs; the mode factor is applied here
    bytes_fn: CostFn = _dense_bytes
    # Predicted peak bytes above the inputs of one call in shape.mode (autograd included for the
    # backward modes); None: the variant declares it cannot predict its memory.
    memory_fn: CostFn | None = None
    # Kernel-specific reasons beyond the declared capabilities (an SDPA backend's own checks).
    extra_reasons: Callable[[Shape, Mapping[str, Any]], list[str]] | None = None
    reference: str = "full"  # which definition it must equal: 'full' or a pattern's name
    # The variant's own dense definition, when it is not softmax attention under a mask
    # (FAVOR+ with its drawn features, LSH with its drawn rotations, Transformer-XL's relative
    # scores): ``reference_fn(q, k, v, *, causal, rows=None, **params) -> out [B, H, R, D]``.
    reference_fn: Callable[..., Any] | None = None
    # What a non-exact variant approximates, for its ``rel_err`` (attnbench.approx):
    # ``target_fn(q, k, v, *, causal, **params) -> out [B, H, N, D]``; None = softmax attention.
    target_fn: Callable[..., Any] | None = None
    # The variant's implied attention over its keys, for a variant whose own definition is not
    # softmax under a mask (reference_fn): ``weights_fn(q, k, v, *, causal, **params) ->
    # (weights [B, H, N, M] rows summing to 1 or 0, support bool broadcastable to [B, H, N, M]
    # or None)``; support = the keys a row may attend beyond causality (LSH's bucket-mates), or
    # None when every causal key is attended. Read by ``attnbench.stats.implied``.
    weights_fn: Callable[..., Any] | None = None
    # Decode with a running state (linear attention, FAVOR+): ``decode_state(k, v, **params)``
    # summarizes the first M-1 cached keys; decode mode then times one O(1) step.
    decode_state: Callable[..., Any] | None = None
    default: bool = False  # the kernel that the bare pattern name means
    source: str = "builtin"  # builtin | plugin file | entry point
    # The variant brings its own relative positions (Swin's bias table, XL's relative terms): a
    # model skeleton then adds no absolute positions unless its config asks for both.
    relative_positions: bool = False
    # The variant's own learned tensors: ``learned(heads, head_dim, params) -> {name: initial
    # value}``; a model registers them as parameters, passes them to ``forward`` as keywords of
    # those names and counts them (XL's u, v_bias, W_r). None: the kernel learns nothing.
    learned: Callable[[int, int, Mapping[str, Any]], dict[str, Any]] | None = None

    @property
    def pattern(self) -> str:
        return self.name.split("@", 1)[0]

    @property
    def kernel(self) -> str:
        return self.name.split("@", 1)[1]

    @property
    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}

    def resolve_params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every declared parameter: the override, else the default; validated (ParamError)."""
        return P.resolve(self.name, self.params, overrides or {})

    def resolve_shape(self, shape: Shape) -> Shape:
        """The shape this variant actually runs: mqa/gqa fix their own K/V heads."""
        if self.kv_heads_rule is None:
            return shape
        return replace(shape, kv_heads=self.kv_heads_rule(shape.heads))

    def tolerance(self, dtype: str) -> Tolerance:
        return self.tolerances.get(dtype, DEFAULT_TOLERANCES[dtype])

    def missing_packages(self) -> list[str]:
        return [p for p in self.needs if importlib.util.find_spec(p) is None]

    def not_supported_reasons(self, shape: Shape, params: Mapping[str, Any] | None = None) -> list[str]:
        """Why this variant cannot run ``shape`` with ``params`` here; empty means it can."""
        shape = self.resolve_shape(shape)
        r = [f"needs the '{pkg}' package (pip install 'attnbench[{pkg}]')" for pkg in self.missing_packages()]
        if shape.device.split(":")[0] not in self.devices:
            r.append(f"device {shape.device} not supported (supports: {', '.join(self.devices)})")
        if shape.dtype not in self.dtypes:
            r.append(f"dtype {shape.dtype} not supported (supports: {', '.join(self.dtypes)})")
        if shape.causal and not self.causal:
            r.append("causal masking not supported")
        if shape.seq_len != shape.kv_len and not self.cross and shape.mode != "decode":
            r.append(f"N != M ({shape.seq_len} vs {shape.kv_len}) not supported")
        if shape.kv_heads != shape.heads and not self.kv_heads:
            r.append(f"kv_heads={shape.kv_heads} < heads={shape.heads} (MQA/GQA) not supported")
        if shape.heads % shape.kv_heads:
            r.append(f"heads={shape.heads} is not a multiple of kv_heads={shape.kv_heads}")
        if shape.needs_grad and shape.device.split(":")[0] not in self.backward:
            r.append(f"no backward pass on {shape.device}")
        if not r and self.extra_reasons is not None:
            r.extend(self.extra_reasons(shape, self._params(params)))
        return r

    def _params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        return self.resolve_params(params) if params is None or set(params) != set(self.params) else dict(params)

    def flops(self, shape: Shape, params: Mapping[str, Any] | None = None) -> float:
        """FLOPs of one call in ``shape.mode`` (backward by the 2.5x / 3.5x rule)."""
        shape = self.resolve_shape(shape)
        return self.flops_fn(shape, self._params(params)) * MODES[shape.mode]

    def bytes(self, shape: Shape, params: Mapping[str, Any] | None = None) -> float:
        shape = self.resolve_shape(shape)
        return self.bytes_fn(shape, self._params(params)) * MODES[shape.mode]

    def predicted_peak_bytes(self, shape: Shape, params: Mapping[str, Any] | None = None) -> float | None:
        """Predicted peak bytes of one call above the inputs in ``shape.mode``, or None."""
        if self.memory_fn is None:
            return None
        return float(self.memory_fn(self.resolve_shape(shape), self._params(params)))

    def __call__(self, q, k, v, *, causal: bool = False, state=None, need_weights: bool = False,
                 **params) -> AttnOutput:
        """Run the kernel with ``params`` resolved against the declaration (defaults, checks)."""
        return self.forward(q, k, v, causal=causal, state=state, need_weights=need_weights,
                            **self.resolve_params(params))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "pattern": self.pattern, "kernel": self.kernel, "family": self.family,
            "exact": self.exact, "time": self.time, "memory": self.memory, "devices": list(self.devices),
            "dtypes": list(self.dtypes), "causal": self.causal, "kv_heads": self.kv_heads,
            "backward": list(self.backward), "needs": list(self.needs), "defaults": self.defaults,
            "params": {k: {"default": p.default, "allowed": p.allowed, "doc": p.doc} for k, p in self.params.items()},
            "paper": self.paper, "doc": self.doc, "source": self.source,
            "own_reference": self.reference_fn is not None,
            # masked softmax (no own definition) or the declared weights_fn: weights can be formed
            "implied_weights": self.reference_fn is None or self.weights_fn is not None,
            "running_state_decode": self.decode_state is not None,
            "predicts_memory": self.memory_fn is not None,
            "relative_positions": self.relative_positions,
            "learned": self.learned is not None,
        }


class UnknownVariant(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class DuplicateVariant(ValueError):
    """A second registration of a name, without ``replace=True``."""


_REGISTRY: dict[str, VariantSpec] = {}
_CURRENT_SOURCE = "builtin"


@contextlib.contextmanager
def source(label: str) -> Iterator[None]:
    """Registrations inside the block are marked as coming from ``label`` (a plugin, an entry point)."""
    global _CURRENT_SOURCE
    before, _CURRENT_SOURCE = _CURRENT_SOURCE, label
    try:
        yield
    finally:
        _CURRENT_SOURCE = before


def inferred_params(defaults: Mapping[str, Any]) -> dict[str, P.Param]:
    """Params for a plugin that gives only ``defaults={...}``: each value's type is what is allowed."""
    out = {}
    for k, d in defaults.items():
        if isinstance(d, bool):
            out[k] = P.boolean(d)
        elif isinstance(d, int):
            out[k] = P.integer(d, minimum=-(2 ** 63))
        elif isinstance(d, float):
            out[k] = P.number(d, minimum=float("-inf"))
        else:
            out[k] = P.Param(d, f"a value like {d!r}", lambda x: x)
    return out


def register(name: str, *, replace: bool = False, defaults: Mapping[str, Any] | None = None,
             **spec_fields: Any) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as variant ``name`` (``pattern@kernel``).

    >>> @register("mine@blocked", family="window", exact=True, time="O(n w d)", memory="O(n w)",
    ...           params={"window": P.integer(128, minimum=0)})
    ... def mine(q, k, v, *, causal=False, state=None, need_weights=False, window):
    ...     ...

    ``defaults={...}`` is shorthand for params whose type is inferred from each default.
    """
    if defaults:
        spec_fields["params"] = {**inferred_params(defaults), **spec_fields.get("params", {})}

    def deco(fn: Callable) -> Callable:
        add(VariantSpec(name=name, forward=fn, **spec_fields), replace=replace)
        return fn

    return deco


def add(spec: VariantSpec, *, replace: bool = False) -> VariantSpec:
    """Register a ready-made spec (the decorator's back end). A name that exists already raises
    :class:`DuplicateVariant` unless ``replace=True``."""
    if spec.name.count("@") != 1 or not all(spec.name.split("@")):
        raise ValueError(f"variant name {spec.name!r} must be 'pattern@kernel'")
    if spec.family not in FAMILIES:
        raise ValueError(f"family {spec.family!r} of {spec.name} not in {tuple(FAMILIES)}")
    bad = [d for d in spec.dtypes if d not in DTYPES]
    if bad:
        raise ValueError(f"dtypes {bad} of {spec.name} not in {list(DTYPES)}")
    if spec.name in _REGISTRY and not replace:
        raise DuplicateVariant(f"variant {spec.name!r} is registered already (by {_REGISTRY[spec.name].source}); "
                               f"pass replace=True to replace it")
    if spec.source == "builtin" and _CURRENT_SOURCE != "builtin":
        spec = dataclass_replace(spec, source=_CURRENT_SOURCE)
    _REGISTRY[spec.name] = spec
    return spec


dataclass_replace = replace  # `replace` is also add()'s keyword


def specs() -> list[VariantSpec]:
    """Every registered spec, sorted by name (what has been loaded so far)."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def registered(name: str) -> VariantSpec | None:
    """The spec registered under exactly ``name``, or None."""
    return _REGISTRY.get(name)


def default_kernel(pattern: str) -> str | None:
    cands = sorted((s for s in _REGISTRY.values() if s.pattern == pattern), key=lambda s: s.name)
    for s in cands:
        if s.default:
            return s.name
    return cands[0].name if cands else None


def lookup(name: str) -> VariantSpec:
    """The spec for ``pattern@kernel`` or a bare ``pattern`` (its default kernel)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "@" not in name:
        d = default_kernel(name)
        if d is not None:
            return _REGISTRY[d]
    choices = sorted(_REGISTRY) + sorted({s.pattern for s in _REGISTRY.values()})
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownVariant(f"unknown variant {name!r};{hint} known variants: {', '.join(sorted(_REGISTRY))}")


def expand(item: str) -> list[str]:
    """Registered names for one selector: 'all' (the test family aside), an fnmatch glob (sorted)
    or a name / bare pattern. Nothing matched raises :class:`UnknownVariant`."""
    if item == "all":
        return [n for n in sorted(_REGISTRY) if _REGISTRY[n].family != "test"]
    if any(c in item for c in "*?["):
        hits = [n for n in sorted(_REGISTRY) if fnmatch.fnmatchcase(n, item)]
        if not hits:
            raise UnknownVariant(f"--variants {item!r} matches nothing; known variants: {', '.join(sorted(_REGISTRY))}")
        return hits
    return [lookup(item).name]
