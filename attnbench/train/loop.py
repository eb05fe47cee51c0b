"""The training loop of one (task, variant, seed) job, run inside its isolated process.

AdamW (decay on matrices only, as nanoGPT), linear warmup then cosine decay (or LRA's rsqrt
decay), gradient clipping,
evaluation on validation every ``eval_every`` steps, the best-validation weights kept and
evaluated on test at the end (never the last weights), checkpoints written atomically after
every evaluation, a step budget and an optional time budget. ``--resume`` continues from the
last checkpoint; since batches are a function of (seed, step) and every RNG state is saved,
the resumed job ends with exactly the numbers of an uninterrupted one (steps after the last
checkpoint are recomputed from that checkpoint's state, never applied twice).

Divergence: a non-finite loss, or one above ``diverge_factor`` x the first step's loss, stops
the job with status ``diverged``.

Distillation (DeiT): with ``model.distill`` the loss is DeiT's hard distillation against the
frozen teacher named by ``train.teacher`` (:mod:`attnbench.train.distill`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from hydra.utils import instantiate

from attnbench.case import Unsupported
from attnbench.data.base import TaskData
from attnbench.models import FAIRNESS_LIMIT, build_model, param_report
from attnbench.models.config import ModelConfig
from attnbench.train import batches, checkpoint, distill, metrics


class Diverged(Exception):
    """The loss became NaN or infinite, or exploded."""


@dataclass
class Progress:
    step: int
    steps: int
    loss: float
    val: float | None
    steps_per_s: float


@dataclass
class State:
    """What a checkpoint holds beyond the model, optimizer and scheduler."""

    step: int = 0
    best_val: float | None = None
    best_step: int | None = None
    curve: list = field(default_factory=list)  # [step, train loss, val metric]
    train_s: float = 0.0
    first_loss: float | None = None
    losses: list = field(default_factory=list)  # training losses since the last evaluation
    resumed: int = 0


SCHEDULES = ("cosine", "rsqrt")


def lr_lambda(warmup: int, total: int, min_ratio: float, kind: str = "cosine") -> Callable[[int], float]:
    """The factor on ``lr`` at each step.

    cosine: linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``.
    rsqrt:  LRA's released schedule, ``constant * linear_warmup * rsqrt_decay``:
            min(1, step / warmup) / sqrt(max(step, warmup)) (so lr 0.05 peaks at 0.05 / sqrt(warmup)).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"train.schedule {kind!r}; allowed: {', '.join(SCHEDULES)}")

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    def rsqrt(step: int) -> float:
        s = step + 1
        return min(1.0, s / warmup) / math.sqrt(max(s, warmup))

    return cosine if kind == "cosine" else rsqrt


def optimizer(model: torch.nn.Module, tc: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW decaying weight matrices only, and not those the model names in ``no_weight_decay()``
    (timm's convention: the vision skeletons' tokens, position and bias tables)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.dim() >= 2 and n not in skip]
    rest = [p for n, p in named if p.dim() < 2 or n in skip]
    groups = [{"params": decay, "weight_decay": tc["weight_decay"]}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc["lr"], betas=tuple(tc["betas"]), eps=tc.get("eps", 1e-8))


def model_config(cfg: dict[str, Any], data: TaskData, variant: str, params: dict[str, Any]) -> ModelConfig:
    """The task's skeleton for this data, with the job's attention: identical for every variant.
    Images (``meta['image']``, the vision task) give the vision skeletons their (C, H, W)."""
    m = dict(cfg["model"])
    image = data.meta.get("image")
    return ModelConfig(**m, variant=variant, params=dict(params), vocab_size=data.vocab_size,
                       num_classes=data.num_classes, max_len=data.seq_len, causal=data.kind == "tokens",
                       image=tuple(image) if image else None)


class Job:
    """One training job: data, model, optimizer; ``run`` trains, ``finish`` tests the best weights."""

    def __init__(self, spec: dict[str, Any], job_dir: Path):
        self.spec, self.dir = spec, Path(job_dir)
        self.cfg = spec["config"]
        self.tc = self.cfg["train"]
        self.metric = self.cfg["metric"]["name"]
        self.higher = bool(self.cfg["metric"]["higher_is_better"])
        self.data: TaskData = instantiate(self.cfg["data"])
        self.stream = bool(self.data.meta.get("stream")) and self.tc.get("stream", True)
        checkpoint.seed_all(spec["seed"])
        self.mcfg = model_config(self.cfg, self.data, spec["variant"], spec["params"])
        self.fair = param_report(self.data.kind, self.mcfg)  # raises Unsupported with the registry's reasons
        limit = float(self.tc.get("fairness_limit", FAIRNESS_LIMIT))
        if abs(self.fair["deviation"]) > limit:
            raise Unsupported(f"{self.fair['params']} parameters, {self.fair['deviation']:+.1%} against full attention's "
                              f"{self.fair['full_params']} in the same skeleton (position tables aside), outside "
                              f"LRA's fairness rule of ±{limit:.0%} (train.fairness_limit)")
        self.model = build_model(self.data.kind, self.mcfg)
        self.teacher, self.teacher_job = self._teacher()
        self.opt = optimizer(self.model, self.tc)
        total = int(self.tc["steps"])
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lr_lambda(int(self.tc["warmup_steps"]), total, float(self.tc.get("min_lr_ratio", 0.0)),
                                self.tc.get("schedule", "cosine")))
        self.st = State()
        self.rec_state = None  # the recurrent state carried between stream steps

    def _teacher(self) -> tuple[torch.nn.Module | None, distill.TeacherJob | None]:
        """DeiT's frozen teacher (``train.teacher``) when the model distills, else (None, None)."""
        path = self.tc.get("teacher")
        if not path and not self.mcfg.distill:
            return None, None
        if not path:
            raise distill.TeacherError(f"model.distill needs train.teacher: {distill.LAYOUT}")
        if not self.mcfg.distill:
            raise distill.TeacherError(f"train.teacher {path} needs model.distill=true (a ViT with DeiT's "
                                       f"distillation head, model.arch=vit)")
        job = distill.read_teacher(path)
        tcfg = model_config(job.spec["config"], self.data, job.spec["variant"], job.spec.get("params") or {})
        return distill.load_weights(build_model(self.data.kind, tcfg, check=False), job), job

    # -- checkpoints ------------------------------------------------------------------------
    def save(self) -> None:
        checkpoint.save({"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                         "sched": self.sched.state_dict(), "rng": checkpoint.rng_state(),
                         "state": self.st.__dict__, "rec_state": self.rec_state}, self.dir / "last.pt")

    def restore(self) -> bool:
        p = self.dir / "last.pt"
        if not p.is_file():
            return False
        ck = checkpoint.load(p)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        checkpoint.set_rng_state(ck["rng"])
        self.st = State(**ck["state"])
        self.st.resumed += 1
        self.rec_state = ck["rec_state"]
        return True

    # -- training ---------------------------------------------------------------------------
    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        bs, n = int(self.tc["batch_size"]), len(self.data.train)
        if self.stream:
            idx, restart = batches.stream(n, bs, step)
            if restart:
                self.rec_state = None
        else:
            idx = batches.shuffled(n, bs, int(self.spec["seed"]), step)
        return batches.take(self.data.train, idx)

    def _step(self, step: int) -> float:
        x, y = self._batch(step)
        if self.teacher is not None:  # DeiT: both heads, the distillation head on the teacher's classes
            cls_logits, dist_logits = self.model.heads(x)
            loss = distill.loss(cls_logits, dist_logits, y, distill.hard_targets(self.teacher, x))
        else:
            logits, state = self.model(x, state=self.rec_state if self.stream else None)
            self.rec_state = state if self.stream else None
            loss = metrics.loss_fn(logits, y)
        value = float(loss.detach())
        first = self.st.first_loss if self.st.first_loss is not None else value
        if not math.isfinite(value) or value > float(self.tc.get("diverge_factor", 10.0)) * max(first, 1e-3):
            raise Diverged(f"training loss {value:.4g} at step {step + 1} (first step's: {first:.4g})")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.tc.get("clip_norm"):
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.tc["clip_norm"]))
        self.opt.step()
        self.sched.step()
        self.st.first_loss = first
        return value

    def _evaluate(self, split: str) -> metrics.Score:
        return metrics.evaluate(self.model, self.data.splits()[split], self.metric, int(self.tc.get("eval_batch_size", 64)),
                                self.stream, self.tc.get("eval_samples"))

    def _better(self, v: float) -> bool:
        b = self.st.best_val
        return b is None or (v > b if self.higher else v < b)

    def _eval_and_save(self) -> None:
        score = self._evaluate("val")
        loss = sum(self.st.losses) / max(len(self.st.losses), 1)
        self.st.curve.append([self.st.step, loss, score.value])
        if self._better(score.value):
            self.st.best_val, self.st.best_step = score.value, self.st.step
            checkpoint.save(self.model.state_dict(), self.dir / "best.pt")
        self.st.losses = self.st.losses[-1:]
        self.save()

    def run(self, on_progress: Callable[[Progress], None] | None = None) -> None:
        """Train from the current step to the step budget (or the time budget)."""
        total, every = int(self.tc["steps"]), int(self.tc["eval_every"])
        budget = self.tc.get("time_budget_s")
        self.model.train()
        last_report = 0.0
        while self.st.step < total:
            t0 = time.perf_counter()
            self.st.losses.append(self._step(self.st.step))
            self.st.train_s += time.perf_counter() - t0
            self.st.step += 1
            if self.st.step % every == 0 or self.st.step == total:
                self._eval_and_save()
            if on_progress and (time.perf_counter() - last_report > 0.5 or self.st.step == total):
                last_report = time.perf_counter()
                on_progress(Progress(self.st.step, total, self.st.losses[-1],
                                     self.st.curve[-1][2] if self.st.curve else None,
                                     self.st.step / max(self.st.train_s, 1e-9)))
            if budget and self.st.train_s >= float(budget):
                evaluated = bool(self.st.curve) and self.st.curve[-1][0] == self.st.step
                if not evaluated:
                    self._eval_and_save()
                break

    def finish(self) -> dict[str, Any]:
        """Test the best-validation weights; the result fields of the job's row."""
        self.model.load_state_dict(checkpoint.load(self.dir / "best.pt"))
        test = self._evaluate("test")
        extra = self._extras()
        toks = int(self.tc["batch_size"]) * self.tokens_per_sample()
        sps = self.st.step / max(self.st.train_s, 1e-9)
        return {"metric": self.metric, "higher_is_better": self.higher, "best_val": self.st.best_val,
                "best_step": self.st.best_step, "test": test.value, "test_se": test.se, "test_count": test.count,
                "extra_metrics": extra, "final_loss": self.st.curve[-1][1] if self.st.curve else None,
                "steps": self.st.step, "steps_per_s": sps, "tokens_per_s": sps * toks,
                "n_params": self.fair["params"], "full_params": self.fair["full_params"],
                "param_deviation": self.fair["deviation"], "own_params": self.fair["own_params"],
                "curve": self.st.curve, "resumed": self.st.resumed, "data_name": self.data.name}

    def tokens_per_sample(self) -> int:
        """What a training row's tokens/s counts: the sequence (both of a pair), or for a vision
        skeleton the patch tokens of its first stage (the data's seq_len counts pixels)."""
        if self.mcfg.arch == "encoder":
            return self.data.seq_len * (2 if self.data.kind == "pair" else 1)
        _, h, w = self.mcfg.image
        p = self.mcfg.stage_layout()["patch"]
        return (h // p) * (w // p)

    def _extras(self) -> dict[str, Any]:
        """Task-specific figures: a segment-memory LM also tested without its memory."""
        out: dict[str, Any] = {"majority": self.data.majority_share("test"),
                               "chance": None if self.data.kind == "tokens" else 1.0 / self.data.num_classes}
        if self.mcfg.arch != "encoder":
            out["arch"] = self.mcfg.arch
        if self.teacher is not None:
            t = self.teacher_job
            out["teacher"] = {"path": t.path, "variant": t.spec["variant"], "params": t.spec.get("params"),
                              "arch": t.spec["config"]["model"].get("arch", "encoder"),
                              "test": metrics.evaluate(self.teacher, self.data.test, self.metric,
                                                       int(self.tc.get("eval_batch_size", 64)), False).value}
        if self.stream and self.model.has_memory():
            with self.model.variant_params(mem_len=0):
                out["test_no_memory"] = self._evaluate("test").value
        return out
