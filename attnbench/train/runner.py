"""The parent of a training run: plans the jobs, runs each isolated, and is the only writer.

Jobs are (task, variant, seed). The parent builds each task's data once (a missing release
file is one line and exit 2 before anything runs) and stores it in the run directory; every
job reads that copy, so all variants and seeds see identical data. Each job is a fresh
``python -m attnbench.train.job`` in its own process group with a wall-clock limit: a timeout,
a death (OOM killer, segfault) or a failure inside the job becomes that job's row with its
reasons and the next job goes on. Rows are appended to ``results.jsonl`` as jobs finish;
``--resume`` skips jobs that have a row and continues an interrupted job from its last
checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from attnbench.data.base import DataError, TaskData
from attnbench.harness.isolate import PACKAGE_ROOT
from attnbench.params import format_params, non_default
from attnbench.registry import VariantSpec
from attnbench.results import ResultsWriter, read_rows, rows_file
from attnbench.train import schema

POLL_S = 0.25
LOG_TAIL = 1500  # characters of a dead job's log quoted in its row


@dataclass
class JobPlan:
    task: str
    size: str
    spec: VariantSpec
    params: dict[str, Any]  # resolved: every declared parameter
    seed: int
    config: dict[str, Any]

    @property
    def label(self) -> str:
        return format_params(non_default(self.spec.params, self.params))

    @property
    def arch(self) -> str:
        return (self.config.get("model") or {}).get("arch") or schema.DEFAULT_ARCH

    @property
    def job_id(self) -> str:
        arch = "" if self.arch == schema.DEFAULT_ARCH else f"-{self.arch}"  # encoder jobs keep their old ids
        name = f"{self.task}{arch}-{self.size}-{self.spec.name}" + (f"[{self.label}]" if self.label else "") + f"-s{self.seed}"
        return re.sub(r"[^A-Za-z0-9_.@=,\[\]+-]", "_", name)

    def key(self) -> tuple:
        return schema.job_key({"task": self.task, "size": self.size, "arch": self.arch, "variant": self.spec.name,
                               "params": self.params, "seed": self.seed})


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def data_path(config: dict[str, Any], out_dir: Path) -> Path:
    return out_dir / "data" / f"{config['name']}-{config['size']}-{config_hash(config['data'])}.pt"


def build_data(config: dict[str, Any], out_dir: Path) -> TaskData:
    """The task's data: the copy stored in the run directory (a resume), else built now (a
    missing release file raises DataError before anything is written)."""
    path = data_path(config, out_dir)
    if path.is_file():
        return torch.load(path, weights_only=False)
    try:
        return instantiate(config["data"])
    except InstantiationException as e:  # hydra wraps the builder's own error: show that one
        if isinstance(e.__cause__, DataError):
            raise e.__cause__ from None
        raise


def store_data(data: TaskData, config: dict[str, Any], out_dir: Path) -> Path:
    """Keep the data in the run directory, where every job reads it; its path."""
    path = data_path(config, out_dir)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(data, tmp)
        tmp.replace(path)
    return path


def done_keys(out_dir: Path) -> set[tuple]:
    return {schema.job_key(r) for r in read_rows(rows_file(out_dir)) if schema.is_train_row(r)}


class JobProcess:
    """One job's process: start it, poll it, kill its group."""

    def __init__(self, job_dir: Path, threads: int | None):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
        if threads:
            env["ATTNBENCH_THREADS"] = str(threads)
        self.log_path = job_dir / "log.txt"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "attnbench.train.job", str(job_dir)],
                                     stdout=self.log, stderr=self.log, start_new_session=True, env=env)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()

    def log_tail(self) -> str:
        try:
            return " ".join(self.log_path.read_text(errors="replace")[-LOG_TAIL:].split())
        except OSError:
            return ""


def death_reason(returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        why = " (the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"the job's process died of {name}{why}"
    return f"the job's process exited with code {returncode} without a result"


def wait(jp: JobProcess, job_dir: Path, timeout_s: float, on_progress) -> tuple[dict | None, str | None]:
    """(result, None) when the job wrote one; (None, status) on timeout or death."""
    deadline = time.monotonic() + timeout_s
    try:
        while jp.proc.poll() is None:
            if time.monotonic() > deadline:
                jp.kill()
                return None, "timeout"
            p = job_dir / "progress.json"
            if on_progress and p.is_file():
                try:
                    on_progress(json.loads(p.read_text()))
                except (ValueError, OSError):
                    pass  # being rewritten; the next poll reads it
            time.sleep(POLL_S)
    except BaseException:
        jp.kill()  # Ctrl-C: nothing outlives the parent
        raise
    jp.log.close()
    r = job_dir / "result.json"
    if r.is_file() and jp.proc.returncode == 0:
        return json.loads(r.read_text()), None
    return None, "crash"


def row_for(plan: JobPlan, result: dict | None, failure: str | None, jp: JobProcess, wall_s: float,
            env: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    s = plan.spec
    common = dict(job=plan.job_id, task=plan.task, task_version=plan.config["version"], size=plan.size, arch=plan.arch,
                  variant=s.name, pattern=s.pattern, kernel=s.kernel, family=s.family, params=plan.params,
                  param_label=plan.label, seed=plan.seed, wall_s=wall_s, device="cpu", config=plan.config,
                  config_hash=config_hash(plan.config), git_sha=env.get("git_sha"),
                  metric=plan.config["metric"]["name"], higher_is_better=plan.config["metric"]["higher_is_better"])
    if result is not None:
        fields = {k: v for k, v in result.items() if k in schema.NAMES}
        return schema.make_row(**{**fields, **common})
    if failure == "timeout":
        reasons = [f"exceeded the {timeout_s:g} s limit per job (--timeout); --resume continues it from its last checkpoint"]
    else:
        reasons = [death_reason(jp.proc.returncode), f"log: ...{jp.log_tail()}"]
    return schema.make_row(**common, status=failure, reasons=reasons)


def run_job(plan: JobPlan, out_dir: Path, data_path: Path, *, timeout_s: float, threads: int | None,
            resume: bool, env: dict[str, Any], plugins: tuple[str, ...] = (),
            on_progress=None) -> dict[str, Any]:
    """Run one job isolated; its row (never raises for the job's own failures)."""
    job_dir = out_dir / "jobs" / plan.job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "result.json").unlink(missing_ok=True)
    config = {**plan.config, "data": {"_target_": "attnbench.train.runner.load_data", "path": str(data_path)}}
    spec = {"job": plan.job_id, "variant": plan.spec.name, "params": plan.params, "seed": plan.seed,
            "config": config, "resume": resume, "plugins": list(plugins)}
    (job_dir / "job.json").write_text(json.dumps(spec, indent=1, default=str))
    t0 = time.perf_counter()
    jp = JobProcess(job_dir, threads)
    try:
        result, failure = wait(jp, job_dir, timeout_s, on_progress)
    finally:
        wall_s = _add_wall(job_dir, time.perf_counter() - t0)  # kept across a kill and --resume
    return row_for(plan, result, failure, jp, wall_s, env, timeout_s)


def _add_wall(job_dir: Path, seconds: float) -> float:
    """The job's wall time over all its attempts (``wall_s`` in its directory)."""
    p = job_dir / "wall_s"
    total = seconds + (float(p.read_text()) if p.is_file() else 0.0)
    p.write_text(f"{total:.3f}\n")
    return total


def load_data(path: str) -> TaskData:
    """A job's data: the copy its parent built (``_target_`` of the job's data config)."""
    return torch.load(path, weights_only=False)


def append(out_dir: Path, row: dict[str, Any]) -> None:
    w = ResultsWriter(out_dir / "results.jsonl")
    try:
        w.append(row)
    finally:
        w.close()
