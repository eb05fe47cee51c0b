"""What a model-level run measures: its settings, resolved once, and its probes.

Settings are plain JSON (stored in ``run.json``, so ``--resume`` rebuilds the same run); they
resolve into a :class:`ModelRunConfig`: the task's config at ``size`` (its skeleton and AdamW
settings; ``attnbench.train.tasks.load``), the task's inputs known without its data
(:mod:`attnbench.modelbench.inputs`), the variants with their parameters, the grid of n and
the budgets of the max-n search. ``--variants all`` is every pattern at its default kernel, as
in ``train``: a whole-model figure belongs to a pattern, and a task's ``variant_params`` (a
window, a feature count) apply as they do in training.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnbench.catalog import select
from attnbench.config import parse_seq_lens
from attnbench.modelbench.inputs import TaskInputs, task_inputs
from attnbench.params import format_params, non_default
from attnbench.registry import VariantSpec, lookup
from attnbench.train import tasks
from attnbench.train.command import train_selection

DEFAULTS: dict[str, Any] = {
    "size": "paper",  # LRA's Text skeleton: 4 layers, 4 heads, emb 256, MLP 1024
    "variants": "all",
    "seq_lens": "1024..4096",  # LRA's efficiency table: 1K-4K
    "batch_cpu": 1,  # a paper-size step of batch 1 at n = 4096 takes seconds on a 2-core CPU
    "batch_cuda": 32,  # LRA's batch
    "timeout_s": 900.0,  # per probe: startup, build, 2 steps and four timed parts
    "mem_budgets_gb": [4.0, 8.0, 16.0],
    "n_cap": 32768,
    "step_timeout_s": 120.0,  # a training step slower than this ends the max-n search ('time')
    "mem_guard": 0.8,  # measure probes are capped at this share of the memory available at start
}


class ModelBenchError(ValueError):
    """Bad model-level input: one line naming the value and what is allowed; exit 2."""


@dataclass(frozen=True)
class VariantPlan:
    spec: VariantSpec
    params: dict[str, Any]  # resolved: every declared parameter

    @property
    def label(self) -> str:
        return format_params(non_default(self.spec.params, self.params))


@dataclass
class ModelRunConfig:
    settings: dict[str, Any]  # as given (JSON): what run.json stores and --resume reads
    task: str
    size: str
    task_cfg: dict[str, Any]
    inputs: TaskInputs
    variants: list[VariantPlan]
    seq_lens: list[int]
    batch: int
    device: str
    seed: int
    threads: int
    timeout_s: float
    timing: dict[str, Any]
    out: Path
    resume: bool
    plugins: list[str]
    max_n: bool
    measure: bool  # the timed grid over seq_lens (False: --max-n --search-only)
    budgets: list[float]  # bytes, ascending
    n_cap: int
    step_timeout_s: float
    mem_guard_bytes: float | None  # every measure probe's cap
    config_hash: str = ""

    @property
    def model_cfg(self) -> dict[str, Any]:
        return dict(self.task_cfg["model"])

    def optimizer_cfg(self) -> dict[str, Any]:
        """AdamW's settings as training builds it (``attnbench.train.loop.optimizer``) and the clip."""
        t = self.task_cfg["train"]
        return {k: t.get(k) for k in ("lr", "weight_decay", "betas", "eps", "clip_norm") if k in t}


def config_hash(task_cfg: dict[str, Any], inputs: TaskInputs) -> str:
    """What makes rows comparable: the skeleton, AdamW's settings and the inputs."""
    keep = {"model": task_cfg.get("model"), "train": {k: (task_cfg.get("train") or {}).get(k) for k in
                                                      ("weight_decay", "betas", "eps", "clip_norm")},
            "inputs": [inputs.kind, inputs.vocab_size, inputs.num_classes]}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]


def variant_plans(selection: str, task_cfg: dict[str, Any]) -> list[VariantPlan]:
    """Every selected variant at each of its settings; the task's variant_params where they apply."""
    chosen = train_selection(selection)
    names = {c.spec.name for c in select(chosen)}
    given = {k: v for k, v in (task_cfg.get("variant_params") or {}).items()
             if any(k in (n, lookup(n).pattern) for n in names)}
    return [VariantPlan(c.spec, c.spec.resolve_params(s)) for c in select(chosen, given) for s in c.overrides() or [{}]]


def _positive(settings: dict[str, Any], key: str, flag: str, kind=int) -> Any:
    v = settings[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (kind is int and int(v) != v):
        raise ModelBenchError(f"{flag} {v!r}: must be a positive {'integer' if kind is int else 'number'}")
    return kind(v)


def budgets(settings: dict[str, Any], available: float) -> list[float]:
    """--mem-budgets in bytes, ascending; each must fit in the memory available here."""
    raw = settings["mem_budgets_gb"]
    vals = sorted({float(v) for v in raw})
    if not vals or any(v <= 0 for v in vals):
        raise ModelBenchError(f"--mem-budgets {','.join(map(str, raw))}: allowed: a comma list of positive GB values")
    big = [v for v in vals if available and v * 1e9 > 0.95 * available]
    if big and settings.get("max_n"):
        raise ModelBenchError(f"--mem-budgets {','.join(f'{v:g}' for v in big)}: above the memory available here "
                              f"({available / 1e9:.1f} GB); allowed: budgets up to {0.95 * available / 1e9:.1f} GB")
    return [v * 1e9 for v in vals]


def resolve(settings: dict[str, Any], *, device: str, threads: int, available: float,
            resume: bool = False) -> ModelRunConfig:
    """Every setting checked (ModelBenchError, TaskError, ParamError, UnknownVariant: one line)."""
    s = settings
    cfg = tasks.load(s["task"], s["size"], s.get("overrides") or [], s.get("tasks_dir"))
    inputs = task_inputs(s["task"], cfg)
    seq_lens = parse_seq_lens(s["seq_lens"])
    guard = s.get("mem_guard_gb")
    if guard is not None and not float(guard) > 0:
        raise ModelBenchError(f"--mem-budget-gb {guard!r}: must be a positive number (GB)")
    return ModelRunConfig(
        settings=s, task=s["task"], size=s["size"], task_cfg=cfg, inputs=inputs,
        variants=variant_plans(s["variants"], cfg), seq_lens=seq_lens, batch=_positive(s, "batch", "--batch"),
        device=device, seed=int(s["seed"]), threads=threads, timeout_s=_positive(s, "timeout_s", "--timeout", float),
        timing=dict(s["timing"]), out=Path(s["out"]), resume=resume, plugins=list(s.get("plugins") or []),
        max_n=bool(s.get("max_n")), measure=bool(s.get("measure", True)), budgets=budgets(s, available),
        n_cap=_positive(s, "n_cap", "--n-cap"),
        step_timeout_s=_positive(s, "step_timeout_s", "--step-timeout", float),
        mem_guard_bytes=float(guard) * 1e9 if guard else None,
        config_hash=config_hash(cfg, inputs))


def skeleton_text(cfg: ModelRunConfig) -> str:
    """The model in words, for rows and report headings."""
    m, kind = cfg.model_cfg, cfg.inputs.kind
    name = {"classify": "encoder classifier", "pair": "dual encoder", "tokens": "causal LM"}[kind]
    bits = [f"{m.get('layers')} layers", f"{m.get('heads')} heads", f"d_model {m.get('d_model')}",
            f"mlp {m.get('mlp')}", f"positions {m.get('positions')}"]
    if kind != "tokens":
        bits.append(f"pool {m.get('pool')}")
    return f"{name}: " + ", ".join(bits)
