"""Benchmark configuration: hydra-core composes ``conf/bench.yaml`` with CLI overrides.

CLI flags become config keys (``--seq-lens 512..4096`` -> ``seq_lens``) and ``key=value`` words
are hydra overrides, so both spellings work side by side. The values (with their reasons) live
in ``bench.yaml``; their types in :class:`BenchSchema`, a hydra structured config, so hydra
refuses ``memory=maybe`` or ``timing.min_repeats=abc`` while composing. Ranges are checked in
:func:`validate`, before anything is written: a bad value raises :class:`ConfigError` whose
one-line message names the value and what is allowed (every bad value at once).
"""
from __future__ import annotations

import difflib
import json
import os
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, List, Optional

from attnbench import params as P
from attnbench.case import DTYPES
from attnbench.harness.allocator import DEFAULT as ALLOCATOR_DEFAULT
from attnbench.harness.allocator import AllocatorError, allocator_env
from attnbench.vocab import MODES

CONF_DIR = Path(__file__).resolve().parent / "conf"
MISSING: Any = "???"  # omegaconf's MISSING: the value comes from bench.yaml (one place)
SEQ_LENS_RULE = "A..B (A, 2A, 4A, ... up to B: powers of two when A is one, e.g. 512..16384) or a list such as 512,1000,2048"


class ConfigError(ValueError):
    """Bad user input; the CLI prints it as one line and exits 2."""


@dataclass
class TimingSchema:
    budget_s: float = MISSING
    min_repeats: int = MISSING
    max_repeats: int = MISSING
    warmup_s: float = MISSING
    settle_rel: float = MISSING
    ci_min: int = MISSING
    disturbed_wait: float = MISSING
    retry_budget: float = MISSING


@dataclass
class ScalingSchema:
    min_seq_len: int = MISSING


@dataclass
class BenchSchema:
    """The type of every key of ``bench.yaml`` (values there). ``Any``: text or a list."""

    variants: Any = MISSING
    params: Any = MISSING
    seq_lens: Any = MISSING
    batch: int = MISSING
    heads: int = MISSING
    kv_heads: Optional[int] = MISSING
    head_dim: int = MISSING
    dtype: str = MISSING
    device: str = MISSING
    causal: bool = MISSING
    modes: Any = MISSING
    out: Optional[str] = MISSING
    resume: bool = MISSING
    seed: int = MISSING
    threads: Optional[int] = MISSING
    allocator: str = MISSING
    timeout_s: float = MISSING
    mem_budget_gb: Optional[float] = MISSING
    check: bool = MISSING
    memory: bool = MISSING
    plugins: List[str] = MISSING
    timing: TimingSchema = field(default_factory=TimingSchema)
    scaling: ScalingSchema = field(default_factory=ScalingSchema)
    baseline: str = MISSING


# key -> the flag that sets it, for messages that name what the user typed
FLAGS = {"batch": "--batch", "heads": "--heads", "kv_heads": "--kv-heads", "head_dim": "--head-dim",
         "threads": "--threads", "seed": "--seed", "timeout_s": "--timeout", "mem_budget_gb": "--mem-budget-gb",
         "timing.budget_s": "--time-budget"}


def parse_seq_lens(text: Any) -> list[int]:
    """``A..B`` (A, 2A, 4A, ... up to B inclusive) or ``512,1000,2048`` -> sorted unique ints."""
    if isinstance(text, (list, tuple)):
        text = ",".join(str(t) for t in text)
    s = str(text).strip().replace(" ", "")
    allowed = f"allowed: {SEQ_LENS_RULE} of positive integers"
    m = re.fullmatch(r"(\d+)\.\.(\d+)", s)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo <= 0 or hi < lo:
            raise ConfigError(f"--seq-lens {text!r}: need 0 < A <= B; {allowed}")
        out, n = [], lo
        while n <= hi:
            out.append(n)
            n *= 2
        return out
    parts = [p for p in s.split(",") if p]
    if not parts or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise ConfigError(f"--seq-lens {text!r} is not a sequence-length list; {allowed}")
    vals = [int(p) for p in parts]
    if any(v <= 0 for v in vals):
        raise ConfigError(f"--seq-lens {text!r}: lengths must be positive; {allowed}")
    return sorted(set(vals))


@dataclass
class BenchConfig:
    choices: list  # catalog.Choice: each selected variant with its parameter settings
    variants: list[str]
    seq_lens: list[int]
    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    device: str
    causal: bool
    modes: list[str]
    out: Path | None
    resume: bool
    seed: int
    threads: int
    allocator: str
    timeout_s: float
    mem_budget_bytes: float | None
    check: bool
    memory: bool
    plugins: list[str]
    timing: dict[str, Any]
    scaling_min_seq_len: int
    baseline: str
    raw: dict[str, Any] = field(default_factory=dict)
    extend: bool = False  # a resumed run may plan a different grid (recorded in run.json)

    def grid(self) -> dict[str, Any]:
        """What decides a run's rows: which cases (variants with their settings, n, modes, shape,
        dtype, device, threads, seed) and how they are measured (timing, check, memory). A
        resumed run must plan the same grid, or say ``--extend``. Flat, as JSON stores it."""
        g = {"variants": sorted(P.label(c.spec.name, s) for c in self.choices for s in c.overrides()),
             "seq_lens": self.seq_lens, "modes": self.modes, "batch": self.batch, "heads": self.heads,
             "kv_heads": self.kv_heads, "head_dim": self.head_dim, "dtype": self.dtype, "device": self.device,
             "causal": self.causal, "threads": self.threads, "allocator": self.allocator, "seed": self.seed, "check": self.check,
             "memory": self.memory, **{f"timing.{k}": v for k, v in self.timing.items()}}
        return json.loads(json.dumps(g, default=str))


def defaults() -> dict[str, Any]:
    """bench.yaml as written (no overrides): the defaults ``--help`` shows."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "bench.yaml"))
    d.pop("defaults", None)
    return d  # type: ignore[return-value]


def compose(overrides: list[str], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hydra compose of ``bench.yaml`` (typed by :class:`BenchSchema`) with overrides -> plain dict.
    ``base``: a resumed run's stored config, merged under today's overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    ConfigStore.instance().store(name="bench_schema", node=BenchSchema)
    try:
        with initialize_config_dir(version_base=None, config_dir=str(CONF_DIR)):
            cfg = hydra_compose(config_name="bench", overrides=overrides)
            if base is not None:
                stored = {k: v for k, v in base.items() if k != "resolved"}
                cfg = OmegaConf.merge(cfg, stored, OmegaConf.from_dotlist(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(override_error(e, overrides)) from None
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _schema_keys(schema=BenchSchema, prefix: str = "") -> dict[str, Any]:
    """'timing.min_repeats' -> its type, for every key of the schema."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(schema)
    for f in fields(schema):
        t = hints[f.name]
        if is_dataclass(t):
            out.update(_schema_keys(t, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = t
    return out


def _kind(t: Any) -> str:
    """A type in words: 'an integer', 'true or false', 'a number or null'."""
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if typing.get_origin(t) is typing.Union and args:
        return f"{_kind(args[0])} or null"
    if typing.get_origin(t) is list:
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(t, "a value")


def override_error(e: Exception, overrides: list[str]) -> str:
    """Hydra's complaint as one line naming the key, the value and what is allowed."""
    cause = e.__cause__ if e.__cause__ is not None else e
    key = getattr(cause, "full_key", None) or ""
    keys = _schema_keys()
    given = {o.lstrip("+~").split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if "=" in o}
    if key in keys:
        value = given.get(key, "?")
        return f"{key}={value}: must be {_kind(keys[key])} (see attnbench/conf/bench.yaml)"
    if key:
        close = difflib.get_close_matches(key, list(keys), n=2, cutoff=0.6)
        hint = f" did you mean {' or '.join(close)}?" if close else ""
        return f"{key}={given.get(key, '?')}: no such key in attnbench/conf/bench.yaml;{hint} keys: {', '.join(keys)}"
    return f"bad override: {' '.join(str(e).split())}"


def resolve_device(device: str, present: bool = True) -> str:
    """cpu | cuda | cuda:N | auto -> a concrete device; checked without creating a CUDA context.
    ``present=False``: a CUDA device need not be on this machine (``list --device cuda``)."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    d = str(device)
    if d not in ("cpu", "cuda", "auto") and not re.fullmatch(r"cuda:\d+", d):
        raise ConfigError(f"--device {d!r}: allowed: cpu, cuda, cuda:N, auto")
    has_cuda = torch.cuda.is_available()
    if d == "auto":
        return "cuda" if has_cuda else "cpu"
    if present and d.startswith("cuda") and not has_cuda:
        raise ConfigError(f"--device {d}: CUDA is not available on this machine (torch {torch.__version__}); allowed here: cpu, auto")
    return d


def _selection(raw: dict[str, Any]):
    """(choices, baseline) from --variants / variants= and the params: mapping; one-line errors."""
    from attnbench.catalog import get, load_plugin, select
    from attnbench.params import ParamError
    from attnbench.registry import UnknownVariant

    for p in raw.get("plugins") or []:
        load_plugin(p)  # PluginError: one line, exit 2
    params = raw.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise ConfigError(f"params {params!r}: must map a pattern or variant name to {{parameter: value or list}}, "
                          f"e.g. params.sliding_window.window=[64,256]")
    try:
        choices = select(raw["variants"] if isinstance(raw["variants"], str) else list(raw["variants"]), params)
    except ParamError as e:
        raise ConfigError(f"--variants: {e}") from None
    except UnknownVariant as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("--variants") else f"--variants: {msg}") from None
    try:
        baseline = get(str(raw["baseline"])).name
    except UnknownVariant as e:
        raise ConfigError(f"baseline={raw['baseline']}: {e} (the speed-up column's reference)") from None
    return choices, baseline


def _named(key: str, value: Any) -> str:
    """How a message names a value: by its flag when it has one (``--batch -1``), else ``key=value``."""
    return f"{FLAGS[key]} {value!r}" if key in FLAGS else f"{key}={value!r}"


def _get(raw: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        raw = raw[part]
    return raw


# key -> (kind, minimum, strictly above the minimum); checked for every run, all at once
RANGES: dict[str, tuple[type, float, bool]] = {
    "batch": (int, 1, False), "heads": (int, 1, False), "head_dim": (int, 1, False), "kv_heads": (int, 1, False),
    "threads": (int, 1, False), "seed": (int, 0, False), "timeout_s": (float, 0, True),
    "mem_budget_gb": (float, 0, True), "timing.budget_s": (float, 0, True), "timing.min_repeats": (int, 1, False),
    "timing.max_repeats": (int, 1, False), "timing.warmup_s": (float, 0, False), "timing.settle_rel": (float, 0, True),
    "timing.ci_min": (int, 1, False), "timing.disturbed_wait": (float, 0, True),
    "timing.retry_budget": (float, 0, False), "scaling.min_seq_len": (int, 1, False),
}


def _range_problems(raw: dict[str, Any]) -> list[str]:
    """One phrase per value out of its range or of the wrong type (None = its default rule)."""
    bad = []
    for key, (kind, lo, strict) in RANGES.items():
        v = _get(raw, key)
        if v is None and key in ("kv_heads", "threads", "mem_budget_gb"):
            continue
        ok_type = not isinstance(v, bool) and isinstance(v, int if kind is int else (int, float))
        if not ok_type or (v <= lo if strict else v < lo):
            what = "integer" if kind is int else "number"
            rule = f"a positive {what}" if strict else f"{'an' if kind is int else 'a'} {what} >= {lo:g}"
            bad.append(f"{_named(key, v)}: must be {rule}")
    t = raw["timing"]
    if not bad and t["max_repeats"] < t["min_repeats"]:
        bad.append(f"timing.max_repeats {t['max_repeats']}: must be >= timing.min_repeats ({t['min_repeats']})")
    return bad


def _shape_fields(raw: dict[str, Any]) -> dict[str, Any]:
    heads = raw["heads"]
    kv_heads = heads if raw.get("kv_heads") in (None, "null") else raw["kv_heads"]
    if heads % kv_heads:
        raise ConfigError(f"--kv-heads {kv_heads}: must divide --heads {heads} (allowed: {[d for d in range(1, heads + 1) if heads % d == 0]})")
    dtype = str(raw["dtype"])
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: allowed: {', '.join(DTYPES)}")
    modes_raw = raw["modes"]
    modes = [m.strip() for m in (modes_raw.split(",") if isinstance(modes_raw, str) else modes_raw) if str(m).strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"--mode {modes_raw!r}: allowed: a comma list of {', '.join(MODES)}")
    return dict(batch=raw["batch"], heads=heads, kv_heads=kv_heads, head_dim=raw["head_dim"], dtype=dtype, modes=modes)


def check_out(out: Any, resume: bool) -> Path | None:
    """The run directory: not a file (nor under one); with ``resume``, one that holds a run."""
    if resume and not out:
        raise ConfigError("--resume needs --out DIR: the run directory to continue")
    if not out:
        return None
    p = Path(out)
    for q in (p, *p.parents):
        if q.exists() and not q.is_dir():
            raise ConfigError(f"--out {out}: {q} is a file, not a directory; give a directory path")
    if resume and not (p / "run.json").is_file():
        raise ConfigError(f"--out {out}: no run to resume there (no run.json); drop --resume to start one")
    return p


def _run_fields(raw: dict[str, Any], device: str) -> dict[str, Any]:
    threads = (os.cpu_count() or 1) if raw.get("threads") is None else raw["threads"]
    t = dict(raw["timing"])
    if device.startswith("cuda"):
        t["min_repeats"] = max(10, int(t["min_repeats"]))
        t["max_repeats"] = max(t["min_repeats"], int(t["max_repeats"]))
    budget = raw.get("mem_budget_gb")
    allocator = str(raw.get("allocator") or ALLOCATOR_DEFAULT)
    try:
        allocator_env(allocator)  # a name it knows, and one this machine provides
    except AllocatorError as e:
        raise ConfigError(str(e)) from None
    return dict(threads=threads, allocator=allocator, timeout_s=float(raw["timeout_s"]), timing=t,
                mem_budget_bytes=float(budget) * 1e9 if budget else None)


def validate(raw: dict[str, Any], extend: bool = False) -> BenchConfig:
    """Every value checked before anything is written; ConfigError names the values and what is allowed."""
    bad = _range_problems(raw)
    if bad:
        raise ConfigError("; ".join(bad))
    out = check_out(raw.get("out"), bool(raw.get("resume")))
    seq_lens = parse_seq_lens(raw["seq_lens"])
    shape = _shape_fields(raw)
    device = resolve_device(raw["device"])
    choices, baseline = _selection(raw)
    return BenchConfig(
        choices=choices, variants=[c.spec.name for c in choices], seq_lens=seq_lens,
        device=device, causal=bool(raw["causal"]), **shape, **_run_fields(raw, device),
        out=out, resume=bool(raw.get("resume")), seed=int(raw["seed"]), check=bool(raw["check"]),
        memory=bool(raw["memory"]), plugins=list(raw.get("plugins") or []),
        scaling_min_seq_len=int(raw["scaling"]["min_seq_len"]), baseline=baseline, raw=raw, extend=extend,
    )
