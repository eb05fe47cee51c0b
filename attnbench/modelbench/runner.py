"""``attnbench run --level model``: the parent of a model-level run, and the only writer of its rows.

It plans the probes (variants x n, then the max-n search), runs each in a fresh process with a
deadline (:mod:`attnbench.modelbench.isolate`), and appends one complete row per probe to
``results.jsonl`` as it finishes. Settled before any process starts: a variant that cannot run
the model's case is ``unsupported`` with the registry's reasons (the skeleton is built on the CPU
to ask it). After an oom, timeout or crash at some n, larger n of that variant are ``skipped``,
as in kernel runs. One writer per directory (``results.RunLock``); ``--resume`` keeps every row
and runs the rest, the max-n search reusing the probes it already has.
"""
from __future__ import annotations

import datetime as dt
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from attnbench import results
from attnbench.harness import env
from attnbench.harness.failures import classify
from attnbench.modelbench import isolate, maxn, schema
from attnbench.modelbench.plan import ModelRunConfig, VariantPlan, skeleton_text
from attnbench.report.console import make_console, plain
from attnbench.vocab import STOPS_LARGER


def model_config(cfg: ModelRunConfig, vp: VariantPlan, n: int):
    from attnbench.models import ModelConfig

    return ModelConfig(**cfg.model_cfg, variant=vp.spec.name, params=dict(vp.params), vocab_size=cfg.inputs.vocab_size,
                       num_classes=cfg.inputs.num_classes, max_len=n, causal=cfg.inputs.kind == "tokens")


def identity(cfg: ModelRunConfig, vp: VariantPlan, n: int, probe: str, info: dict[str, Any]) -> dict[str, Any]:
    """The fields that say which probe a row is, known before it runs."""
    from attnbench.models.attention import kv_heads_used

    s, m = vp.spec, cfg.model_cfg
    return dict(probe=probe, task=cfg.task, task_version=cfg.task_cfg.get("version"), size=cfg.size,
                kind=cfg.inputs.kind, skeleton=skeleton_text(cfg), inputs_source=cfg.inputs.source, variant=s.name,
                pattern=s.pattern, kernel=s.kernel, family=s.family, exact=s.exact, params=vp.params,
                param_label=vp.label, seq_len=n, batch=cfg.batch, layers=m.get("layers"), d_model=m.get("d_model"),
                heads=m.get("heads"), kv_heads=kv_heads_used(model_config(cfg, vp, n), s),
                head_dim=m["d_model"] // m["heads"], causal=cfg.inputs.kind == "tokens", dtype="float32",
                device=cfg.device, seed=cfg.seed, threads=cfg.threads, config=cfg.task_cfg, config_hash=cfg.config_hash,
                git_sha=info.get("git_sha"))


def precheck(cfg: ModelRunConfig, vp: VariantPlan, n: int) -> dict[str, Any] | None:
    """Status and reasons of a probe settled without running it (the registry refuses the
    model's case); None when it can run."""
    from attnbench.models import build_model

    try:
        build_model(cfg.inputs.kind, model_config(cfg, vp, n), device=cfg.device, check=True)
    except Exception as exc:  # noqa: BLE001 - a refusal is the probe's row
        status, reasons = classify(exc)
        return {"status": status, "reasons": reasons}
    return None


def job(cfg: ModelRunConfig, vp: VariantPlan, n: int, probe: str, cap: float | None) -> dict[str, Any]:
    """What the child process runs (``probe.run``'s job)."""
    return {"probe": probe, "kind": cfg.inputs.kind, "model": cfg.model_cfg, "train": cfg.optimizer_cfg(),
            "variant": vp.spec.name, "params": vp.params, "vocab_size": cfg.inputs.vocab_size,
            "num_classes": cfg.inputs.num_classes, "seq_len": n, "batch": cfg.batch, "device": cfg.device,
            "seed": cfg.seed, "timing": cfg.timing, "plugins": cfg.plugins,
            "mem_cap_bytes": int(cap) if cap else None,
            "step_timeout_s": cfg.step_timeout_s if probe == "max_n" else None}


class Interrupted(Exception):
    """Ctrl-C during a run: the probe's process was killed and the rows kept; the message says how to resume."""


class ModelRunner:
    def __init__(self, cfg: ModelRunConfig, console=None, command: str | None = None):
        self.cfg = cfg
        self.console = console or make_console(stderr=True)  # progress and logs
        self.stdout = make_console()  # the tables
        self.command = command or shlex.join(["python", "-m", "attnbench", *sys.argv[1:]])
        self.out = cfg.out
        self.lock = results.RunLock(self.out)
        self.info: dict[str, Any] = {}
        self.writer: results.ResultsWriter | None = None
        self.rows: list[dict[str, Any]] = []  # every row of the directory, earlier ones first
        self.new_rows = 0

    # -- one probe ---------------------------------------------------------------------------
    def run_probe(self, vp: VariantPlan, n: int, kind: str, cap: float | None, settled: dict | None = None) -> dict:
        row = identity(self.cfg, vp, n, kind, self.info)
        row["mem_budget_bytes"] = int(cap) if cap else None
        if kind == "max_n":
            row["search"] = {"start": self.cfg.seq_lens[0], "n_cap": self.cfg.n_cap, "grain": maxn.GRAIN,
                             "budgets": [int(b) for b in self.cfg.budgets], "step_timeout_s": self.cfg.step_timeout_s}
        settled = settled or precheck(self.cfg, vp, n)
        if settled is None:
            timeout = self.cfg.timeout_s if kind == "measure" else 120.0 + 2.5 * self.cfg.step_timeout_s
            res = isolate.run_probe(job(self.cfg, vp, n, kind, cap), timeout_s=timeout, threads=self.cfg.threads)
            settled = {k: v for k, v in res.items() if k in schema.NAMES}
            if res.get("status") == "timeout" and kind == "max_n" and "slower than" not in res["reasons"][0]:
                settled["reasons"] = [f"slower than {self.cfg.step_timeout_s:g} s per step (--step-timeout): "
                                      + res["reasons"][0]]
        row.update(settled)
        row = schema.make_row(**row)
        self.writer.append(row)
        self.rows.append(row)
        self.new_rows += 1
        return row

    # -- the grid ----------------------------------------------------------------------------
    def _measure(self, prog, done: dict) -> None:
        cfg = self.cfg
        task = prog.add_task("measure", total=len(cfg.variants) * len(cfg.seq_lens))
        for vp in cfg.variants:
            stop: tuple[int, str] | None = None
            for n in cfg.seq_lens:
                prog.update(task, description=f"{vp.spec.name:<22} n={n:<6}")
                key = schema.probe_key({**identity(cfg, vp, n, "measure", self.info),
                                        "mem_budget_bytes": _int(cfg.mem_guard_bytes)})
                earlier = done.get(key)
                if earlier is None:
                    settled = None
                    if stop is not None:
                        settled = {"status": "skipped", "reasons": [f"{stop[1]} at n={stop[0]}; larger n not attempted"]}
                    earlier = self.run_probe(vp, n, "measure", cfg.mem_guard_bytes, settled)
                if earlier["status"] in STOPS_LARGER and stop is None:
                    stop = (n, earlier["status"])
                prog.advance(task)

    def _max_n(self, prog, done: dict) -> None:
        cfg = self.cfg
        cap = cfg.budgets[-1]
        task = prog.add_task("max n", total=len(cfg.variants))
        for vp in cfg.variants:
            def probe(n: int, vp=vp) -> dict[str, Any]:
                prog.update(task, description=f"max n {vp.spec.name:<16} n={n:<6}")
                key = schema.probe_key({**identity(cfg, vp, n, "max_n", self.info), "mem_budget_bytes": _int(cap)})
                if key not in done:
                    done[key] = self.run_probe(vp, n, "max_n", cap)
                return done[key]

            for b in cfg.budgets:
                maxn.search(probe, b, cfg.seq_lens[0], cfg.n_cap)
            prog.advance(task)

    # -- the run -----------------------------------------------------------------------------
    def _start(self) -> dict:
        """run.json (kept on resume) and the earlier rows by probe key."""
        jsonl = self.out / "results.jsonl"
        stored = results.read_run_json(self.out) if self.cfg.resume else None
        if not self.cfg.resume and results.rows_file(self.out).exists():
            raise results.StoreError(f"--out {self.out}: already holds a run ({results.rows_file(self.out).name}); "
                                     "add --resume to continue it, or choose a new --out")
        results.repair(jsonl)
        self.rows = [r for r in results.read_rows(jsonl) if schema.is_model_row(r)]
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        if stored is not None:
            stored.setdefault("resumed_at", []).append(now)
            self.info = stored
        else:
            self.info = {"kind": "model", **env.host_environment(), "started_at": now,
                         "torch_version": env.versions().get("torch"), "settings": self.cfg.settings,
                         "task": {"name": self.cfg.task, "size": self.cfg.size, "config": self.cfg.task_cfg}}
        results.write_run_json(self.out, self.info)
        return {schema.probe_key(r): r for r in self.rows}

    def run(self) -> Path:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        t0 = time.time()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise results.StoreError(f"--out {self.out}: cannot create the directory ({e.strerror})") from None
        self.lock.acquire(self.command)
        try:
            done = self._start()
            self.writer = results.ResultsWriter(self.out / "results.jsonl")
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=self.console) as prog:
                if self.cfg.measure:
                    self._measure(prog, done)
                if self.cfg.max_n:
                    self._max_n(prog, done)
            self._finish(t0)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; {len(self.rows)} rows kept in {self.out / 'results.jsonl'}; "
                              f"resume with: python -m attnbench run --level model --out "
                              f"{shlex.quote(str(self.out))} --resume") from None
        finally:
            if self.writer is not None:
                self.writer.close()
            self.lock.release()
        return self.out

    def _finish(self, t0: float) -> None:
        from attnbench.modelbench.summary import print_summary
        from attnbench.schema import to_parquet

        names = {r.get("device_name") for r in self.rows if r.get("device_name")}
        if names and not self.info.get("device_name"):
            self.info["device_name"] = sorted(names)[0]
            results.write_run_json(self.out, self.info)
        to_parquet(self.rows, self.out / "results.parquet", schema.FIELDS)
        # rows that never reached a probe's process (unsupported, skipped) name the run's machine,
        # as the report does, so that they join their group's tables
        run_dev = self.info.get("device_name")
        print_summary([dict(r, device_name=r.get("device_name") or run_dev) for r in self.rows], self.stdout)
        self.stdout.print(plain(f"{self.new_rows} new rows ({len(self.rows)} in all) in {time.time() - t0:.0f} s -> "
                                f"{self.out / 'results.jsonl'}; tables and figures: python -m attnbench report "
                                f"{shlex.quote(str(self.out))}"), style="bold")


def _int(x: float | None) -> int | None:
    return int(x) if x else None
