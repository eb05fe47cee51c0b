"""The variant registry: the single source of truth for every attention operator.

A variant is named ``pattern@kernel`` (``full@sdpa``, ``mqa@naive``). ``pattern`` alone means
that pattern's default kernel. The CLI, the tests, the reports and the docs enumerate this
registry; nothing else keeps a list of variant names.

Capabilities live on the kernel (as in xformers' fmha operators): devices, dtypes, causal,
K/V-head sharing, backward, optional dependencies. ``not_supported_reasons(shape)`` turns them
into plain-language reasons; an empty list means the case can run.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

FAMILIES = ("dense", "window", "sparse", "lsh", "linear", "kv_share", "memory", "test")
MODES = ("fwd", "bwd", "fwd+bwd", "decode")
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# Work factors relative to the forward pass (the usual rule: backward ~ 2x forward matmuls).
MODE_FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5, "decode": 1.0}


class AttnOutput(NamedTuple):
    """What a kernel returns; one meaning per field.

    out:     [B, H, N, D] attention output.
    weights: [B, H, N, M] attention probabilities, only when asked and the kernel can.
    lse:     [B, H, N] log-sum-exp of the scaled scores, where the kernel produces it.
    state:   whatever a stateful variant carries to its next call (memory, running sums).
    """

    out: torch.Tensor
    weights: torch.Tensor | None = None
    lse: torch.Tensor | None = None
    state: Any = None


@dataclass(frozen=True)
class Shape:
    """One case's problem: q [B, H, N, D], k/v [B, Hkv, M, D]."""

    batch: int
    heads: int
    kv_heads: int
    seq_len: int  # N, queries
    kv_len: int  # M, keys / values (the KV cache length in decode mode)
    head_dim: int
    dtype: str = "float32"
    device: str = "cpu"
    causal: bool = False
    mode: str = "fwd"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    @property
    def needs_grad(self) -> bool:
        return self.mode in ("bwd", "fwd+bwd")

    def attended_pairs(self) -> int:
        """(query, key) pairs a dense kernel must score, per batch and head.

        Causal is bottom-right aligned (query i sees keys j <= i + M - N), as in
        FlashAttention >= 2.1, so a decode query sees its whole cache.
        """
        n, m = self.seq_len, self.kv_len
        if not self.causal:
            return n * m
        # row i sees clamp(i + M - N + 1, 0, M) keys
        return int(np.clip(np.arange(n, dtype=np.int64) + (m - n) + 1, 0, m).sum())


def dense_flops(shape: Shape) -> float:
    """Forward FLOPs of exact attention: QK^T and PV, 2 FLOPs per multiply-add each."""
    return 4.0 * shape.batch * shape.heads * shape.head_dim * shape.attended_pairs()


def dense_bytes(shape: Shape) -> float:
    """Minimum bytes moved by a fused kernel: read q, k, v and write the output once."""
    e = shape.element_size
    q_o = 2 * shape.batch * shape.heads * shape.seq_len * shape.head_dim
    kv = 2 * shape.batch * shape.kv_heads * shape.kv_len * shape.head_dim
    return float((q_o + kv) * e)


def io_bytes(shape: Shape) -> int:
    """Bytes of q, k, v and the output: the floor of any kernel's footprint."""
    return int(dense_bytes(shape))


@dataclass(frozen=True)
class Tolerance:
    """Absolute floor added to the FlashAttention rule (error <= 2x torch's own + floor)."""

    atol: float
    rtol: float = 0.0


DEFAULT_TOLERANCES = {
    "float64": Tolerance(1e-10),
    "float32": Tolerance(2e-5, rtol=1e-5),
    "float16": Tolerance(2e-3),
    "bfloat16": Tolerance(1.6e-2),
}


class Unsupported(Exception):
    """Raised by a kernel that finds at run time that it cannot run this case.

    The harness turns it into an ``unsupported`` row carrying the message (for example
    xformers' own dispatch explanation), never into an ``error``.
    """


@dataclass(frozen=True)
class VariantSpec:
    """Everything the suite knows about one ``pattern@kernel``.

    ``forward(q, k, v, *, causal=False, state=None, need_weights=False, **params)`` takes
    q [B, H, N, D], k/v [B, Hkv, M, D] and returns an :class:`AttnOutput`.
    """

    name: str
    forward: Callable[..., AttnOutput]
    family: str
    exact: bool
    time: str
    memory: str
    doc: str = ""
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float32", "float64", "bfloat16", "float16")
    causal: bool = True
    cross: bool = True  # N != M supported
    kv_heads: bool = True  # Hkv < H supported (MQA / GQA)
    backward: tuple[str, ...] = ("cpu", "cuda")  # devices with a backward pass
    needs: tuple[str, ...] = ()  # optional packages, imported lazily
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    paper: str = ""
    returns_weights: bool = False
    # Fixed K/V-head rule (mqa: 1 head, gqa: heads // 4); None means the case's --kv-heads.
    kv_heads_rule: Callable[[int], int] | None = None
    flops_fn: Callable[[Shape], float] = dense_flops
    bytes_fn: Callable[[Shape], float] = dense_bytes
    # Predicted peak bytes above the inputs for one call, to skip cases that would not fit.
    memory_fn: Callable[[Shape], float] | None = None
    # Kernel-specific reasons beyond the declared capabilities (an SDPA backend's own checks).
    extra_reasons: Callable[[Shape], list[str]] | None = None
    reference: str = "full"  # which definition in attnbench.reference it must equal
    # The variant's own dense definition, when it is not softmax attention under a mask
    # (FAVOR+ with its drawn features, LSH with its drawn rotations, Transformer-XL's relative
    # scores): ``reference_fn(q, k, v, *, causal, rows=None, **params) -> out [B, H, R, D]``
    # computed at the inputs' dtype with dense tensors (rows: the query rows to return, or all).
    # check/run compare the kernel with it (outputs and gradients) instead of ``reference``.
    reference_fn: Callable[..., torch.Tensor] | None = None
    # What a non-exact variant approximates, for its ``rel_err`` (attnbench.approx):
    # ``target_fn(q, k, v, *, causal, **params) -> out [B, H, N, D]``; None = softmax attention.
    target_fn: Callable[..., torch.Tensor] | None = None
    # Decode with a running state (linear attention, FAVOR+): ``decode_state(k, v, **params)``
    # summarizes the first M-1 cached keys; decode mode builds it untimed and times
    # ``forward(q, k_last, v_last, state=state)`` — O(1) in M per token.
    decode_state: Callable[..., Any] | None = None
    default: bool = False  # the kernel that the bare pattern name means
    source: str = "builtin"  # builtin | plugin file | entry point

    @property
    def pattern(self) -> str:
        return self.name.split("@", 1)[0]

    @property
    def kernel(self) -> str:
        return self.name.split("@", 1)[1]

    def resolve_shape(self, shape: Shape) -> Shape:
        """The shape this variant actually runs: mqa/gqa fix their own K/V heads."""
        if self.kv_heads_rule is None:
            return shape
        return replace(shape, kv_heads=self.kv_heads_rule(shape.heads))

    def tolerance(self, dtype: str) -> Tolerance:
        return self.tolerances.get(dtype, DEFAULT_TOLERANCES[dtype])

    def missing_packages(self) -> list[str]:
        return [p for p in self.needs if importlib.util.find_spec(p) is None]

    def not_supported_reasons(self, shape: Shape) -> list[str]:
        """Why this variant cannot run ``shape`` here; empty means it can."""
        shape = self.resolve_shape(shape)
        r: list[str] = []
        for pkg in self.missing_packages():
            r.append(f"needs the '{pkg}' package (pip install 'attnbench[{pkg}]')")
        if shape.device not in self.devices:
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
        if shape.needs_grad and shape.device not in self.backward:
            r.append(f"no backward pass on {shape.device}")
        if not r and self.extra_reasons is not None:
            r.extend(self.extra_reasons(shape))
        return r

    def flops(self, shape: Shape) -> float:
        """FLOPs of one call in ``shape.mode`` (backward by the 2.5x / 3.5x rule)."""
        shape = self.resolve_shape(shape)
        return self.flops_fn(shape) * MODE_FLOP_FACTOR[shape.mode]

    def bytes(self, shape: Shape) -> float:
        shape = self.resolve_shape(shape)
        return self.bytes_fn(shape) * MODE_FLOP_FACTOR[shape.mode]

    def predicted_peak_bytes(self, shape: Shape) -> float | None:
        """Predicted peak bytes of one call above the inputs, or None if unknown."""
        if self.memory_fn is None:
            return None
        shape = self.resolve_shape(shape)
        factor = {"fwd": 1.0, "decode": 1.0, "bwd": 2.0, "fwd+bwd": 2.0}[shape.mode]
        return self.memory_fn(shape) * factor

    def __call__(self, q, k, v, **kw) -> AttnOutput:
        params = {**self.defaults, **kw}
        return self.forward(q, k, v, **params)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pattern": self.pattern,
            "kernel": self.kernel,
            "family": self.family,
            "exact": self.exact,
            "time": self.time,
            "memory": self.memory,
            "devices": list(self.devices),
            "dtypes": list(self.dtypes),
            "causal": self.causal,
            "kv_heads": self.kv_heads,
            "backward": list(self.backward),
            "needs": list(self.needs),
            "defaults": dict(self.defaults),
            "paper": self.paper,
            "doc": self.doc,
            "source": self.source,
            "own_reference": self.reference_fn is not None,
            "running_state_decode": self.decode_state is not None,
        }


_REGISTRY: dict[str, VariantSpec] = {}
_LOADED = False
_CURRENT_SOURCE = "builtin"
ENTRY_POINT_GROUP = "attnbench.variants"


def register(name: str, **spec_fields: Any) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as variant ``name`` (``pattern@kernel``).

    >>> @register("mine@blocked", family="window", exact=True, time="O(n w d)", memory="O(n w)")
    ... def mine(q, k, v, *, causal=False, state=None, need_weights=False):
    ...     ...
    """

    def deco(fn: Callable) -> Callable:
        add(VariantSpec(name=name, forward=fn, **spec_fields))
        return fn

    return deco


def add(spec: VariantSpec) -> VariantSpec:
    """Register a ready-made spec (the decorator's back end)."""
    if spec.name.count("@") != 1 or not all(spec.name.split("@")):
        raise ValueError(f"variant name {spec.name!r} must be 'pattern@kernel'")
    if spec.family not in FAMILIES:
        raise ValueError(f"family {spec.family!r} of {spec.name} not in {FAMILIES}")
    bad = [d for d in spec.dtypes if d not in DTYPES]
    if bad:
        raise ValueError(f"dtypes {bad} of {spec.name} not in {list(DTYPES)}")
    if spec.source == "builtin" and _CURRENT_SOURCE != "builtin":
        spec = replace(spec, source=_CURRENT_SOURCE)
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    importlib.import_module("attnbench.variants")
    load_entry_points()


def load_entry_points() -> None:
    """Import third-party kernels declared under the ``attnbench.variants`` entry-point group."""
    from importlib.metadata import entry_points

    global _CURRENT_SOURCE
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _CURRENT_SOURCE = f"entry point {ep.name}"
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type(sys)):
                obj()  # a register() function rather than a module
        finally:
            _CURRENT_SOURCE = "builtin"


def load_plugin(path: str | Path) -> None:
    """Import a Python file whose ``@register`` decorators add variants (``--plugin FILE``)."""
    global _CURRENT_SOURCE
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--plugin {path}: no such file (give a path to a .py file)")
    _load_builtin()
    mod_name = f"attnbench_plugin_{abs(hash(str(p.resolve())))}"
    if mod_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(mod_name, p)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    _CURRENT_SOURCE = f"plugin {p}"
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)  # a fixed file can be loaded again in this process
        raise
    finally:
        _CURRENT_SOURCE = "builtin"


def all_specs() -> list[VariantSpec]:
    _load_builtin()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def _default_kernel(pattern: str) -> str | None:
    cands = [s for s in _REGISTRY.values() if s.pattern == pattern]
    for s in cands:
        if s.default:
            return s.name
    return sorted(cands, key=lambda s: s.name)[0].name if cands else None


class UnknownVariant(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def get(name: str) -> VariantSpec:
    """The spec for ``pattern@kernel`` or a bare ``pattern`` (its default kernel)."""
    _load_builtin()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "@" not in name:
        d = _default_kernel(name)
        if d is not None:
            return _REGISTRY[d]
    choices = sorted(_REGISTRY) + sorted({s.pattern for s in _REGISTRY.values()})
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownVariant(
        f"unknown variant {name!r};{hint} known variants: {', '.join(sorted(_REGISTRY))}"
    )


def names(selection: str | list[str] = "all") -> list[str]:
    """Expand ``all``, comma lists, bare patterns and fnmatch globs to registered names.

    A comma list keeps its order; the names a glob or ``all`` matches come sorted; each name once. Unknown names or globs that
    match nothing raise :class:`UnknownVariant`.
    """
    _load_builtin()
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise UnknownVariant("no variants selected; use 'all', names or globs such as 'full@*'")
    chosen: list[str] = []
    for item in items:
        if item == "all":
            hits = [n for n in sorted(_REGISTRY) if _REGISTRY[n].family != "test"]
        elif any(c in item for c in "*?["):
            hits = [n for n in sorted(_REGISTRY) if fnmatch.fnmatchcase(n, item)]
            if not hits:
                raise UnknownVariant(
                    f"--variants {item!r} matches nothing; known variants: {', '.join(sorted(_REGISTRY))}"
                )
        else:
            hits = [get(item).name]
        chosen.extend(h for h in hits if h not in chosen)
    return chosen
