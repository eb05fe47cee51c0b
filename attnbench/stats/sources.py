"""Where the queries and keys of ``stats`` come from: one :class:`Source` per input.

* ``random``: seeded q, k, v of one layer, Gaussian or "sharp" (each query built from a few keys,
  the structure real attention has; ``attnbench.approx.inputs``), at any n;
* ``task``: a batch of the task's validation inputs through the task's skeleton, freshly
  initialized with the seed (attention at initialization: a baseline for a trained model);
* ``checkpoint``: a trained ``train`` job (``<run>/jobs/<job>``): its best-validation weights on
  a batch of its task's validation inputs (the run's stored copy of the data, else rebuilt by the
  task's deterministic builder).

A 1-D task's inputs can be cut to a shorter n (``--seq-len``): error and coverage vs n on the
model's own queries and keys. Images have one n (the patch grid).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnbench.case import Shape
from attnbench.models.attention import Call
from attnbench.stats.capture import Geometry, Layer, capture, line

INPUT_KINDS = ("gaussian", "sharp")


class SourceError(ValueError):
    """A bad source (path, task, n): one line naming it and what is allowed."""


@dataclass
class Source:
    kind: str  # schema.SOURCES
    input: str  # in words
    layers: list[Layer]
    task: str | None = None
    arch: str | None = None
    model_variant: str | None = None
    checkpoint_sha: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the task config (variant_params)
    hierarchical: bool = False
    image: torch.Tensor | None = None  # the first input image [C, H, W] in 0..1 (image tasks)
    seed: int | None = None  # of the batch drawn (and of a fresh model)

    @property
    def seq_len(self) -> int:
        return self.layers[0].call.q.shape[2]


def random_source(n: int, *, heads: int, head_dim: int, batch: int, kind: str, seed: int, causal: bool) -> Source:
    """One layer of seeded q, k, v [batch, heads, n, head_dim] of ``kind`` (gaussian | sharp)."""
    from attnbench.approx import inputs

    if kind not in INPUT_KINDS:
        raise SourceError(f"--input {kind!r}: allowed: {', '.join(INPUT_KINDS)}")
    shape = Shape(batch=batch, heads=heads, kv_heads=heads, seq_len=n, kv_len=n, head_dim=head_dim,
                  dtype="float64", device="cpu", causal=causal, mode="fwd")
    q, k, v = (t.double() for t in inputs(shape, kind, seed))
    call = Call(q, k, v, None, {}, {}, causal)
    return Source("random", kind, [Layer(0, call, Geometry(line(n), line(n)))])


def _model_inputs(data, n: int | None, batch: int, seed: int) -> torch.Tensor:
    """A seeded batch of validation inputs, cut to n tokens when asked (1-D tasks only)."""
    x = data.val.x
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[:batch]
    x = x[idx]  # [batch, ...]
    if n is None or n == data.seq_len:
        return x
    if data.meta.get("image") or data.kind == "pair":
        raise SourceError(f"--seq-len {n}: task {data.name} has one length ({data.seq_len}); allowed: that one")
    if not 1 <= n <= data.seq_len:
        raise SourceError(f"--seq-len {n}: the task's inputs hold {data.seq_len} tokens; allowed: 1..{data.seq_len}")
    return x[:, :n]


def _source(kind: str, what: str, model, data, cfg: dict[str, Any], n: int | None, batch: int, seed: int,
            sha: str | None = None) -> Source:
    x = _model_inputs(data, n, batch, seed)
    layers = capture(model, x)
    rec = model.record
    arch = rec.get("arch", "encoder")
    shape = data.meta.get("image")
    image = x[0].reshape(*shape).double() / 255.0 if shape else None  # [C, H, W]
    return Source(kind, what, layers, cfg.get("name"), arch, rec["variant"], sha, cfg,
                  hierarchical=arch in ("swin", "pvt"), image=image, seed=seed)


def task_source(task: str, variant: str, n: int | None, *, size: str, overrides: list[str], batch: int,
                seed: int, tasks_dir: str | None = None) -> Source:
    """The task's validation inputs through its skeleton with ``variant``, initialized with ``seed``."""
    from attnbench.models import build_model
    from attnbench.train import tasks
    from attnbench.train.checkpoint import seed_all
    from attnbench.train.loop import model_config
    from attnbench.train.runner import build_data

    cfg = tasks.load(task, size, overrides, Path(tasks_dir) if tasks_dir else None)
    data = build_data(cfg, Path("/nonexistent"))  # built in memory by the task's own builder
    pattern = variant.split("@")[0]
    seed_all(seed)
    model = build_model(data.kind, model_config(cfg, data, variant, dict(cfg["variant_params"].get(pattern, {}))))
    return _source("task", task, model, data, cfg, n, batch, seed)


def job_data(cfg: dict[str, Any], run_dir: Path):
    """A job's data: the copy its run stored (``<run>/data/<file>``, wherever the job's config
    says the run was), else SourceError naming both places; a config that names its builder
    instead is built."""
    from attnbench.train.runner import build_data, load_data

    if not str(cfg["data"].get("_target_", "")).endswith(".load_data"):
        return build_data(cfg, run_dir)
    given = Path(str(cfg["data"].get("path", "")))
    for p in (given, run_dir / "data" / given.name):
        if given.name and p.is_file():
            return load_data(str(p))
    raise SourceError(f"--checkpoint: the job's data {given} is missing, nor is it in {run_dir / 'data'}; "
                      f"allowed: a job directory inside the run directory that trained it")


def checkpoint_source(path: str, n: int | None, *, batch: int, seed: int) -> Source:
    """A trained job's best weights on its task's validation inputs."""
    from attnbench.models import build_model
    from attnbench.train.distill import TeacherError, load_weights, read_teacher
    from attnbench.train.loop import model_config

    try:
        job = read_teacher(path)
    except TeacherError as e:
        raise SourceError(str(e).replace("train.teacher", "--checkpoint")) from None
    cfg = job.spec["config"]
    data = job_data(cfg, job.weights.parent.parent.parent)
    model = build_model(data.kind, model_config(cfg, data, job.spec["variant"], job.spec.get("params") or {}),
                        check=False)
    try:
        load_weights(model, job)
    except TeacherError as e:
        raise SourceError(str(e).replace("train.teacher", "--checkpoint")) from None
    sha = hashlib.sha256(job.weights.read_bytes()).hexdigest()[:12]
    return _source("checkpoint", str(Path(path)), model, data, cfg, n, batch, seed, sha)
