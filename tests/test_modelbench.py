"""Whole-model efficiency (``run --level model``): inputs without data, the identity swap, probes and
their rows, failures as rows, the max-n search, report and compare.

Most tests run probes in this process (``isolate.run_probe`` replaced by :func:`in_process`) on a
tiny task (1 layer, width 16, n = 32..64); the tests marked slow start real probe processes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from attnbench import cli
from attnbench.harness import memory
from attnbench.modelbench import child, inputs, isolate, lra, maxn, probe, schema, swap
from attnbench.results import read_rows

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process probes: a loaded 2-core machine stalls 2 threads
ROOT = Path(__file__).resolve().parents[1]
TRUST = str(ROOT / "tests" / "fixtures" / "trust_kernels.py")
TINY_TASK = """\
name: tinymodel
version: 1
metric: {name: accuracy, higher_is_better: true}
inputs: {kind: classify, vocab_size: 16, num_classes: 3}
model: {d_model: 16, heads: 2, kv_heads: null, layers: 1, mlp: 32, dropout: 0.0, attn_dropout: 0.0,
        positions: learned, pool: mean}
train: {steps: 1, batch_size: 1, eval_every: 1, lr: 1.0e-3, weight_decay: 0.01, betas: [0.9, 0.98], clip_norm: 1.0}
variant_params: {sliding_window: {window: 16}}
sizes:
  small:
    data: {_target_: nowhere.build}
  paper:
    data: {_target_: nowhere.build}
"""
JOB = dict(probe="measure", kind="classify", model=dict(d_model=16, heads=2, layers=1, mlp=32, positions="learned",
                                                        pool="mean"),
           train=dict(lr=1e-3, weight_decay=0.01, betas=[0.9, 0.98], clip_norm=1.0), variant="full", params={},
           vocab_size=16, num_classes=3, seq_len=32, batch=1, device="cpu", seed=0,
           timing=dict(budget_s=0.05, min_repeats=3, max_repeats=50, warmup_s=0.0, settle_rel=0.02, ci_min=5),
           step_timeout_s=None)


def in_process(job, *, timeout_s, threads):
    """What the child process does, here: a probe without the process (plugins already loaded)."""
    res = {"status": "ok", "reasons": []}
    res.update(probe.run(job, memory.Watermark("cpu")))
    child.over_budget(job.get("mem_cap_bytes"), res)
    res["probe_wall_s"] = 0.0
    return res


@pytest.fixture
def tasks_dir(tmp_path):
    d = tmp_path / "tasks"
    d.mkdir()
    (d / "tinymodel.yaml").write_text(TINY_TASK)
    return d


def run_cli(*argv: str) -> int:
    return cli.main([str(a) for a in argv])


# --------------------------------------------------------------------------------------------
# inputs known without the data
# --------------------------------------------------------------------------------------------
def test_inputs_come_from_the_builders_constants_without_data():
    from attnbench.train import tasks

    text = inputs.task_inputs("text", tasks.load("text", "paper"))  # the IMDB files are not needed
    assert (text.kind, text.vocab_size, text.num_classes) == ("classify", 257, 2)
    lo = inputs.task_inputs("listops", tasks.load("listops", "small"))
    assert (lo.vocab_size, lo.num_classes) == (18, 10)
    mq = inputs.task_inputs("mqar", tasks.load("mqar", "paper"))
    assert (mq.kind, mq.vocab_size, mq.num_classes) == ("tokens", 8192, 8192)
    assert inputs.task_inputs("retrieval", tasks.load("retrieval", "small")).kind == "pair"


def test_unknown_builder_is_one_line_and_a_declared_block_wins():
    with pytest.raises(inputs.InputsError, match="'my.build' is not one .* declare them"):
        inputs.task_inputs("mine", {"data": {"_target_": "my.build"}})
    got = inputs.task_inputs("mine", {"data": {"_target_": "my.build"},
                                      "inputs": {"kind": "tokens", "vocab_size": 9, "num_classes": 9}})
    assert (got.kind, got.vocab_size) == ("tokens", 9)
    with pytest.raises(inputs.InputsError, match="allowed"):
        inputs.declared("mine", {"kind": "image", "vocab_size": 9, "num_classes": 9})


# --------------------------------------------------------------------------------------------
# the identity swap
# --------------------------------------------------------------------------------------------
def test_identity_really_replaces_attention_and_gradients_reach_the_projections(clean_registry):
    from attnbench.models.attention import Attention

    clean_registry.load_plugin(TRUST)
    model, step, x = probe.build({**JOB, "variant": "test@raise"})  # its kernel raises ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        step()
    with swap.identity(model):
        step()  # the kernel is never called
        attn = next(m for m in model.modules() if isinstance(m, Attention))
        assert attn.kv.weight.grad is not None and attn.kv.weight.grad.abs().sum() > 0  # v's gradient
        assert attn.q.weight.grad is not None  # q stays in the graph (0 x q)
    with pytest.raises(ValueError, match="boom"):
        step()  # restored


def test_identity_output_is_v_at_the_kernels_shape():
    q, k, v = torch.randn(2, 4, 8, 3), torch.randn(2, 2, 8, 3), torch.randn(2, 2, 8, 3)
    out = swap.identity_forward(q, k, v).out
    assert out.shape == q.shape and torch.equal(out, v.repeat_interleave(2, dim=1))
    cross = swap.identity_forward(q, torch.randn(2, 2, 5, 3), torch.randn(2, 2, 5, 3)).out  # N != M
    assert cross.shape == q.shape


def test_attention_share_is_the_kernels_known_time(clean_registry):
    """test@spin busy-waits 40 ms per call: nearly the whole step is attention, and the kernel alone
    accounts for the same share as the identity swap."""
    clean_registry.load_plugin(TRUST)
    res = probe.run({**JOB, "variant": "test@spin"}, memory.Watermark("cpu"))
    assert res["status"] == "ok", res["reasons"]
    assert 0.0 <= res["attn_share"] <= 1.0 and res["attn_share"] > 0.6
    assert res["kernel_ms"] >= 40.0 and res["attn_calls"] == 1 and res["attn_len"] == 32
    assert abs(res["attn_share"] - res["attn_share_kernel"]) < 0.25
    assert res["step_ms_median"] >= 40.0 and res["identity_step_ms"] < 0.5 * res["step_ms_median"]


# --------------------------------------------------------------------------------------------
# runs: rows complete and typed, failures as rows
# --------------------------------------------------------------------------------------------
def _run(tasks_dir, out, *extra, variants="full,sliding_window,test@raise,test@nosupport"):
    return run_cli("run", "--level", "model", "--task", "tinymodel", "--tasks-dir", tasks_dir, "--size", "small",
                   "--variants", variants, "--seq-lens", "32,64", "--out", out, "--threads", "1",
                   "--time-budget", "0.05", "--plugin", TRUST, *extra)


def test_rows_are_complete_typed_and_failures_are_rows(tasks_dir, tmp_path, monkeypatch, clean_registry):
    monkeypatch.setattr(isolate, "run_probe", in_process)
    out = tmp_path / "run"
    assert _run(tasks_dir, out) == 0
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 8 and all(list(r) == list(schema.NAMES) for r in rows)
    by = {(r["variant"], r["seq_len"]): r for r in rows}
    for v in ("full@sdpa", "sliding_window@blocked"):
        for n in (32, 64):
            r = by[(v, n)]
            assert r["status"] == "ok", r["reasons"]
            for f in ("step_ms_median", "steps_per_s", "infer_ms_median", "tokens_per_s_infer", "identity_step_ms",
                      "kernel_ms", "attn_share", "attn_share_kernel"):
                assert isinstance(r[f], float) and math.isfinite(r[f]), f
            assert isinstance(r["peak_mem_bytes"], int) and isinstance(r["n_params"], int)
            assert 0.0 <= r["attn_share"] <= 1.0 and r["row_kind"] == "model" and r["probe"] == "measure"
            assert r["task"] == "tinymodel" and r["batch"] == 1 and r["threads"] == 1
    assert by[("sliding_window@blocked", 32)]["params"]["window"] == 16  # the task's variant_params
    assert by[("test@raise", 32)]["status"] == "error" and "boom" in by[("test@raise", 32)]["reasons"][0]
    assert by[("test@nosupport", 64)]["status"] == "unsupported"
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "model" and info["settings"]["task"] == "tinymodel"
    assert (out / "results.parquet").is_file()


def test_oom_stops_larger_n_and_resume_keeps_rows(tasks_dir, tmp_path, monkeypatch, clean_registry):
    calls = []

    def fake(job, *, timeout_s, threads):
        calls.append((job["variant"], job["seq_len"]))
        if job["seq_len"] >= 64:
            return {"status": "oom", "reasons": ["fake OOM"], "probe_wall_s": 0.0}
        return in_process(job, timeout_s=timeout_s, threads=threads)

    monkeypatch.setattr(isolate, "run_probe", fake)
    out = tmp_path / "run"
    assert run_cli("run", "--level", "model", "--task", "tinymodel", "--tasks-dir", tasks_dir, "--variants", "full",
                   "--seq-lens", "32,64,128", "--out", out, "--threads", "1", "--time-budget", "0.05") == 0
    rows = {r["seq_len"]: r for r in read_rows(out / "results.jsonl")}
    assert [rows[n]["status"] for n in (32, 64, 128)] == ["ok", "oom", "skipped"]
    assert "oom at n=64" in rows[128]["reasons"][0] and calls == [("full@sdpa", 32), ("full@sdpa", 64)]
    assert run_cli("run", "--out", out, "--resume") == 0  # a model-level run resumes as one
    assert len(read_rows(out / "results.jsonl")) == 3 and len(calls) == 2  # nothing ran again


# --------------------------------------------------------------------------------------------
# the max-n search
# --------------------------------------------------------------------------------------------
def _memory_rule(per_token: float, slow_from: int | None = None, fail_at: set | None = None):
    """A fake probe whose peak is per_token x n (and which times out from ``slow_from``)."""
    probed = []

    def probe_fn(n):
        probed.append(n)
        if fail_at and n in fail_at:
            return {"status": "crash", "seq_len": n}
        if slow_from and n >= slow_from:
            return {"status": "timeout", "seq_len": n}
        return {"status": "ok", "peak_mem_bytes": per_token * n, "seq_len": n}

    return probe_fn, probed


def test_search_finds_the_known_limit_within_its_resolution():
    probe_fn, probed = _memory_rule(1e6)  # budget 5e9 -> the true limit is n = 5000
    s = maxn.search(probe_fn, 5e9, 1024, 32768)
    assert s.limit == "memory" and s.max_n <= 5000 < s.first_failed
    assert s.first_failed - s.max_n <= maxn.resolution(s.max_n) and s.max_n % 256 == 0
    assert probed[:4] == [1024, 2048, 4096, 8192] and maxn.cell(s) == f"{s.max_n} (memory)"


def test_search_limits_n_cap_below_start_time_and_failures():
    probe_fn, _ = _memory_rule(1e6)
    assert maxn.cell(maxn.search(probe_fn, 1e12, 1024, 20000)) == "≥ 20000 (n cap)"  # the cap itself probed
    assert maxn.cell(maxn.search(probe_fn, 1e8, 1024, 32768)) == "< 1024 (memory)"
    slow, _ = _memory_rule(1e6, slow_from=3000)
    s = maxn.search(slow, 1e12, 1024, 32768)
    assert s.limit == "time" and s.max_n < 3000 <= s.first_failed
    broken, _ = _memory_rule(1e6, fail_at={4096})
    assert maxn.search(broken, 1e12, 1024, 32768).limit == "crash"


def test_budgets_share_probes_and_the_replay_gives_the_same_answer():
    probe_fn, probed = _memory_rule(1e6)
    cache: dict[int, dict] = {}

    def cached(n):
        if n not in cache:
            cache[n] = probe_fn(n)
        return cache[n]

    found = {b: maxn.search(cached, b, 1024, 32768) for b in (2e9, 4e9, 8e9)}
    assert len(probed) == len(set(probed)) and found[2e9].max_n < found[4e9].max_n < found[8e9].max_n
    for b, s in found.items():
        assert maxn.replay(list(cache.values()), b, 1024, 32768).max_n == s.max_n
    with pytest.raises(maxn.NotProbed):
        maxn.replay([cache[1024]], 4e9, 1024, 32768)


@pytest.mark.slow
def test_a_real_probe_over_its_cap_is_an_oom_row(monkeypatch):
    """test@alloc touches a known number of bytes per call: 64 MiB under a 16 MB budget is a measured
    peak above it; 2 GiB is refused by RLIMIT_AS (the cap plus its address-space slack)."""
    job = {**JOB, "probe": "max_n", "variant": "test@alloc", "plugins": [TRUST], "mem_cap_bytes": 16 * 10**6,
           "step_timeout_s": 60}
    monkeypatch.setenv("ATTNBENCH_TEST_ALLOC_BYTES", str(64 * 2**20))
    res = isolate.run_probe(job, timeout_s=120, threads=1)
    assert res["status"] == "oom" and "exceeds the budget" in res["reasons"][0] and res["mem_cap"] == "rlimit_as"
    assert res["peak_mem_bytes"] >= 64 * 2**20
    monkeypatch.setenv("ATTNBENCH_TEST_ALLOC_BYTES", str(2 * 2**30))
    res = isolate.run_probe(job, timeout_s=120, threads=1)
    assert res["status"] == "oom" and "allocation failed under the memory cap" in res["reasons"][0], res


@pytest.mark.slow
def test_real_processes_max_n_and_a_crash_is_a_row(tasks_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli("run", "--level", "model", "--task", "tinymodel", "--tasks-dir", tasks_dir, "--variants",
                   "full,test@segfault", "--seq-lens", "256", "--out", out, "--threads", "1", "--time-budget", "0.05",
                   "--plugin", TRUST, "--max-n", "--mem-budgets", "0.02,0.05", "--n-cap", "512") == 0
    rows = read_rows(out / "results.jsonl")
    crash = [r for r in rows if r["variant"] == "test@segfault" and r["probe"] == "measure"]
    assert crash[0]["status"] == "crash" and "SIGSEGV" in crash[0]["reasons"][0]
    full = [r for r in rows if r["variant"] == "full@sdpa" and r["probe"] == "max_n"]
    assert full and all(r["mem_budget_bytes"] == 5 * 10**7 for r in full)
    alone = tmp_path / "search-only"
    assert run_cli("run", "--level", "model", "--task", "tinymodel", "--tasks-dir", tasks_dir, "--variants", "full",
                   "--seq-lens", "256", "--out", alone, "--threads", "1", "--max-n", "--search-only",
                   "--mem-budgets", "0.02,0.05", "--n-cap", "512") == 0
    probes = {r["probe"] for r in read_rows(alone / "results.jsonl")}
    assert probes == {"max_n"}  # no timed grid


# --------------------------------------------------------------------------------------------
# report and compare
# --------------------------------------------------------------------------------------------
def _row(variant, n, step_ms, mem, **kw):
    pattern, kernel = variant.split("@")
    samples = [step_ms * f for f in (0.98, 0.99, 1.0, 1.01, 1.02, 1.0, 0.995)]
    base = dict(probe="measure", task="text", task_version=1, size="paper", kind="classify", skeleton="encoder",
                variant=variant, pattern=pattern, kernel=kernel, family="dense" if pattern == "full" else "window",
                params={}, param_label="", seq_len=n, batch=1, heads=4, kv_heads=4, head_dim=64, causal=False,
                dtype="float32", device="cpu", status="ok", reasons=[], step_ms_median=step_ms, step_ms_iqr=0.02 * step_ms,
                samples_ms=samples, steps_per_s=1e3 / step_ms, infer_ms_median=step_ms / 3, infer_ms_iqr=0.0,
                tokens_per_s_infer=n / (step_ms / 3e3), peak_mem_bytes=mem, identity_step_ms=step_ms / 2,
                attn_share=0.5, kernel_ms=step_ms / 4, attn_share_kernel=0.45, attn_calls=4, noisy=False,
                device_name="Test CPU", config_hash="abc", mem_budget_bytes=None)
    base.update(kw)
    return schema.make_row(**base)


def _write(d: Path, rows, started="2026-01-01T00:00:00+00:00"):
    d.mkdir(parents=True)
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "run.json").write_text(json.dumps({"kind": "model", "started_at": started, "device_name": "Test CPU"}))
    return d


def _rows(scale=1.0):
    rows = []
    for n in (1024, 2048):
        rows.append(_row("full@sdpa", n, 100.0 * n / 1024, 10**8 * n // 1024))
        rows.append(_row("linear@elu", n, 50.0 * scale, 10**8, kernel_ms=5.0))
    rows.append(_row("block_local@blocked", 1024, 80.0, 9 * 10**7, status="oom", reasons=["fake"]))
    search = {"start": 1024, "n_cap": 8192, "grain": 256, "budgets": [2 * 10**8, 4 * 10**8], "step_timeout_s": 60}
    for n, peak in ((1024, 10**8), (2048, 3 * 10**8), (1536, 2 * 10**8 - 1), (1792, 2.5 * 10**8), (4096, 5 * 10**8),
                    (3072, 4 * 10**8 + 1), (2560, 3.5 * 10**8), (2816, 3.8 * 10**8)):
        rows.append(_row("full@sdpa", n, 1.0, int(peak), probe="max_n", mem_budget_bytes=4 * 10**8, search=search))
    return rows


def test_report_tables_figure_and_byte_identical_rebuild(tmp_path):
    from attnbench.report.build import build_report

    run = _write(tmp_path / "results" / "m", _rows())
    a, b = tmp_path / "rep", tmp_path / "again" / "rep"
    files = build_report([run], a)
    build_report([run], b)
    names = {f.name for f in files}
    for stem in ("steps", "infer", "memory", "share", "gain", "lra", "maxn"):
        assert f"model_{stem}_text-paper_cpu_b1.md" in names, stem
    assert "model_speedup_text-paper_cpu_b1.png" in names and "model_speedup_text-paper_cpu_b1.pdf" in names
    for f in (a / "tables").iterdir():
        assert f.read_bytes() == (b / "tables" / f.name).read_bytes(), f.name
    steps = (a / "tables" / "model_steps_text-paper_cpu_b1.md").read_text()
    assert "linear[" not in steps and "20.0 (2.00×)" in steps and "20.0 (4.00×)" in steps and "OOM" in steps
    lra_md = (a / "tables" / "model_lra_text-paper_cpu_b1.md").read_text()
    assert f"{9.1 / 8.1:.2f}×" in lra_md and "Tay et al." in lra_md  # LRA's Linear Transformer at 1K
    maxn_md = (a / "tables" / "model_maxn_text-paper_cpu_b1.md").read_text()
    assert "| full | 1536 (memory) | 2816 (memory) |" in maxn_md
    assert "model_steps_text-paper_cpu_b1.md" in (a / "README.md").read_text()


def test_compare_two_model_runs_flags_the_slower_step(tmp_path):
    from attnbench.compare import compare_runs, load_run

    base = _write(tmp_path / "base", _rows())
    new = _write(tmp_path / "new", _rows(scale=2.0))
    df = compare_runs(load_run(base)[0], load_run(new)[0])
    slow = df[(df["variant"] == "linear@elu") & (df["mode"] == "text/paper train step")]
    assert set(slow["verdict"]) == {"regressed"} and len(slow) == 2
    assert set(df[df["variant"] == "full@sdpa"]["verdict"]) == {"same"}
    assert run_cli("compare", base, new) == 1


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, must", [
    (["run", "--level", "model"], ["--level model needs --task", "text"]),
    (["run", "--level", "model", "--task", "nope"], ["--task 'nope'", "tasks:"]),
    (["run", "--level", "model", "--task", "text", "--heads", "4"], ["--heads", "not used at --level model"]),
    (["run", "--task", "text"], ["--task", "only with --level model"]),
    (["run", "--level", "gpu"], ["--level 'gpu'", "kernel, model"]),
    (["run", "--level", "model", "--task", "text", "--mem-budgets", "a,b"], ["--mem-budgets 'a'", "number"]),
    (["run", "--level", "model", "--task", "text", "--dtype", "bfloat16"], ["--dtype 'bfloat16'", "float32"]),
    (["run", "--level", "model", "--task", "text", "--search-only"], ["--search-only", "only with --max-n"]),
    (["run", "--level", "model", "--task", "text", "--max-n", "--mem-budgets", "100000"],
     ["--mem-budgets 100000", "above the memory available"]),
])
def test_bad_model_level_input_is_one_line_exit_2(argv, must, tmp_path, capsys):
    assert run_cli(*argv, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("attnbench: error:") and err.count("\n") == 1, err
    for m in must:
        assert m in err, (m, err)
    assert not (tmp_path / "out").exists()


def test_lra_table_maps_every_model_to_a_registered_pattern():
    from attnbench.catalog import all_specs

    patterns = {s.pattern for s in all_specs()}
    assert set(lra.by_pattern()) <= patterns and lra.by_pattern()["block_local"] == "Local Attention"
    assert lra.ratios("performer", 4096) == (8.0 / 1.4, 1.06 / 9.48) and lra.ratios("swin", 1024) is None

