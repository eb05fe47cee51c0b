"""Benchmark configuration: hydra-core composes ``conf/bench.yaml`` with CLI overrides.

CLI flags become hydra overrides (``--seq-lens 512..4096`` -> ``seq_lens='512..4096'``) and
``key=value`` words are passed through, so both spellings work side by side. Every value is
validated here, before anything is written: a bad value raises :class:`ConfigError` whose
message names the value and what is allowed.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench.case import DTYPES
from attnbench.vocab import MODES

CONF_DIR = Path(__file__).resolve().parent / "conf"


class ConfigError(ValueError):
    """Bad user input; the CLI prints it as one line and exits 2."""


def parse_seq_lens(text: Any) -> list[int]:
    """``512..16384`` (powers of two, inclusive) or ``512,1000,2048`` -> sorted unique ints."""
    s = str(text).strip().replace(" ", "")
    allowed = "allowed: A..B (powers of two from A to B, e.g. 512..16384) or a list such as 512,1000,2048 of positive integers"
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
    timeout_s: float
    mem_budget_bytes: float | None
    check: bool
    memory: bool
    plugins: list[str]
    timing: dict[str, Any]
    scaling_min_seq_len: int
    baseline: str
    raw: dict[str, Any] = field(default_factory=dict)


def compose(overrides: list[str], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hydra compose of ``bench.yaml`` with overrides -> plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(version_base=None, config_dir=str(CONF_DIR)):
            cfg = hydra_compose(config_name="bench", overrides=overrides)
            if base is not None:  # a resumed run: its stored config, then today's overrides
                stored = {k: v for k, v in base.items() if k != "resolved"}
                cfg = OmegaConf.merge(cfg, stored, OmegaConf.from_dotlist(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"bad override: {' '.join(str(e).split())}") from None
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _int(raw: dict, key: str, flag: str, minimum: int) -> int:
    v = raw[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"{flag} {v!r}: must be an integer >= {minimum}")
    return v


def resolve_device(device: str) -> str:
    """cpu | cuda | cuda:N | auto -> a concrete device; checked without creating a CUDA context."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    d = str(device)
    if d not in ("cpu", "cuda", "auto") and not re.fullmatch(r"cuda:\d+", d):
        raise ConfigError(f"--device {d!r}: allowed: cpu, cuda, cuda:N, auto")
    has_cuda = torch.cuda.is_available()
    if d == "auto":
        return "cuda" if has_cuda else "cpu"
    if d.startswith("cuda") and not has_cuda:
        raise ConfigError(f"--device {d}: CUDA is not available on this machine (torch {torch.__version__}); allowed here: cpu, auto")
    return d


def _selection(raw: dict[str, Any]):
    """(choices, baseline) from --variants / variants= and the params: mapping; one-line errors."""
    from attnbench.catalog import get, load_plugin, select
    from attnbench.params import ParamError
    from attnbench.registry import UnknownVariant

    for p in raw.get("plugins") or []:
        try:
            load_plugin(p)
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None
    params = raw.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise ConfigError(f"params {params!r}: must map a pattern or variant name to {{parameter: value or list}}, "
                          f"e.g. params.sliding_window.window=[64,256]")
    try:
        choices = select(raw["variants"] if isinstance(raw["variants"], str) else list(raw["variants"]), params)
        baseline = get(raw["baseline"]).name
    except ParamError as e:
        raise ConfigError(f"--variants: {e}") from None
    except UnknownVariant as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("--variants") else f"--variants: {msg}") from None
    return choices, baseline


def _shape_fields(raw: dict[str, Any]) -> dict[str, Any]:
    batch = _int(raw, "batch", "--batch", 1)
    heads = _int(raw, "heads", "--heads", 1)
    head_dim = _int(raw, "head_dim", "--head-dim", 1)
    kv_heads = heads if raw.get("kv_heads") in (None, "null") else _int(raw, "kv_heads", "--kv-heads", 1)
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
    return dict(batch=batch, heads=heads, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype, modes=modes)


def _run_fields(raw: dict[str, Any], device: str) -> dict[str, Any]:
    threads = raw.get("threads")
    threads = (os.cpu_count() or 1) if threads in (None, "null") else _int(raw, "threads", "--threads", 1)
    timeout = raw["timeout_s"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"--timeout {timeout!r}: must be a positive number of seconds")
    budget = raw.get("mem_budget_gb")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise ConfigError(f"--mem-budget-gb {budget!r}: must be a positive number (GB)")
    t = dict(raw["timing"])
    if not (isinstance(t.get("budget_s"), (int, float)) and t["budget_s"] > 0):
        raise ConfigError(f"timing.budget_s {t.get('budget_s')!r}: must be a positive number of seconds")
    if device.startswith("cuda"):
        t["min_repeats"] = max(10, int(t["min_repeats"]))
    if raw.get("resume") and not raw.get("out"):
        raise ConfigError("--resume needs --out DIR: the run directory to continue")
    if raw.get("out") and not raw.get("resume") and (Path(raw["out"]) / "results.jsonl").exists():
        raise ConfigError(f"--out {raw['out']}: already holds a run (results.jsonl); "
                          "add --resume to continue it, or choose a new --out")
    return dict(threads=threads, timeout_s=float(timeout), timing=t,
                mem_budget_bytes=float(budget) * 1e9 if budget else None)


def validate(raw: dict[str, Any]) -> BenchConfig:
    """Every value checked before anything is written; ConfigError names the value and what is allowed."""
    choices, baseline = _selection(raw)
    device = resolve_device(raw["device"])
    return BenchConfig(
        choices=choices, variants=[c.spec.name for c in choices], seq_lens=parse_seq_lens(raw["seq_lens"]),
        device=device, causal=bool(raw["causal"]), **_shape_fields(raw), **_run_fields(raw, device),
        out=Path(raw["out"]) if raw.get("out") else None, resume=bool(raw.get("resume")),
        seed=int(raw["seed"]), check=bool(raw["check"]), memory=bool(raw["memory"]),
        plugins=list(raw.get("plugins") or []),
        scaling_min_seq_len=int(raw["scaling"]["min_seq_len"]), baseline=baseline, raw=raw,
    )
