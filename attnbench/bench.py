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
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from attnbench import params as P
from attnbench import results, schema
from attnbench.case import Case, Shape, jsonable
from attnbench.config import BenchConfig, ConfigError
from attnbench.costs import io_bytes
from attnbench.harness import env
from attnbench.harness.allocator import DEFAULT as ALLOCATOR_DEFAULT
from attnbench.harness.allocator import allocator_env
from attnbench.harness.flops import GEMM_DRIFT_WARN, achieved
from attnbench.harness.isolate import Worker, WorkerDied
from attnbench.report.console import make_console, plain, print_summary
from attnbench.scaling import fit_loglog_ci
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


PROBE_BUDGET_S = 2.0  # seconds of the GEMM probe of a run at the default per-case budget (1 s) or more


def probe_budget(case_budget_s: float) -> float:
    """The GEMM probe's budget: PROBE_BUDGET_S, cut for a run whose cases get a tenth of a second
    or less (a smoke run, the tests), down to 0.25 s: a peak no longer than the cases it divides."""
    return min(PROBE_BUDGET_S, max(0.25, 10.0 * case_budget_s))


class Interrupted(Exception):
    """Ctrl-C during a run: the worker was killed and the rows kept; the message says how to resume."""


def resume_command(out: Path) -> str:
    """The command that continues the run in ``out`` (its run.json holds the whole config)."""
    return f"python -m attnbench run --out {shlex.quote(str(out))} --resume"


LIST_KEYS = ("variants", "seq_lens", "modes")  # a resumed run may plan fewer of these: no new case


def stored_grids(info: dict[str, Any]) -> list[dict[str, Any]]:
    """Every grid a stored run's rows were planned with (``BenchConfig.grid``; more than one after
    ``--extend``); for a run.json written before grids were recorded, rebuilt from its config."""
    if info.get("grids"):  # runs before --allocator existed ran under the default allocator
        return [{"allocator": ALLOCATOR_DEFAULT, **g["grid"]} for g in info["grids"]]
    c = info.get("config") or {}
    r = c.get("resolved") or {}
    g = {"variants": sorted(P.label(n, s) for n, ss in (r.get("settings") or {}).items() for s in ss),
         **{k: r.get(k) for k in ("seq_lens", "modes", "device", "threads", "kv_heads")},
         **{k: c.get(k) for k in ("batch", "heads", "head_dim", "dtype", "causal", "seed", "check", "memory")}}
    g.update({f"timing.{k}": v for k, v in (r.get("timing") or {}).items()})
    g["allocator"] = c.get("allocator") or ALLOCATOR_DEFAULT
    return [g]


def grid_change(before: dict[str, Any], now: dict[str, Any]) -> str:
    """What ``now`` plans beyond ``before``, as 'seq_lens [64] -> [64, 128], ...'; '' when nothing
    (the same grid, or fewer variants, n or modes of it: every row stays described)."""
    def beyond(k: str) -> bool:
        b, n = before.get(k), now.get(k)
        if k in LIST_KEYS and isinstance(b, list) and isinstance(n, list):
            return not {json.dumps(x) for x in n} <= {json.dumps(x) for x in b}
        return b != n

    def show(v):
        return ", ".join(map(str, v)) if isinstance(v, list) and v and isinstance(v[0], str) else json.dumps(v)

    return ", ".join(f"{k} {show(before.get(k))} -> {show(now.get(k))}" for k in {**before, **now} if beyond(k))


class Runner:
    def __init__(self, cfg: BenchConfig, console=None, command: str | None = None):
        self.cfg = cfg
        self.console = console or make_console(stderr=True)  # progress and logs
        self.stdout = make_console()  # the results: the table and where the rows are
        self.command = command or shlex.join(["python", "-m", "attnbench", *sys.argv[1:]])
        self.out = cfg.out or default_out_dir()
        self.lock = results.RunLock(self.out)
        self.worker: Worker | None = None
        self.worker_variant: str | None = None
        self.peak_gflops: float | None = None
        self.mem_budget = 0.0
        self.kept = 0  # complete rows in results.jsonl (earlier + this run's)
        self.extending = False  # a resumed run with a grid of its own (--extend), recorded in run.json

    # -- workers ---------------------------------------------------------------------------
    def _worker_for(self, variant: str) -> Worker:
        if self.worker is not None and (self.worker_variant != variant or not self.worker.alive):
            self._drop_worker()
        if self.worker is None:
            self.worker = Worker(threads=self.cfg.threads, plugins=tuple(self.cfg.plugins), allocator=self.cfg.allocator,
                                 start_timeout=max(120.0, self.cfg.timeout_s))
            self.worker_variant = variant
        return self.worker

    def _drop_worker(self) -> None:
        if self.worker is not None:
            self.worker.close()
        self.worker = None

    def probe(self, gemm_only: bool = False) -> dict[str, Any]:
        """Device facts, the GEMM peak and the memory bandwidth (``gemm_only``: the GEMM peak
        alone), measured in a worker (CUDA stays out of the parent)."""
        with Worker(threads=self.cfg.threads, plugins=tuple(self.cfg.plugins), allocator=self.cfg.allocator) as w:
            return w.request({"op": "probe", "gemm_only": gemm_only, "device": self.cfg.device, "dtype": self.cfg.dtype,
                              "budget_s": probe_budget(float(self.cfg.timing["budget_s"]))}, 300)

    def end_probe(self) -> None:
        """The GEMM peak again, after the cases, into run.json: ``gemm_peak_end_gflops`` and
        ``gemm_drift`` (end / start - 1), so a run says whether the machine stayed as fast."""
        info = results.read_run_json(self.out) or {}
        try:
            end = self.probe(gemm_only=True)
        except WorkerDied as e:  # the rows are kept; the run only lacks its closing probe
            self.console.print(plain(f"warning: the closing GEMM probe failed ({e}); the run's rows are kept"),
                               style="yellow")
            return
        start, rate = info.get("gemm_peak_gflops"), end.get("gemm_peak_gflops")
        info.update(gemm_peak_end_gflops=rate, gemm_end_noisy=end.get("gemm_noisy"),
                    gemm_drift=(rate / start - 1) if rate and start else None)
        results.write_run_json(self.out, info)

    def _drift_line(self) -> None:
        """The line of :func:`drift_line` for this run, if its run.json has both probes."""
        said = drift_line(results.read_run_json(self.out) or {})
        if said is not None:
            self.stdout.print(plain(said[0]), style="yellow" if said[1] else None)

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
    def _warn_load(self, info: dict[str, Any]) -> None:
        load, cores = info["load_average_1m"], info["cpu_count"] or 1
        if self.cfg.device == "cpu" and load > 0.5 * min(self.cfg.threads, cores):
            fewer = ", or use fewer threads per worker (--threads 1)" if self.cfg.threads > 1 else ""
            self.console.print(plain(
                f"warning: load average {load:.1f} on {cores} cores: other processes share the CPU, so multi-threaded "
                f"timings (OpenMP waits) can be off by orders of magnitude: run on a quiet machine{fewer}"), style="yellow")

    def _config_record(self) -> dict[str, Any]:
        cfg = self.cfg
        return {**cfg.raw, "resolved": {
            "variants": cfg.variants, "settings": {c.spec.name: c.overrides() for c in cfg.choices},
            "seq_lens": cfg.seq_lens, "device": cfg.device, "threads": cfg.threads, "kv_heads": cfg.kv_heads,
            "modes": cfg.modes, "timing": cfg.timing, "out": str(self.out)}}

    def _run_info(self, stored: dict[str, Any] | None) -> dict[str, Any]:
        """run.json: the environment and the resolved config. A resumed run keeps it and adds the
        resume time; an extended one (``--extend``) adds its grid to ``grids`` and its config."""
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        grid = {"grid": self.cfg.grid(), "from": now}
        if stored is not None:
            stored.setdefault("resumed_at", []).append(now)
            if self.extending:
                stored["grids"] = [*(stored.get("grids") or [{"grid": stored_grids(stored)[0]}]), grid]
                stored["config"] = self._config_record()
            return stored
        info = {**env.host_environment(), "started_at": now, "allocator": self.cfg.allocator,
                "allocator_env": allocator_env(self.cfg.allocator)}
        self._warn_load(info)
        self.console.print(f"probing {self.cfg.device} (GEMM peak, memory bandwidth, device facts) ...")
        info.update(self.probe())
        if info.get("gemm_noisy"):
            self.console.print(plain(
                f"warning: the GEMM probe waited for a CPU in {info.get('gemm_wait_share') or 0:.0%} of its time: "
                f"other processes share the CPU; cases that cannot get clean calls will be flagged noisy"),
                style="yellow")
        if info.get("mem_bw_noisy"):
            self.console.print(plain("warning: the memory-bandwidth probe could not get clean calls: other "
                                     "processes share the CPU; the roofline's bandwidth ceiling is noisy"),
                               style="yellow")
        info["config"] = self._config_record()
        info["grids"] = [grid]  # every grid the rows were planned with (one unless --extend)
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
                    self.kept += 1
                    if row["status"] in STOPS_LARGER:
                        stopped.setdefault((case.variant, case.params, case.shape.mode), (n, row["status"]))
                prog.advance(task)
        return new_rows

    def _open(self) -> None:
        """The run directory, created and locked (one writer at a time)."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise results.StoreError(f"--out {self.out}: cannot create the directory ({e.strerror}); "
                                     "give a writable path") from None
        self.lock.acquire(self.command)

    def _start(self) -> list[dict]:
        """Checks that need the lock, then run.json; the earlier rows of a resumed run."""
        cfg, jsonl = self.cfg, self.out / "results.jsonl"
        if not cfg.resume and results.rows_file(self.out).exists():
            raise ConfigError(f"--out {self.out}: already holds a run ({results.rows_file(self.out).name}); "
                              "add --resume to continue it, or choose a new --out")
        stored = results.read_run_json(self.out) if cfg.resume else None
        if stored is not None:
            grids, now = stored_grids(stored), cfg.grid()
            change = "" if any(not grid_change(g, now) for g in grids) else grid_change(grids[-1], now)
            self.extending = bool(change)
            if change and not cfg.extend:
                raise ConfigError(
                    f"--resume: this command plans a different grid than the run in {self.out} ({change}); "
                    f"resume it as it was ({resume_command(self.out)}), or add --extend to run this grid "
                    "into it too (run.json then records every grid)")
        try:
            results.repair(jsonl)  # never append after a torn line
            earlier = results.upgraded(results.read_rows(jsonl)) if cfg.resume else []
        except results.CorruptResults as e:
            raise results.StoreError(f"{e}: delete or fix that line, then resume again") from None
        self.kept = len(earlier)
        info = self._run_info(stored)
        results.write_run_json(self.out, info)
        self.peak_gflops = info.get("gemm_peak_gflops")
        self.mem_budget = cfg.mem_budget_bytes or 0.8 * (info.get("device_total_bytes") or env.mem_available_bytes())
        return earlier

    def _measure(self, earlier: list[dict]) -> int:
        grid = plan(self.cfg)
        writer = results.ResultsWriter(self.out / "results.jsonl")
        try:
            return self._sweep(grid, {schema.case_key(r) for r in earlier}, _stopped_from(earlier, grid), writer)
        finally:
            writer.close()
            self._drop_worker()

    def _stopped_line(self, what: str) -> str:
        """What a stopped run kept and the command that continues it."""
        if not (self.out / "run.json").exists():
            return f"{what} before any case ran; nothing was written: run the command again"
        return (f"{what}; {self.kept} rows kept in {self.out / 'results.jsonl'}; "
                f"resume with: {resume_command(self.out)}")

    def run(self) -> Path:
        """Plan, measure, store; Ctrl-C kills the worker and says how to resume."""
        t0 = time.time()
        self._open()
        try:
            earlier = self._start()
            try:
                new_rows = self._measure(earlier)
                if new_rows:
                    self.end_probe()
                self._finish(new_rows, t0)
            except (OSError, results.StoreError) as e:  # a full disk, a read-only file
                what = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else str(e)
                raise results.StoreError(self._stopped_line(f"{what}; free disk space or make it writable")) from None
        except KeyboardInterrupt:
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break the cleanup
            try:
                self._close()
            finally:
                signal.signal(signal.SIGINT, previous)
            raise Interrupted(self._stopped_line("interrupted")) from None
        finally:
            self._close()
        return self.out

    def _close(self) -> None:
        """Kill the worker, release the directory (both idempotent)."""
        self._drop_worker()
        self.lock.release()

    def _finish(self, new_rows: int, t0: float) -> None:
        jsonl = self.out / "results.jsonl"
        rows = results.upgraded(results.read_rows(jsonl))
        results.write_parquet(self.out)
        scaling = fit_scaling(rows, self.cfg.scaling_min_seq_len)
        scaling.to_csv(self.out / "scaling.csv", index=False)
        print_summary(rows, scaling, baseline=self.cfg.baseline, console=self.stdout)
        self._drift_line()
        noisy = sum(bool(r.get("noisy")) for r in rows)
        if noisy:
            self.stdout.print(plain(
                f"{noisy} of {sum(r.get('status') == 'ok' for r in rows)} timed cases are noisy (other processes took "
                f"CPU from their worker or the machine; figures flagged, not clean): rerun them on a quiet machine or "
                f"with fewer threads per worker"), style="yellow")
        self.stdout.print(plain(f"{new_rows} new rows ({len(rows)} in all) in {time.time() - t0:.0f} s -> "
                                f"{jsonl} and {self.out / 'results.parquet'}"), style="bold")


def drift_line(info: dict) -> tuple[str, bool] | None:
    """(one line, whether it warns): the GEMM peak before and after a run's cases, a warning when
    it moved by more than GEMM_DRIFT_WARN; None for a run without both probes."""
    start, end, drift = (info.get(k) for k in ("gemm_peak_gflops", "gemm_peak_end_gflops", "gemm_drift"))
    if not start or not end or drift is None:
        return None
    line = f"GEMM peak {start:.0f} GFLOP/s before the cases, {end:.0f} after ({drift:+.0%})"
    if abs(drift) <= GEMM_DRIFT_WARN:
        return line, False
    return (f"warning: {line}: the machine's speed changed during the run; its GEMM fractions and times "
            "are uncertain by as much (rerun on a steadier machine)"), True


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
    ok rows (``attnbench.scaling.fit_loglog_ci``: the slope and its 95% interval, ``_lo``/``_hi``).
    """
    import pandas as pd

    cols = [*SCALING_KEYS, "time_slope", "time_slope_lo", "time_slope_hi", "mem_slope", "mem_slope_lo",
            "mem_slope_hi", "n_min", "n_max", "points"]
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
            rel = pd.to_numeric(g["time_ci_rel"], errors="coerce") if col == "time_ms_median" else None
            f = fit_loglog_ci(g["seq_len"], pd.to_numeric(g[col], errors="coerce"), rel)
            for key, v in ((name, f.slope), (f"{name}_lo", f.lo), (f"{name}_hi", f.hi)):
                slopes[key] = None if v != v else v
        out.append({**dict(zip(SCALING_KEYS, k)), **slopes, "n_min": int(g["seq_len"].min()),
                    "n_max": int(g["seq_len"].max()), "points": int(len(g))})
    return pd.DataFrame(out, columns=cols)


def run_benchmark(cfg: BenchConfig, console=None, command: str | None = None) -> Path:
    """Run ``cfg``; ``command``: how it was invoked (named in the lock file a refused writer reads)."""
    return Runner(cfg, console, command).run()
