"""Trust tests of the measurement harness: do the numbers in results.jsonl mean what they say?

Kernels of known behaviour (tests/fixtures/trust_kernels.py: a spin of known duration, an
allocation of known size, a segfault, a hang, an exception, an OOM, a wrong output) go through
``python -m attnbench run`` with real worker processes, and the rows must report exactly those
durations, bytes and statuses. Runs are shared per module (each ``run`` probes a GEMM peak and
starts workers, a few seconds each), so the whole file costs about a minute on two cores.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from attnbench.harness.execute import FIRST_CALL_STEADY
from attnbench.results import read_rows
from attnbench.schema import case_key
from attnbench.schema import SCHEMA_VERSION
from attnbench.vocab import STATUSES

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PLUGIN = FIXTURES / "trust_kernels.py"
SPIN_MS = 40.0  # the fixture's default; set explicitly in the environment below
ALLOC_BYTES = 256 * 2**20
MiB = 2**20

# Small problems, one thread per worker: the kernels' own cost is what is measured.
SMALL = ["--batch", "1", "--heads", "2", "--head-dim", "16", "--threads", "1"]
B, H, D = 1, 2, 16


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["ATTNBENCH_TEST_SPIN_MS"] = str(SPIN_MS)
    env["ATTNBENCH_TEST_ALLOC_BYTES"] = str(ALLOC_BYTES)
    env.update(extra)
    return env


def attnbench(*args: str, cwd: Path, timeout: float = 240, env: dict | None = None):
    """Run the CLI in a fresh interpreter; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "attnbench", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def run_ok(out: Path, *args: str, timeout: float = 240, env: dict | None = None) -> list[dict]:
    p = attnbench("run", "--out", str(out), "--plugin", str(PLUGIN), *SMALL, *args,
                  cwd=out.parent, timeout=timeout, env=env)
    assert p.returncode == 0, f"run failed (rc={p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return read_rows(out / "results.jsonl")


def expected_key(variant: str, n: int, mode: str = "fwd") -> tuple:
    return case_key({"variant": variant, "mode": mode, "seq_len": n, "batch": B, "heads": H,
                     "kv_heads": H, "head_dim": D, "dtype": "float32", "device": "cpu",
                     "causal": False})


def by_key(rows: list[dict]) -> dict[tuple, dict]:
    keys = [case_key(r) for r in rows]
    dups = {k for k in keys if keys.count(k) > 1}
    assert not dups, f"duplicate rows for {dups}"
    return dict(zip(keys, rows))


# ---------------------------------------------------------------------------------------------
# Shared runs
# ---------------------------------------------------------------------------------------------
SWEEP_VARIANTS = ["test@segfault", "test@hang", "test@raise", "test@oom", "test@wrong",
                  "test@nosupport", "full@sdpa"]
SWEEP_NS = [32, 64]
SWEEP_BUDGET = "0.05"  # per case; the run's GEMM probe is cut to 10x that (bench.probe_budget)
HANG_TIMEOUT_S = 4.0  # the hang case costs this; the other cases here take well under a second


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One run of every failure kind beside a good kernel, over two sequence lengths."""
    out = tmp_path_factory.mktemp("sweep") / "run"
    t0 = time.monotonic()
    rows = run_ok(out, "--variants", ",".join(SWEEP_VARIANTS), "--seq-lens", "32,64",
                  "--time-budget", SWEEP_BUDGET, "--timeout", str(HANG_TIMEOUT_S), timeout=300)
    return {"out": out, "rows": rows, "wall_s": time.monotonic() - t0}


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """The spin and alloc kernels, timed with a budget long enough for the median to settle."""
    out = tmp_path_factory.mktemp("known") / "run"
    rows = run_ok(out, "--variants", "test@spin,test@alloc", "--seq-lens", "32,64",
                  "--time-budget", "1.0", "--timeout", "120")
    return {"out": out, "rows": by_key(rows)}


# ---------------------------------------------------------------------------------------------
# 1-2. Known duration and known bytes, end to end
# ---------------------------------------------------------------------------------------------
def test_spin_kernel_median_within_3_percent(known):
    row = known["rows"][expected_key("test@spin", 32)]
    assert row["status"] == "ok", row["reasons"]
    med = row["time_ms_median"]
    assert med == pytest.approx(SPIN_MS, rel=0.03), f"median {med:.3f} ms for a {SPIN_MS} ms spin"
    # the summary fields are the summary of the stored samples
    s = np.asarray(row["samples_ms"])
    assert len(s) == row["repeats"] >= 3
    assert row["time_ms_median"] == pytest.approx(float(np.median(s)), rel=1e-6)
    assert row["time_ms_min"] == pytest.approx(float(s.min()), rel=1e-6)
    q1, q3 = np.percentile(s, [25, 75])
    assert row["time_ms_iqr"] == pytest.approx(float(q3 - q1), rel=1e-6, abs=1e-6)
    assert row["time_ms_min"] >= SPIN_MS * 0.999  # a spin cannot finish early
    assert row["first_call_ms"] >= SPIN_MS * 0.999
    assert row["max_abs_err"] <= row["allowed_err"]  # it was checked, and passed


@pytest.mark.parametrize("n", [32, 64])
def test_alloc_kernel_peak_within_5_percent(known, n):
    """n=32 is the worker's first case (a memory pass of its own); at n=64 the worker is warm and
    the first call gives the peak when it was steady (within FIRST_CALL_STEADY of the median),
    a memory pass of its own otherwise: the same bytes either way."""
    row = known["rows"][expected_key("test@alloc", n)]
    assert row["status"] == "ok", row["reasons"]
    steady = row["first_call_ms"] <= FIRST_CALL_STEADY * row["time_ms_median"]
    expected = "first_call" if n == 64 and steady else "memory_pass"
    assert row["mem_source"] == expected, (row["mem_source"], row["first_call_ms"], row["time_ms_median"])
    peak = row["peak_mem_bytes"]
    assert abs(peak - ALLOC_BYTES) <= 0.05 * ALLOC_BYTES + 4 * MiB, \
        f"peak {peak / MiB:.1f} MiB for a {ALLOC_BYTES / MiB:.0f} MiB allocation"


@pytest.mark.parametrize("n", [32, 64])
def test_spin_kernel_memory_is_small(known, n):
    """The spin kernel allocates next to nothing: no earlier garbage leaks into its peak, and
    the worker's one-off initialization does not either (the first case's first call is never
    the memory source)."""
    row = known["rows"][expected_key("test@spin", n)]
    assert 0 <= row["peak_mem_bytes"] <= 4 * MiB


# ---------------------------------------------------------------------------------------------
# 3. Every failure kind in one sweep: one row per planned case, the right status, a reason
# ---------------------------------------------------------------------------------------------
EXPECTED_STATUS = {  # variant -> statuses at n = 32, 64
    "test@segfault": ("crash", "skipped"),
    "test@hang": ("timeout", "skipped"),
    "test@raise": ("error", "error"),
    "test@oom": ("oom", "skipped"),
    "test@wrong": ("incorrect", "incorrect"),
    "test@nosupport": ("unsupported", "unsupported"),
    "full@sdpa": ("ok", "ok"),
}


def test_sweep_one_row_per_planned_case(sweep):
    rows = sweep["rows"]
    got = by_key(rows)  # asserts no duplicates
    planned = {expected_key(v, n) for v in SWEEP_VARIANTS for n in SWEEP_NS}
    assert set(got) == planned
    assert len(rows) == len(planned)
    assert all(r["status"] in STATUSES for r in rows)
    # the file holds only complete lines, one per case
    lines = (sweep["out"] / "results.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == len(planned)


def test_sweep_statuses(sweep):
    got = by_key(sweep["rows"])
    actual = {v: tuple(got[expected_key(v, n)]["status"] for n in SWEEP_NS) for v in SWEEP_VARIANTS}
    assert actual == EXPECTED_STATUS


def test_sweep_reasons(sweep):
    got = by_key(sweep["rows"])
    for r in got.values():
        if r["status"] == "ok":  # no reasons, unless other load on the machine flagged the case noisy
            assert [x for x in r["reasons"] if not x.startswith("noisy: ")] == []
            assert bool(r["reasons"]) == bool(r["noisy"])
        else:
            assert r["reasons"] and all(isinstance(x, str) and x.strip() for x in r["reasons"]), r

    def reason(v, n):
        return " ".join(got[expected_key(v, n)]["reasons"])

    assert "SIGSEGV" in reason("test@segfault", 32)
    assert "wall-clock" in reason("test@hang", 32) and f"{HANG_TIMEOUT_S:g} s" in reason("test@hang", 32)
    assert "ValueError" in reason("test@raise", 32) and "boom" in reason("test@raise", 32)
    assert "can't allocate memory" in reason("test@oom", 32)
    assert "never runs" in reason("test@nosupport", 32)
    # larger n after a process-hurting failure is skipped, and the reason says why
    for v, status in (("test@segfault", "crash"), ("test@hang", "timeout"), ("test@oom", "oom")):
        assert reason(v, 64) == f"{status} at n=32; larger n not attempted"


def test_sweep_failed_rows_carry_no_measurements(sweep):
    for r in sweep["rows"]:
        if r["status"] != "ok":
            for f in ("time_ms_median", "time_ms_iqr", "time_ms_min", "samples_ms", "repeats"):
                assert r.get(f) is None, (r["variant"], r["status"], f)
            assert r.get("gflops_per_s") is None and r.get("peak_fraction") is None


def test_every_row_has_every_field_and_the_run_ends_with_parquet(sweep):
    """One row schema for every status (an unsupported row has time_ms_median: null, not no key)."""
    import pandas as pd

    from attnbench.schema import NAMES

    for r in sweep["rows"]:
        assert list(r) == list(NAMES), r["variant"]
    df = pd.read_parquet(sweep["out"] / "results.parquet")
    assert len(df) == len(sweep["rows"]) and set(df["status"]) == {r["status"] for r in sweep["rows"]}


def test_timeout_is_enforced_promptly(sweep):
    """The hang case costs about its limit, not an hour; the whole sweep stays bounded."""
    assert sweep["wall_s"] < 120


# ---------------------------------------------------------------------------------------------
# 4. kill -9 mid-sweep, a torn last line, then --resume
# ---------------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_then_resume(tmp_path):
    out = tmp_path / "run"
    ns = [32, 64, 128, 256]
    modes = ["fwd", "decode"]
    args = ["run", "--out", str(out), "--plugin", str(PLUGIN), *SMALL, "--variants", "test@spin",
            "--seq-lens", ",".join(map(str, ns)), "--mode", ",".join(modes), "--time-budget", "0.25",
            "--timeout", "120"]
    jsonl = out / "results.jsonl"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "attnbench", *args], cwd=tmp_path, env=_env(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            workers.update(_children(proc.pid))
            if jsonl.exists() and jsonl.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed mid-sweep; make it longer"
        workers.update(_children(proc.pid))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Workers run in their own process group, so killpg of the run does not reach them; with
    # their parent gone they must exit by themselves (stdin EOF / broken result pipe).
    t_end = time.monotonic() + 20
    while time.monotonic() < t_end and any(_alive(w) for w in workers):
        time.sleep(0.1)
    leaked = [w for w in workers if _alive(w)]
    for w in leaked:  # clean up what we started, then fail
        os.killpg(w, signal.SIGKILL)
    assert not leaked, f"workers outlived the killed run: {leaked}"

    data = jsonl.read_bytes()
    before = data[: data.rfind(b"\n") + 1]  # complete lines written before the kill
    n_before = before.count(b"\n")
    assert 2 <= n_before < len(ns) * len(modes)
    run_json_before = json.loads((out / "run.json").read_text())
    with open(jsonl, "ab") as f:  # a torn write: the kill landed mid-line
        f.write(b'{"schema_version": 1, "variant": "test@spin", "mode": "fwd", "seq_len": 51')

    p = attnbench(*args, "--resume", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]

    final = jsonl.read_bytes()
    assert final.startswith(before), "rows finished before the kill were rewritten"
    assert final.endswith(b"\n")
    rows = read_rows(jsonl)  # raises if a garbled line survived in the middle
    assert len(rows) == final.count(b"\n")
    got = by_key(rows)  # no duplicates
    planned = {expected_key("test@spin", n, m) for m in modes for n in ns}
    assert set(got) == planned and len(rows) == len(planned)
    assert all(r["status"] == "ok" for r in rows), [r["reasons"] for r in rows]
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["started_at"] == run_json_before["started_at"]
    assert len(run_json.get("resumed_at", [])) == 1
    # decode rows: one query against an n-long cache, and FLOPs of exactly that
    for n in ns:
        r = got[expected_key("test@spin", n, "decode")]
        assert (r["q_len"], r["kv_len"]) == (1, n)
        assert r["flops"] == 4 * B * H * 1 * n * D


# ---------------------------------------------------------------------------------------------
# 5. A wrong kernel: incorrect in run (above), and check exits 1 naming it
# ---------------------------------------------------------------------------------------------
def test_wrong_kernel_incorrect_in_run(sweep):
    got = by_key(sweep["rows"])
    for n in SWEEP_NS:
        r = got[expected_key("test@wrong", n)]
        assert r["status"] == "incorrect"
        assert r["max_abs_err"] == pytest.approx(0.1, rel=1e-3) and r["max_abs_err"] > r["allowed_err"]
        assert "exceeds the allowed" in r["reasons"][0]
        assert r.get("time_ms_median") is None and r.get("peak_mem_bytes") is None


def test_check_exits_1_and_names_wrong_kernel(tmp_path):
    p = attnbench("check", "test@wrong", "full@sdpa", "--plugin", str(PLUGIN), "--quick", "--no-grad",
                  cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    line = next((ln for ln in p.stdout.splitlines() if "test@wrong" in ln), None)
    assert line is not None, p.stdout
    assert "max abs error 0.1" in line
    sdpa = next(ln for ln in p.stdout.splitlines() if "full@sdpa" in ln)
    assert sdpa.split("│")[3].strip() == "0"  # the good kernel: no incorrect case
    assert "FAILED" in p.stdout


# ---------------------------------------------------------------------------------------------
# 6. FLOPs and achieved rate
# ---------------------------------------------------------------------------------------------
def test_flops_and_rate_of_full_sdpa(sweep):
    info = json.loads((sweep["out"] / "run.json").read_text())
    peak = info["gemm_peak_gflops"]
    assert peak > 0
    got = by_key(sweep["rows"])
    for n in SWEEP_NS:
        r = got[expected_key("full@sdpa", n)]
        assert r["flops"] == 4 * B * H * n * n * D
        g = r["flops"] / (r["time_ms_median"] / 1e3) / 1e9
        assert r["gflops_per_s"] == pytest.approx(g, rel=1e-9)
        assert r["peak_fraction"] == pytest.approx(g / peak, rel=1e-9)
        assert r["io_bytes"] == 4 * B * H * n * D * 4  # q, k, v, out in float32


# ---------------------------------------------------------------------------------------------
# 7. The primitives, in process
# ---------------------------------------------------------------------------------------------
def test_cpu_peak_bytes_of_known_allocation():
    import torch

    from attnbench.harness.memory import cpu_peak_bytes

    n_bytes = 128 * MiB

    def alloc():
        t = torch.ones(n_bytes // 4, dtype=torch.float32)
        assert float(t.sum()) == n_bytes // 4

    peak = cpu_peak_bytes(alloc)
    assert abs(peak - n_bytes) <= 0.05 * n_bytes + 4 * MiB, peak / MiB
    # freed garbage of the call before must not count, nor hide the next one's growth
    assert cpu_peak_bytes(lambda: None) <= 4 * MiB
    peak2 = cpu_peak_bytes(alloc)
    assert abs(peak2 - n_bytes) <= 0.05 * n_bytes + 4 * MiB, peak2 / MiB


def test_measure_of_known_duration():
    from attnbench.harness.timing import measure

    def spin10():
        end = time.perf_counter() + 0.010
        while time.perf_counter() < end:
            pass

    # threads=1: calls during which this thread waited for a CPU (other load) are set aside;
    # a machine too busy to give clean calls at all is flagged, never measured as 10 ms
    stats = measure(spin10, budget_s=0.5, warmup_s=0.02, threads=1)
    assert stats.noisy or stats.median_ms == pytest.approx(10.0, rel=0.03)
    assert stats.min_ms >= 10.0
    assert stats.repeats == len(stats.samples_ms) >= 3
    assert stats.iqr_ms >= 0


def test_measure_respects_min_and_max_repeats():
    from attnbench.harness.timing import measure

    calls = []
    stats = measure(lambda: calls.append(1), budget_s=10.0, min_repeats=3, max_repeats=7,
                    warmup_s=0.0, ci_min=1000)
    assert stats.repeats == 7
    stats = measure(lambda: time.sleep(0.02), budget_s=0.001, min_repeats=4, warmup_s=0.0)
    assert stats.repeats == 4


# ---------------------------------------------------------------------------------------------
# 8. run.json and scaling.csv
# ---------------------------------------------------------------------------------------------
def test_run_json_records_the_environment(sweep):
    info = json.loads((sweep["out"] / "run.json").read_text())
    for key in ("schema_version", "versions", "cpu_model", "cpu", "git_sha", "git_dirty", "config",
                "started_at", "gemm_peak_gflops", "torch_version", "device_name"):
        assert key in info, key
    assert info["schema_version"] == SCHEMA_VERSION
    assert info["versions"]["torch"] and info["versions"]["python"]
    assert isinstance(info["cpu_model"], str) and info["cpu_model"]
    assert info["git_sha"] is None or (len(info["git_sha"]) == 40 and isinstance(info["git_dirty"], bool))
    assert info["torch_threads"] == 1  # --threads 1 reached the workers
    resolved = info["config"]["resolved"]
    assert resolved["threads"] == 1
    assert resolved["variants"] == SWEEP_VARIANTS
    assert resolved["seq_lens"] == SWEEP_NS
    assert resolved["timing"]["budget_s"] == float(SWEEP_BUDGET)
    assert all(r["schema_version"] == info["schema_version"] for r in sweep["rows"])


def test_scaling_csv(sweep):
    import pandas as pd

    df = pd.read_csv(sweep["out"] / "scaling.csv")
    assert {"variant", "mode", "time_slope", "mem_slope", "n_min", "n_max", "points"} <= set(df.columns)
    # one line per variant with >= 1 ok row: only full@sdpa here
    assert list(df["variant"]) == ["full@sdpa"]
    line = df.iloc[0]
    assert (line["n_min"], line["n_max"], line["points"]) == (32, 64, 2)
    assert math.isfinite(line["time_slope"])


# ---------------------------------------------------------------------------------------------
# Regression tests for defects found while writing the trust tests
# ---------------------------------------------------------------------------------------------
def test_fresh_run_into_dir_with_torn_tail_loses_no_row(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    torn = b'{"schema_version": 1, "variant": "full@sdpa", "mo'
    (out / "results.jsonl").write_bytes(torn)
    p = attnbench("run", "--out", str(out), *SMALL, "--variants", "full@sdpa", "--seq-lens", "32",
                  "--time-budget", "0.2", cwd=tmp_path)
    data = (out / "results.jsonl").read_bytes()
    if p.returncode == 2:  # refusing to write into a dir that holds another run is fine too
        assert p.stderr.startswith("attnbench: error:") and data == torn
        return
    assert p.returncode == 0, p.stderr[-2000:]
    rows = read_rows(out / "results.jsonl")
    assert [case_key(r) for r in rows] == [expected_key("full@sdpa", 32)]
    assert rows[0]["status"] == "ok"


def test_fresh_run_into_finished_dir_makes_no_duplicates(tmp_path, known):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(known["out"], out)
    before = (out / "results.jsonl").read_bytes()
    p = attnbench("run", "--out", str(out), "--plugin", str(PLUGIN), *SMALL, "--variants", "test@spin",
                  "--seq-lens", "32", "--time-budget", "0.2", cwd=tmp_path)
    if p.returncode == 2:  # refused: nothing may have been touched
        assert p.stderr.startswith("attnbench: error:") and p.stderr.count("\n") == 1
        assert (out / "results.jsonl").read_bytes() == before
        return
    assert p.returncode == 0, p.stderr[-2000:]
    by_key(read_rows(out / "results.jsonl"))  # asserts no duplicate keys


def test_resume_continues_the_stored_grid(tmp_path, known):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(known["out"], out)
    before = (out / "results.jsonl").read_bytes()
    # Only what selects variants is repeated (a plugin's names are unknown without it); the
    # shape, n and timing must come from the run being continued. Every case is done already.
    p = attnbench("run", "--out", str(out), "--resume", "--plugin", str(PLUGIN),
                  "--variants", "test@spin", "--threads", "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    after = (out / "results.jsonl").read_bytes()
    added = [(r["variant"], r["seq_len"], r["heads"], r["head_dim"]) for r in read_rows(out / "results.jsonl")][
        before.count(b"\n"):]
    assert after == before, f"resume of a finished run added rows {added}"


def test_kill_9_leaves_no_hung_worker(tmp_path):
    out = tmp_path / "run"
    mark = tmp_path / "hang.pid"
    args = ["run", "--out", str(out), "--plugin", str(PLUGIN), *SMALL, "--variants", "test@hang",
            "--seq-lens", "32", "--timeout", "120"]
    with open(tmp_path / "run.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "attnbench", *args], cwd=tmp_path,
                                env=_env(ATTNBENCH_TEST_HANG_MARK=str(mark)), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        deadline = time.monotonic() + 120
        while not mark.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert mark.exists(), (tmp_path / "run.log").read_text()[-2000:]
        worker = int(mark.read_text())
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end and _alive(worker):
            time.sleep(0.1)
        assert not _alive(worker), "the hung worker outlived its killed parent"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if worker is not None and _alive(worker):
            os.killpg(worker, signal.SIGKILL)  # the worker leads its own process group


def test_timeout_does_not_count_worker_startup(tmp_path):
    out = tmp_path / "run"
    rows = run_ok(out, "--variants", "full@sdpa", "--seq-lens", "32", "--timeout", "0.5",
                  "--time-budget", "0.05", "timing.warmup_s=0.01")
    assert [r["status"] for r in rows] == ["ok"], [r["reasons"] for r in rows]


# ------------------------------------------------- approximate variants: own definition, rel_err, decode state
def _scaled_softmax(q, k, v, *, causal=False, rows=None, **_):
    """A deliberately inexact 'approximation': softmax attention with q scaled by 0.9."""
    from attnbench import reference as R

    out = R.attention(0.9 * q, k, v, causal=causal).out
    return out if rows is None else out[:, :, rows]


def _register_fake_approx(registry, *, broken=False):
    import torch

    from attnbench.registry import AttnOutput, VariantSpec

    calls = {}

    def forward(q, k, v, *, causal=False, state=None, need_weights=False):
        if state is not None:  # decode: the state holds the earlier keys and values
            calls["decode_kv_len"], calls["state_len"] = k.shape[2], state[0].shape[2]
            k, v = torch.cat([state[0], k], 2), torch.cat([state[1], v], 2)
        out = _scaled_softmax(q, k, v, causal=causal)
        return AttnOutput(out=out + (0.1 if broken else 0.0))

    registry.add(VariantSpec(
        name="fakeapprox@k", forward=forward, family="test", exact=False, time="-", memory="-",
        reference_fn=_scaled_softmax, decode_state=lambda k, v: (k.clone(), v.clone())))
    return calls


def _case(variant, mode="fwd", n=64):
    q_len = 1 if mode == "decode" else n
    return ({"variant": variant, "shape": dict(batch=1, heads=2, kv_heads=2, seq_len=q_len, kv_len=n,
                                               head_dim=16, mode=mode)},
            {"timing": {"budget_s": 0.01, "min_repeats": 3}})


def test_approximate_row_has_rel_err_and_own_check(clean_registry):
    from attnbench.approx import rel_errors
    from attnbench.harness.execute import run_json
    from attnbench import Shape

    _register_fake_approx(clean_registry)
    row = run_json(*_case("fakeapprox@k"))
    assert row["status"] == "ok", row
    # checked against its own definition (exactly equal), yet its error vs softmax is not small
    assert row["max_abs_err"] <= row["allowed_err"] and row["max_abs_err"] < 1e-5
    assert 0.01 < row["rel_err"] < 1 and 0.01 < row["rel_err_sharp"] < 1
    direct = rel_errors(clean_registry.get("fakeapprox@k"), Shape(1, 2, 2, 1024, 1024, 16))
    assert row["rel_err"] == pytest.approx(direct["rel_err"])


def test_approximate_kernel_off_its_own_definition_is_incorrect(clean_registry):
    from attnbench.harness.execute import run_json

    _register_fake_approx(clean_registry, broken=True)
    row = run_json(*_case("fakeapprox@k"))
    assert row["status"] == "incorrect" and "own dense definition" in row["reasons"][0]


def test_decode_with_running_state_reads_one_token(clean_registry):
    from attnbench.harness.execute import run_json

    calls = _register_fake_approx(clean_registry)
    row = run_json(*_case("fakeapprox@k", mode="decode", n=100))
    assert row["status"] == "ok", row
    assert calls == {"decode_kv_len": 1, "state_len": 99}


def test_compact_samples_keeps_the_distribution():
    from attnbench.harness.timing import compact_samples

    few = [3.0, 1.0, 2.0]
    assert compact_samples(few) == few  # all kept, time order
    rng = np.random.default_rng(0)
    many = rng.lognormal(0, 0.1, 2000).tolist()
    kept = compact_samples(many, keep=256)
    assert len(kept) == 256 and kept[0] == min(many) and kept[-1] == max(many)
    for q in (25, 50, 75):
        assert abs(np.percentile(kept, q) - np.percentile(many, q)) < 0.01


def test_cpu_identity_reads_cpuinfo_and_sysfs(tmp_path):
    """Two EPYCs of one model name: family, model, widest ISA and caches tell them apart."""
    from attnbench.harness.env import cpu_identity, cpu_summary

    flags = "fpu sse4_2 avx fma avx2 sha_ni"
    one = (f"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
           f"stepping\t: 1\nflags\t\t: {flags}\n\n")
    (tmp_path / "cpuinfo").write_text(one + one.replace("processor\t: 0", "processor\t: 1").replace("avx2", "avx512f"))
    for i, (level, kind, size) in enumerate([("1", "Data", "32K"), ("1", "Instruction", "32K"),
                                             ("2", "Unified", "512K"), ("3", "Unified", "32768K")]):
        d = tmp_path / "cpu0" / "cache" / f"index{i}"
        d.mkdir(parents=True)
        for name, text in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(text + "\n")
    ident = cpu_identity(tmp_path / "cpuinfo", tmp_path / "cpu0")
    assert ident == {"vendor": "AuthenticAMD", "family": "25", "model": "1", "stepping": "1", "isa": "AVX2",
                     "l1d": 32 << 10, "l2": 512 << 10, "l3": 32 << 20}  # the first processor's flags
    assert cpu_summary(ident) == "family 25 model 1, AVX2, L2 512 KiB, L3 32 MiB"
    (tmp_path / "cpuinfo").write_text(one.replace("avx2", "avx512f avx2"))
    assert cpu_identity(tmp_path / "cpuinfo", tmp_path / "none")["isa"] == "AVX-512"
    assert cpu_identity(tmp_path / "missing") == {} and cpu_summary({}) is None
