"""``attnbench run``: plan the grid, run each case in an isolated worker, store every row.

The parent process plans, supervises and is the only writer of results; it never initializes
CUDA. Cases of one variant share a worker until one fails in a way that may have hurt the
process (timeout, crash, OOM); the next case then gets a fresh worker.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from attnbench import results
from attnbench.config import BenchConfig
from attnbench.harness import env
from attnbench.harness.flops import achieved
from attnbench.harness.isolate import Worker, WorkerDied
from attnbench.registry import Shape, VariantSpec, get, io_bytes

FAIL_STOPS_LARGER = ("oom", "timeout", "crash")


def case_shape(cfg: BenchConfig, spec: VariantSpec, n: int, mode: str) -> Shape:
    q_len = 1 if mode == "decode" else n
    s = Shape(batch=cfg.batch, heads=cfg.heads, kv_heads=cfg.kv_heads, seq_len=q_len, kv_len=n,
              head_dim=cfg.head_dim, dtype=cfg.dtype, device=cfg.device, causal=cfg.causal, mode=mode)
    return spec.resolve_shape(s)


def base_row(spec: VariantSpec, shape: Shape, n: int, cfg: BenchConfig) -> dict[str, Any]:
    e = shape.element_size
    return {
        "variant": spec.name, "mode": shape.mode, "seq_len": n, "batch": shape.batch,
        "heads": shape.heads, "kv_heads": shape.kv_heads, "head_dim": shape.head_dim,
        "dtype": shape.dtype, "device": shape.device, "causal": shape.causal,
        "q_len": shape.seq_len, "kv_len": shape.kv_len, "pattern": spec.pattern,
        "kernel": spec.kernel, "family": spec.family, "exact": spec.exact,
        "io_bytes": io_bytes(shape),
        "kv_cache_bytes": 2 * shape.batch * shape.kv_heads * shape.kv_len * shape.head_dim * e,
        "flops": spec.flops(shape), "threads": cfg.threads, "params": dict(spec.defaults),
        "gflops_per_s": None, "peak_fraction": None,
    }


def plan(cfg: BenchConfig) -> list[tuple[VariantSpec, Shape, int]]:
    """The grid, grouped by variant (one worker each), then mode, then ascending n."""
    return [
        (spec, case_shape(cfg, spec, n, mode), n)
        for spec in map(get, cfg.variants)
        for mode in cfg.modes
        for n in cfg.seq_lens
    ]


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

    # -- workers ---------------------------------------------------------------------------
    def _worker_for(self, variant: str) -> Worker:
        if self.worker is not None and (self.worker_variant != variant or not self.worker.alive):
            self.worker.close()
            self.worker = None
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
    def run_case(self, spec: VariantSpec, shape: Shape, n: int, blocked: dict) -> dict[str, Any]:
        cfg = self.cfg
        row = base_row(spec, shape, n, cfg)
        reasons = spec.not_supported_reasons(shape)
        if reasons:
            return {**row, "status": "unsupported", "reasons": reasons}
        stop = blocked.get((spec.name, shape.mode))
        if stop is not None and n > stop[0]:
            return {**row, "status": "skipped", "reasons": [f"{stop[1]} at n={stop[0]}; larger n not attempted"]}
        pred = spec.predicted_peak_bytes(shape)
        if pred is not None:
            row["predicted_peak_bytes"] = pred
            if self.mem_budget and pred + row["io_bytes"] > self.mem_budget:
                return {**row, "status": "skipped", "reasons": [
                    f"predicted peak {(pred + row['io_bytes']) / 1e9:.2f} GB exceeds the memory budget "
                    f"{self.mem_budget / 1e9:.2f} GB (mem_budget_gb)"]}
        case = {"variant": spec.name, "shape": asdict(shape), "params": {}, "seed": cfg.seed,
                "check": cfg.check, "memory": cfg.memory, "timing": cfg.timing}
        try:
            res = self._worker_for(spec.name).request({"op": "case", "case": case}, cfg.timeout_s)
        except WorkerDied as d:
            self._drop_worker()
            res = {"status": d.status, "reasons": d.reasons}
        if res["status"] in ("oom",):
            self._drop_worker()  # a process that hit OOM may hold fragments; start clean
        row.update(res)
        g, frac = achieved(row["flops"], row.get("time_ms_median"), self.peak_gflops)
        row["gflops_per_s"], row["peak_fraction"] = g, frac
        return row

    # -- the sweep -------------------------------------------------------------------------
    def run(self) -> Path:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        jsonl = self.out / "results.jsonl"
        done: dict[tuple, dict] = {}
        results.repair(jsonl)  # never append after a torn line
        if cfg.resume:
            done = {results.case_key(r): r for r in results.read_rows(jsonl)}
        run_json = self.out / "run.json"
        t0 = time.time()
        if cfg.resume and run_json.exists():
            import json

            info = json.loads(run_json.read_text())
            info.setdefault("resumed_at", []).append(dt.datetime.now(dt.timezone.utc).isoformat())
        else:
            info = {**env.host_environment(), "started_at": dt.datetime.now(dt.timezone.utc).isoformat()}
            load, cores = info["load_average_1m"], info["cpu_count"] or 1
            if cfg.device == "cpu" and load > 0.5 * min(cfg.threads, cores):
                self.console.print(
                    f"[yellow]warning: load average {load:.1f} on {cores} cores: other processes share the "
                    f"CPU, so multi-threaded timings (OpenMP waits) can be off by orders of magnitude[/yellow]")
            self.console.print(f"probing {cfg.device} (GEMM peak, device facts) ...")
            info.update(self.probe())
            info["config"] = {**cfg.raw, "resolved": {
                "variants": cfg.variants, "seq_lens": cfg.seq_lens, "device": cfg.device,
                "threads": cfg.threads, "kv_heads": cfg.kv_heads, "modes": cfg.modes,
                "timing": cfg.timing, "out": str(self.out)}}
        results.write_run_json(self.out, info)
        self.peak_gflops = info.get("gemm_peak_gflops")
        total = info.get("device_total_bytes") or env.mem_available_bytes()
        self.mem_budget = cfg.mem_budget_bytes or 0.8 * total

        grid = plan(cfg)
        blocked: dict[tuple[str, str], tuple[int, str]] = {}
        for r in done.values():  # a resumed run keeps skipping past earlier failures
            if r["status"] in FAIL_STOPS_LARGER:
                k = (r["variant"], r["mode"])
                blocked[k] = min(blocked.get(k, (r["seq_len"], r["status"])), (r["seq_len"], r["status"]))
        writer = results.ResultsWriter(jsonl)
        new_rows = 0
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=self.console, transient=False) as prog:
                task = prog.add_task("run", total=len(grid))
                for spec, shape, n in grid:
                    key = results.case_key(base_row(spec, shape, n, cfg))
                    prog.update(task, description=f"{spec.name:<18} {shape.mode:<7} n={n:<6}")
                    if key in done:
                        prog.advance(task)
                        continue
                    row = self.run_case(spec, shape, n, blocked)
                    writer.append(row)
                    new_rows += 1
                    if row["status"] in FAIL_STOPS_LARGER:
                        blocked.setdefault((spec.name, shape.mode), (n, row["status"]))
                    prog.advance(task)
        finally:
            writer.close()
            self._drop_worker()
        rows = results.read_rows(jsonl)
        scaling = fit_scaling(rows, cfg.scaling_min_seq_len)
        scaling.to_csv(self.out / "scaling.csv", index=False)
        from attnbench.report.console import print_summary

        print_summary(rows, scaling, baseline=cfg.baseline, console=self.console)
        self.console.print(
            f"[bold]{new_rows} new rows ({len(rows)} in all) in {time.time() - t0:.0f} s -> {jsonl}[/bold]"
        )
        return self.out


def fit_scaling(rows: list[dict], min_seq_len: int = 2048):
    """Log-log slope of median time and of peak memory vs n, per variant and setting.

    Fitted over ok rows with n >= ``min_seq_len`` when at least two exist, else over all ok
    rows. Returns a DataFrame with one line per (variant, mode, dtype, device, causal, ...).
    """
    import pandas as pd

    cols = ["variant", "mode", "dtype", "device", "causal", "batch", "heads", "kv_heads", "head_dim",
            "time_slope", "mem_slope", "n_min", "n_max", "points"]
    df = pd.DataFrame([r for r in rows if r.get("status") == "ok"])
    if df.empty:
        return pd.DataFrame(columns=cols)
    out = []
    keys = ["variant", "mode", "dtype", "device", "causal", "batch", "heads", "kv_heads", "head_dim"]
    for k, g in df.groupby(keys, sort=True):
        big = g[g["seq_len"] >= min_seq_len]
        g = big if big["seq_len"].nunique() >= 2 else g
        g = g.sort_values("seq_len")
        x = np.log(g["seq_len"].to_numpy(dtype=float))

        def slope(col):
            if col not in g or g["seq_len"].nunique() < 2:
                return None
            y = g[col].to_numpy(dtype=float)
            ok = np.isfinite(y) & (y > 0)
            if ok.sum() < 2 or len(set(x[ok])) < 2:
                return None
            return float(np.polyfit(x[ok], np.log(y[ok]), 1)[0])

        out.append({**dict(zip(keys, k)), "time_slope": slope("time_ms_median"),
                    "mem_slope": slope("peak_mem_bytes"), "n_min": int(g["seq_len"].min()),
                    "n_max": int(g["seq_len"].max()), "points": int(len(g))})
    return pd.DataFrame(out, columns=cols)


def run_benchmark(cfg: BenchConfig, console=None) -> Path:
    return Runner(cfg, console).run()
