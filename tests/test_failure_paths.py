"""Every way a command can fail is one line on stderr naming the value or path and what to do:
exit 2 for bad input, 1 for the environment, never a traceback (``--debug`` adds it). One
writer per run directory; ``--resume`` resumes the run's own grid (``--extend`` records a new
one); Ctrl-C stops a run at once, kills its worker and prints the command that resumes it.

Runs are tiny (full@naive at n=32, one thread, 0.01 s of timing). One fresh run is made per
session (conftest.tiny_run) and copied per test; a resumed run skips the device probe, so each
costs a few seconds. Refusals that stop before any work run in process (``cli_in_process``).
"""
from __future__ import annotations

import fcntl
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnbench.results import read_rows

TRUST = Path(__file__).resolve().parent / "fixtures" / "trust_kernels.py"
SMALL = ["--threads", "1", "--heads", "2", "--head-dim", "16", "timing.budget_s=0.01"]
NOWHERE = "/proc/attnbench-test"  # mkdir there fails for every user (Linux)


def attnbench(*args: str, cwd: Path, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnbench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)


def error_line(p: subprocess.CompletedProcess) -> str:
    """The one error line: the last line of stderr, the only one from attnbench, no traceback.
    (A run that fails mid-sweep has its progress line above it.)"""
    assert "Traceback" not in p.stderr, p.stderr
    ours = [ln for ln in p.stderr.splitlines() if ln.startswith("attnbench:")]
    assert len(ours) == 1, p.stderr
    assert p.stderr.endswith(ours[0] + "\n"), p.stderr
    return ours[0]


@pytest.fixture(scope="module")
def base_run(tiny_run) -> Path:
    """A finished run: full@naive at n=32, and xl@segment (not causal: cannot run), made with SMALL
    (conftest.tiny_run, shared with test_roofline). Read only: run_copy to change it."""
    return tiny_run


@pytest.fixture
def run_copy(base_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    return out


# ---------------------------------------------------------------------------------------------
# One line, exit 2 (bad input) or 1 (environment), for each failure path
# ---------------------------------------------------------------------------------------------
BAD_SYNTAX = "import os\nx = (\n"
BAD_REGISTRATION = ('from attnbench import register\n\n\n@register("noat", family="dense", exact=True, '
                    'time="", memory="")\ndef f(q, k, v):\n    pass\n')

# id -> (argv, exit status, substrings of the line); FILE, OUT, RUN, SYNTAX, REGISTRATION are paths
FAILURES = {
    "out-is-a-file": (["run", "--out", "FILE", "--seq-lens", "32"], 2, ["--out", "FILE", "is a file"]),
    "out-under-a-file": (["run", "--out", "FILE/run", "--seq-lens", "32"], 2, ["--out", "FILE/run", "is a file"]),
    "out-cannot-be-created": (["run", "--out", f"{NOWHERE}/run", "--variants", "full@naive", "--seq-lens", "32"],
                              1, [f"--out {NOWHERE}/run", "cannot create the directory", "writable"]),
    "plugin-syntax-error": (["run", "--plugin", "SYNTAX", "--out", "OUT"], 2,
                            ["--plugin", "syntax.py", "line 2", "syntax error", "fix the file"]),
    "plugin-bad-registration": (["list", "--plugin", "REGISTRATION"], 2,
                                ["--plugin", "registration.py", "line 4", "'noat'", "pattern@kernel"]),
    "scaling-not-an-integer": (["run", "--out", "OUT", "scaling.min_seq_len=abc"], 2,
                               ["scaling.min_seq_len=abc", "must be an integer"]),
    "scaling-out-of-range": (["run", "--out", "OUT", "scaling.min_seq_len=0"], 2, ["scaling.min_seq_len=0", ">= 1"]),
    "timing-repeats-out-of-range": (["run", "--out", "OUT", "timing.min_repeats=0", "timing.max_repeats=-5"], 2,
                                    ["timing.min_repeats=0", "timing.max_repeats=-5", ">= 1"]),
    "timing-budget-zero": (["run", "--out", "OUT", "--time-budget", "0"], 2, ["--time-budget 0.0", "positive"]),
    "memory-maybe": (["run", "--out", "OUT", "memory=maybe"], 2, ["memory=maybe", "true or false"]),
    "baseline-unknown": (["run", "--out", "OUT", "baseline=nope"], 2, ["baseline=nope", "unknown variant 'nope'"]),
    "unknown-key": (["run", "--out", "OUT", "timing.budget=2"], 2, ["timing.budget=2", "no such key", "timing.budget_s"]),
    "resume-nothing-there": (["run", "--out", "OUT", "--resume"], 2, ["--out", "no run to resume"]),
    "report-out-unwritable": (["report", "RUN", "--out", f"{NOWHERE}/report", "--baseline", "full@naive", "--no-figures"],
                              1, [f"--out {NOWHERE}/report", "cannot write", "writable directory"]),
    "compare-csv-unwritable": (["compare", "RUN", "RUN", "--csv", f"{NOWHERE}/cmp.csv"], 1,
                               [f"--csv {NOWHERE}/cmp.csv", "cannot write", "writable file"]),
}


# Every case runs in process (``cli_in_process``: the same ``main()``; a fresh interpreter costs
# ~2 s of imports); these also as a real ``python -m attnbench``: exit 1 from the environment, and a
# plugin that fails to import in a fresh registry.
IN_A_FRESH_PROCESS = ["out-cannot-be-created", "plugin-syntax-error"]


@pytest.mark.parametrize("case, fresh", [pytest.param(c, False, id=c) for c in FAILURES]
                         + [pytest.param(c, True, id=f"{c}-process") for c in IN_A_FRESH_PROCESS])
def test_failure_is_one_line(case, fresh, tmp_path, base_run, cli_in_process):
    argv, status, must = FAILURES[case]
    paths = {"FILE": tmp_path / "a_file", "OUT": tmp_path / "out", "RUN": base_run,
             "SYNTAX": tmp_path / "syntax.py", "REGISTRATION": tmp_path / "registration.py"}
    paths["FILE"].write_text("not a directory\n")
    paths["SYNTAX"].write_text(BAD_SYNTAX)
    paths["REGISTRATION"].write_text(BAD_REGISTRATION)

    def sub(a: str) -> str:
        for k, v in paths.items():
            a = a.replace(k, str(v)) if a.startswith(k) else a
        return a

    p = (attnbench if fresh else cli_in_process)(*[sub(a) for a in argv], cwd=tmp_path)
    assert p.returncode == status, (p.returncode, p.stderr)
    line = error_line(p)
    assert p.stderr == line + "\n", f"not one line:\n{p.stderr}"
    for s in must:
        assert sub(s) in line, f"{sub(s)!r} not in {line!r}"
    assert "--variants" not in line or case != "baseline-unknown"
    assert not paths["OUT"].exists(), "a refused command created --out"


def test_debug_adds_the_traceback(tmp_path, cli_in_process):
    p = cli_in_process("run", "--out", str(tmp_path / "out"), "memory=maybe", "--debug", cwd=tmp_path)
    assert p.returncode == 2
    assert "Traceback" in p.stderr and p.stderr.endswith("attnbench: error: memory=maybe: must be true or false "
                                                         "(see attnbench/conf/bench.yaml)\n")


def test_corrupt_line_in_the_middle_on_resume(run_copy, cli_in_process):
    jsonl = run_copy / "results.jsonl"
    lines = jsonl.read_text().splitlines(keepends=True)
    jsonl.write_text(lines[0] + "{garbage\n" + "".join(lines[1:]))
    before = jsonl.read_bytes()
    p = cli_in_process("run", "--out", str(run_copy), "--resume", cwd=run_copy.parent)
    assert p.returncode == 1, p.stderr
    line = error_line(p)
    assert f"{jsonl}: line 2 is not valid JSON" in line and "fix that line" in line
    assert jsonl.read_bytes() == before


def test_full_disk_mid_run_keeps_the_rows(run_copy):
    """A write the disk refuses (here: the file-size limit, EFBIG) ends the run with one line;
    every complete row stays, and the resume it names finishes the run."""
    jsonl = run_copy / "results.jsonl"
    rows = read_rows(jsonl)
    padding = [dict(rows[0], seq_len=100_000 + i) for i in range(40)]  # rows of other n: results.jsonl
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows + padding))  # outgrows run.json
    limit = jsonl.stat().st_size + 100

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = ["run", "--out", str(run_copy), "--resume", "--extend", "--seq-lens", "32,64"]
    p = attnbench(*args, cwd=run_copy.parent, preexec_fn=small_files)
    assert p.returncode == 1, p.stderr
    line = error_line(p)
    assert f"{jsonl}: cannot append a row (File too large)" in line
    assert f"{len(rows) + len(padding)} rows kept" in line
    assert f"resume with: python -m attnbench run --out {run_copy} --resume" in line
    assert len(read_rows(jsonl)) == len(rows) + len(padding)  # a torn last line, if any, is not a row
    p = attnbench("run", "--out", str(run_copy), "--resume", cwd=run_copy.parent)
    assert p.returncode == 0, p.stderr
    assert {r["seq_len"] for r in read_rows(jsonl) if r["variant"] == "full@naive"} >= {32, 64}


# ---------------------------------------------------------------------------------------------
# One writer per run directory
# ---------------------------------------------------------------------------------------------
def test_second_writer_is_refused_naming_the_holder(tmp_path, cli_in_process):
    """In process: flock locks belong to open files, so this process's own lock below refuses its
    second open as it would another process's (test_ctrl_c_... refuses a real second process)."""
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(json.dumps({"pid": os.getpid(), "host": "bench-host", "started_at": "2025-01-01T00:00:00+00:00",
                               "command": "python -m attnbench run --out run"}) + "\n")
        held.flush()
        p = cli_in_process("run", "--out", str(out), "--variants", "full@naive", "--seq-lens", "32", *SMALL,
                           cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    line = error_line(p)
    assert line == (f"attnbench: error: --out {out} is being written by another run (pid {os.getpid()} on bench-host, "
                    "since 2025-01-01T00:00:00+00:00: python -m attnbench run --out run); wait for it to finish, "
                    "or choose another --out")
    assert sorted(x.name for x in out.iterdir()) == [".lock"]


def test_stale_lock_of_a_dead_run_does_not_block(run_copy):
    """A lock file left by a killed run holds no lock. (The resume plans part of the run's grid,
    one of its two variants: nothing new, so no --extend.)"""
    (run_copy / ".lock").write_text(json.dumps({"pid": 999_999_999, "host": "gone", "started_at": "x",
                                                "command": "killed"}) + "\n")
    p = attnbench("run", "--out", str(run_copy), "--resume", "--variants", "full@naive", cwd=run_copy.parent)
    assert p.returncode == 0, p.stderr
    assert "0 new rows (2 in all)" in p.stdout
    assert json.loads((run_copy / ".lock").read_text())["pid"] != 999_999_999
    assert len(json.loads((run_copy / "run.json").read_text())["grids"]) == 1


# ---------------------------------------------------------------------------------------------
# --resume resumes; --extend says so and run.json records every grid
# ---------------------------------------------------------------------------------------------
def test_resume_with_a_different_grid_is_refused_unless_extended(run_copy, cli_in_process):
    before = {f: (run_copy / f).read_bytes() for f in ("run.json", "results.jsonl")}
    p = cli_in_process("run", "--out", str(run_copy), "--resume", "--seq-lens", "32,64", cwd=run_copy.parent)
    assert p.returncode == 2, p.stderr
    line = error_line(p)
    assert f"plans a different grid than the run in {run_copy} (seq_lens [32] -> [32, 64])" in line
    assert f"python -m attnbench run --out {run_copy} --resume" in line and "--extend" in line
    assert {f: (run_copy / f).read_bytes() for f in before} == before

    p = attnbench("run", "--out", str(run_copy), "--extend", "--seq-lens", "32,64", cwd=run_copy.parent)
    assert p.returncode == 0, p.stderr
    info = json.loads((run_copy / "run.json").read_text())
    assert [g["grid"]["seq_lens"] for g in info["grids"]] == [[32], [32, 64]]
    assert info["config"]["seq_lens"] == "32,64"
    planned = {(v, n) for g in info["grids"] for v in g["grid"]["variants"] for n in g["grid"]["seq_lens"]}
    assert {(r["variant"], r["seq_len"]) for r in read_rows(run_copy / "results.jsonl")} == planned

    p = attnbench("run", "--out", str(run_copy), "--resume", cwd=run_copy.parent)  # the extended grid is its own now
    assert p.returncode == 0, p.stderr
    assert "0 new rows" in p.stdout


# ---------------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_stops_at_once_kills_the_worker_and_says_how_to_resume(run_copy, tmp_path):
    mark = tmp_path / "hang.pid"
    env = dict(os.environ, ATTNBENCH_TEST_HANG_MARK=str(mark))
    cmd = [sys.executable, "-m", "attnbench", "run", "--out", str(run_copy), "--extend", "--plugin", str(TRUST),
           "--variants", "test@hang", "--seq-lens", "32"]
    # a shell's background job inherits SIGINT ignored (and Python then keeps ignoring it): give
    # the run the default disposition, as a terminal's foreground job has
    proc = subprocess.Popen(cmd, cwd=run_copy.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mark.exists(), proc.communicate()[1][-2000:]
        worker = int(mark.read_text())
        second = attnbench("run", "--out", str(run_copy), "--resume", cwd=run_copy.parent)  # a second writer
        assert second.returncode == 1 and f"(pid {proc.pid} on " in error_line(second)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert took < 2.0, f"Ctrl-C took {took:.2f} s"
    assert "Traceback" not in err and out == ""
    last = err.splitlines()[-1]
    assert last == (f"attnbench: interrupted; 2 rows kept in {run_copy / 'results.jsonl'}; "
                    f"resume with: python -m attnbench run --out {run_copy} --resume")
    t_end = time.monotonic() + 2
    while _alive(worker) and time.monotonic() < t_end:
        time.sleep(0.02)
    assert not _alive(worker), "the worker outlived Ctrl-C"


def test_ctrl_c_seen_while_waiting_on_the_worker_whatever_thread_gets_it():
    """Linux hands a process's SIGINT to any of its threads. One that lands on a helper thread
    (rich's refresh thread in ``run``) must still stop the wait on the worker at once, not when
    the case's timeout ends the select (found in CI: a Ctrl-C ignored for the whole timeout)."""
    import threading

    from attnbench.case import Case, Shape
    from attnbench.catalog import get, load_plugin
    from attnbench.harness.isolate import Worker

    load_plugin(str(TRUST))
    case = Case.make(get("test@hang"), Shape(batch=1, heads=1, kv_heads=1, seq_len=8, kv_len=8, head_dim=8,
                                             dtype="float32", device="cpu", causal=False, mode="fwd"), {})
    bystander = threading.Thread(target=time.sleep, args=(60,), daemon=True)
    bystander.start()
    sent = []

    def interrupt_the_bystander():
        time.sleep(1.0)
        sent.append(time.monotonic())
        signal.pthread_kill(bystander.ident, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # pytest may run with SIGINT ignored
    try:
        with Worker(threads=1, plugins=(str(TRUST),)) as w:  # started and ready: the signal comes during the case
            threading.Thread(target=interrupt_the_bystander, daemon=True).start()
            with pytest.raises(KeyboardInterrupt):
                w.request({"op": "case", "case": case.to_json(), "opts": {}}, 60)
            seen = time.monotonic()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent and seen - sent[0] < 1.0, f"Ctrl-C seen {seen - sent[0]:.2f} s after it was sent"
