"""``attnbench run``: plan the grid of cases, run each in an isolated worker, store every row.

The parent process plans, supervises and is the only writer of results; it never initializes
CUDA. A case (variant, shape, resolved params: ``attnbench.case.Case``) is made once here and
is what the worker runs, what the cost formulas read and what the row records. Cases of one
variant share a worker until one fails in a way that may have hurt the process (timeout, crash,
OOM); the next case then gets a fresh worker.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from attnbench import params as P
from attnbench import results, schema
from attnbench.case import Case, Shape, jsonable
from attnbench.config import BenchConfig
from attnbench.costs import io_bytes
from attnbench.harness import env
from attnbench.harness.flops import achieved
from attnbench.harness.isolate import Worker, WorkerDied
from attnbench.scaling import fit_loglog
from attnbench.vocab import STOPS_LARGER


def plan(cfg: BenchConfig) -> list[tuple[Case, int]]:
    """(case, n) for the grid, grouped by variant (one worker each), then parameter setting,
    mode and ascending n. Parameters were validated when the selection was made."""
    out = []
    for choice in cfg.choices:
        for setting in choice.overrides():
            for mode in cfg.modes:
                for n in cfg.seq_lens:
                    shape = Shape(batch=cfg.batch, heads=cfg.heads, kv_heads=cfg.kv_heads,
                                  seq_len=1 if mode == "decode" else n, kv_len=n, head_dim=cfg.head_dim,
                                  dtype=cfg.dtype, device=cfg.device, causal=cfg.causal, mode=mode)
                    out.append((Case.make(choice.spec, shape, setting), n))
    return out


def identity(case: Case, n: int, cfg: BenchConfig) -> dict[str, Any]:
    """The fields that say which case a row is (and what the kernel received)."""
    s, spec = case.shape, case.spec
    kw = case.kwargs
    return dict(
        variant=spec.name, pattern=spec.pattern, kernel=spec.kernel, family=spec.family, exact=spec.exact,
        params={k: jsonable(v) for k, v in kw.items()},
        param_label=P.format_params(P.non_default(spec.params, kw)),
        mode=s.mode, seq_len=n, q_len=s.seq_len, kv_len=s.kv_len, batch=s.batch, heads=s.heads,
        kv_heads=s.kv_heads, head_dim=s.head_dim, dtype=s.dtype, device=s.device, causal=s.causal,
        threads=cfg.threads, seed=cfg.seed,
    )


def costs(case: Case) -> dict[str, Any]:
    """What the formulas say of a supported case: FLOPs, bytes, predicted peak memory."""
    s = case.shape
    return dict(io_bytes=io_bytes(s), kv_cache_bytes=2 * s.batch * s.kv_heads * s.kv_len * s.head_dim * s.element_size,
                flops=case.flops(), predicted_peak_bytes=case.predicted_peak_bytes())


def default_out_dir() -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("results") / "runs" / stamp


class Runner:
    def __init__(self, cfg: BenchConfig, console=None):
        from attnbench.report.console import make_console

        self.cfg = cfg
        self.console = console or make_console(stderr=True)
        self.out = cfg.out or default_out_dir()
        self.worker: Worker | None = None
        self.worker_variant: str | None = None
        self.peak_gflops: float | None = None
        self.mem_budget = 0.0

    # -- workers ---------------------------------------------------------------------------
    def _worker_for(self, variant: str) -> Worker:
        if self.worker is not None and (self.worker_variant != variant or not self.worker.alive):
            self._drop_worker()
        if self.worker is None:
            self.worker = Worker(threads=self.cfg.threads, plugins=tuple(self.cfg.plugins),
                                 start_timeout=max(120.0, self.cfg.timeout_s))
            self.worker_variant = variant
        return self.worker

    def _drop_worker(self) -> None:
        if self.worker is not None:
            self.worker.close()
        self.worker = None

    def probe(self) -> dict[str, Any]:
        """Device facts and the GEMM peak, measured in a worker (CUDA stays out of the parent)."""
        with Worker(threads=self.cfg.threads, plugins=tuple(self.cfg.plugins)) as w:
            return w.request({"op": "probe", "device": self.cfg.device, "dtype": self.cfg.dtype}, 300)

    # -- one case --------------------------------------------------------------------------
    def _precheck(self, case: Case, n: int, stopped: dict) -> dict[str, Any] | None:
        """Fields that settle a case without running it (unsupported, skipped), else None."""
        reasons = case.reasons()
        if reasons:
            return {"status": "unsupported", "reasons": reasons}
        stop = stopped.get((case.variant, case.params, case.shape.mode))
        if stop is not None and n > stop[0]:
            return {"status": "skipped", "reasons": [f"{stop[1]} at n={stop[0]}; larger n not attempted"]}
        return None

    def _over_budget(self, row: dict[str, Any]) -> dict[str, Any] | None:
        pred = row.get("predicted_peak_bytes")
        if pred is None or not self.mem_budget or pred + row["io_bytes"] <= self.mem_budget:
            return None
        return {"status": "skipped", "reasons": [
            f"predicted peak {(pred + row['io_bytes']) / 1e9:.2f} GB exceeds the memory budget "
            f"{self.mem_budget / 1e9:.2f} GB (mem_budget_gb)"]}

    def run_case(self, case: Case, n: int, stopped: dict) -> dict[str, Any]:
        cfg = self.cfg
        row = identity(case, n, cfg)
        settled = self._precheck(case, n, stopped)
        if settled is None:
            try:
                row.update(costs(case))
            except Exception as exc:  # noqa: BLE001 - a cost formula that fails is this case's row
                from attnbench.harness.failures import classify

                status, reasons = classify(exc)
                settled = {"status": status, "reasons": [f"cost model: {r}" for r in reasons]}
        settled = settled or self._over_budget(row)
        if settled is not None:
            return schema.make_row(**row, **settled)
        opts = {"seed": cfg.seed, "check": cfg.check, "memory": cfg.memory, "timing": cfg.timing}
        try:
            res = self._worker_for(case.variant).request({"op": "case", "case": case.to_json(), "opts": opts},
                                                         cfg.timeout_s)
        except WorkerDied as d:
            self._drop_worker()
            res = {"status": d.status, "reasons": d.reasons}
        if res["status"] == "oom":
            self._drop_worker()  # a process that hit OOM may hold fragments; start clean
        row.update(res)
        row["gflops_per_s"], row["peak_fraction"] = achieved(row["flops"], row.get("time_ms_median"), self.peak_gflops)
        return schema.make_row(**row)

    # -- the sweep -------------------------------------------------------------------------
    def _run_info(self, resumed: bool) -> dict[str, Any]:
        """run.json: the environment and the resolved config (kept, with resume times, on resume)."""
        cfg, run_json = self.cfg, self.out / "run.json"
        if resumed and run_json.exists():
            info = json.loads(run_json.read_text())
            info.setdefault("resumed_at", []).append(dt.datetime.now(dt.timezone.utc).isoformat())
            return info
        info = {**env.host_environment(), "started_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        load, cores = info["load_average_1m"], info["cpu_count"] or 1
        if cfg.device == "cpu" and load > 0.5 * min(cfg.threads, cores):
            self.console.print(
                f"[yellow]warning: load average {load:.1f} on {cores} cores: other processes share the "
                f"CPU, so multi-threaded timings (OpenMP waits) can be off by orders of magnitude[/yellow]")
        self.console.print(f"probing {cfg.device} (GEMM peak, device facts) ...")
        info.update(self.probe())
        info["config"] = {**cfg.raw, "resolved": {
            "variants": cfg.variants, "settings": {c.spec.name: c.overrides() for c in cfg.choices},
            "seq_lens": cfg.seq_lens, "device": cfg.device, "threads": cfg.threads, "kv_heads": cfg.kv_heads,
            "modes": cfg.modes, "timing": cfg.timing, "out": str(self.out)}}
        return info

    def _sweep(self, grid: list[tuple[Case, int]], done: set, stopped: dict, writer) -> int:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        new_rows = 0
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=self.console, transient=False) as prog:
            task = prog.add_task("run", total=len(grid))
            for case, n in grid:
                prog.update(task, description=f"{case.variant:<18} {case.shape.mode:<7} n={n:<6}")
                if schema.case_key(identity(case, n, self.cfg)) not in done:
                    row = self.run_case(case, n, stopped)
                    writer.append(row)
                    new_rows += 1
                    if row["status"] in STOPS_LARGER:
                        stopped.setdefault((case.variant, case.params, case.shape.mode), (n, row["status"]))
                prog.advance(task)
        return new_rows

    def run(self) -> Path:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        jsonl = self.out / "results.jsonl"
        t0 = time.time()
        results.repair(jsonl)  # never append after a torn line
        earlier = results.upgraded(results.read_rows(jsonl)) if cfg.resume else []
        info = self._run_info(cfg.resume)
        results.write_run_json(self.out, info)
        self.peak_gflops = info.get("gemm_peak_gflops")
        self.mem_budget = cfg.mem_budget_bytes or 0.8 * (info.get("device_total_bytes") or env.mem_available_bytes())
        grid = plan(cfg)
        stopped = _stopped_from(earlier, grid)
        writer = results.ResultsWriter(jsonl)
        try:
            new_rows = self._sweep(grid, {schema.case_key(r) for r in earlier}, stopped, writer)
        finally:
            writer.close()
            self._drop_worker()
        self._finish(jsonl, new_rows, t0)
        return self.out

    def _finish(self, jsonl: Path, new_rows: int, t0: float) -> None:
        from attnbench.report.console import print_summary

        rows = results.upgraded(results.read_rows(jsonl))
        results.write_parquet(self.out)
        scaling = fit_scaling(rows, self.cfg.scaling_min_seq_len)
        scaling.to_csv(self.out / "scaling.csv", index=False)
        print_summary(rows, scaling, baseline=self.cfg.baseline, console=self.console)
        self.console.print(f"[bold]{new_rows} new rows ({len(rows)} in all) in {time.time() - t0:.0f} s -> "
                           f"{jsonl} and {self.out / 'results.parquet'}[/bold]")


def _stopped_from(rows: list[dict], grid: list[tuple[Case, int]]) -> dict:
    """A resumed run keeps skipping past earlier failures: (variant, params, mode) -> (n, status)."""
    by_key = {(c.variant, schema.params_key({k: jsonable(v) for k, v in c.params}), c.shape.mode): c.params
              for c, _ in grid}
    stopped: dict = {}
    for r in rows:
        params = by_key.get((r["variant"], schema.params_key(r.get("params")), r["mode"]))
        if r["status"] in STOPS_LARGER and params is not None:
            k = (r["variant"], params, r["mode"])
            stopped[k] = min(stopped.get(k, (r["seq_len"], r["status"])), (r["seq_len"], r["status"]))
    return stopped


SCALING_KEYS = ["variant", "param_label", "mode", "dtype", "device", "causal", "batch", "heads", "kv_heads", "head_dim"]


def fit_scaling(rows: list[dict], min_seq_len: int = 2048):
    """Log-log slope of median time and of peak memory vs n, per variant, parameters and setting.

    Fitted over ok rows with n >= ``min_seq_len`` when at least two such n exist, else over all
    ok rows (``attnbench.scaling.fit_loglog``).
    """
    import pandas as pd

    cols = [*SCALING_KEYS, "time_slope", "mem_slope", "n_min", "n_max", "points"]
    df = pd.DataFrame([r for r in rows if r.get("status") == "ok"])
    if df.empty:
        return pd.DataFrame(columns=cols)
    df["param_label"] = df["param_label"].fillna("")
    out = []
    for k, g in df.groupby(SCALING_KEYS, sort=True):
        big = g[g["seq_len"] >= min_seq_len]
        g = big if big["seq_len"].nunique() >= 2 else g
        slopes = {}
        for col, name in (("time_ms_median", "time_slope"), ("peak_mem_bytes", "mem_slope")):
            s, _, _ = fit_loglog(g["seq_len"], pd.to_numeric(g[col], errors="coerce"))
            slopes[name] = None if s != s else s
        out.append({**dict(zip(SCALING_KEYS, k)), **slopes, "n_min": int(g["seq_len"].min()),
                    "n_max": int(g["seq_len"].max()), "points": int(len(g))})
    return pd.DataFrame(out, columns=cols)


def run_benchmark(cfg: BenchConfig, console=None) -> Path:
    return Runner(cfg, console).run()
