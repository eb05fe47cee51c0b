"""Our kernels side by side with the public implementations users pick (issue 15), in one run
on one machine: forward, B=1 H=8 D=64, fp32, each (implementation, n) in its own fresh process.

    make peers                                            # venv .venv-peers, the peers, this script
    .venv-peers/bin/python scripts/peers.py               # n = 4096..16384 -> results/cpu-epyc-2core/peers/
    .venv-peers/bin/python scripts/peers.py --only bigbird --seq-lens 4096
    python scripts/peers.py --table results/cpu-epyc-2core/peers   # the report again, from the rows only

The peers (scripts/peers-requirements.txt, pinned) are no attnbench dependency: `make peers`
installs them with constraints-cpu.txt into .venv-peers, so torch stays the pinned one. What is
measured and how each peer is called: ``peers_impls``; the child process: ``peers_child``; the
rows and what their memory figures include: ``peers_rows``; the table: ``peers_table``.

First, per peer, a check on a small case (``--check-n``): the peer's output against ours on the
same inputs; one that differs is an ``incorrect`` row, and the table says so. Then every n,
every implementation, one fresh process each (HF BigBird holds ~10 GB at n = 16384; a fresh
process keeps that out of the others' figures), under a wall-clock limit that kills its process
group. A failure (package missing, unsupported n, OOM, timeout, crash, exception) is a row with
its status and reasons; after an OOM, timeout or crash at some n the larger n of that
implementation are skipped. Rows are appended as they finish (``--resume`` continues a killed
run); run.json holds the machine, versions, git sha and the command line. At the end the report
(reports/<machine>/peers/README.md) is written from the rows and printed.
"""
from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from attnbench.config import ConfigError, parse_seq_lens
from attnbench.harness.env import host_environment
from attnbench.harness.isolate import child_env
from attnbench.vocab import STOPS_LARGER

import peers_child
import peers_rows
import peers_table
from peers_impls import IMPLS, Impl

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "scripts" / "peers-requirements.txt"
DEFAULT_OUT = "results/cpu-epyc-2core/peers"


def pinned() -> dict[str, str]:
    """package -> the version peers-requirements.txt pins."""
    out = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.strip()] = version.strip()
    return out


def missing_reasons(package: str) -> list[str]:
    """Why a peer is missing and what to pip install."""
    pin = pinned().get(package)
    where = f" ({package}=={pin} in scripts/peers-requirements.txt)" if pin else ""
    return [f"'{package}' is not installed{where}",
            "the peers go into their own venv: `make peers`, or `.venv-peers/bin/pip install "
            "-c constraints-cpu.txt -e . -r scripts/peers-requirements.txt`"]


def version_of(package: str | None) -> str | None:
    try:
        return metadata.version(package or "attnbench")
    except metadata.PackageNotFoundError:
        return None


def base_row(impl: Impl, kind: str, n: int, a: argparse.Namespace) -> dict:
    """The case's fields, known before it runs."""
    return peers_rows.new_row(
        kind=kind, impl=impl.name, algorithm=impl.algorithm, role=impl.role, package=impl.package or "attnbench",
        package_version=version_of(impl.package), torch=version_of("torch"), n=n, batch=a.batch, heads=a.heads,
        head_dim=a.head_dim, dtype="float32", mode="fwd", params=impl.params, pattern=impl.pattern)


def spawn(case: dict, timeout: float) -> dict:
    """Run one case in a fresh process group; its row fields, or why it gave none."""
    env = child_env(0)  # torch's default thread count
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "peers_child.py"), json.dumps(case)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=env, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"status": "timeout", "reasons": [f"exceeded the wall-clock limit of {timeout:g} s; process killed"]}
    except BaseException:  # Ctrl-C: no process outlives the run
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    for line in reversed(out.splitlines()):
        if line.startswith(peers_child.MARK):
            return json.loads(line[len(peers_child.MARK):])
    tail = " | ".join(err.strip().splitlines()[-6:])[-600:]
    if proc.returncode == -signal.SIGKILL:
        return {"status": "oom", "reasons": [f"killed by SIGKILL (likely the kernel's OOM killer); log: {tail}"]}
    if proc.returncode < 0:
        return {"status": "crash", "reasons": [f"died with {signal.Signals(-proc.returncode).name}; log: {tail}"]}
    return {"status": "crash", "reasons": [f"exited with code {proc.returncode} and no row; log: {tail}"]}


def plan(a: argparse.Namespace, impls: list[Impl]) -> list[tuple[str, Impl, int]]:
    """(kind, impl, n): the checks of the selected peers, then every n for every implementation."""
    cases = [("check", i, a.check_n) for i in impls if i.check_against and not a.no_check]
    return cases + [("speed", i, n) for n in a.seq_lens for i in impls]


def before_running(impl: Impl, kind: str, n: int, failed: dict[str, tuple[str, int]]) -> tuple[str, list[str]] | None:
    """(status, reasons) of a case decided without running it, else None."""
    if importlib.util.find_spec(impl.module) is None:
        return "missing", missing_reasons(impl.package or impl.module)
    if impl.reasons(n):
        return "unsupported", impl.reasons(n)
    if kind == "speed" and impl.name in failed:
        status, n0 = failed[impl.name]
        return "skipped", [f"{impl.name} already failed with {status} at n = {n0}"]
    return None


def run_case(kind: str, impl: Impl, n: int, a: argparse.Namespace, failed: dict) -> dict:
    row = base_row(impl, kind, n, a)
    decided = before_running(impl, kind, n, failed)
    if decided is not None:
        row.update(status=decided[0], reasons=decided[1])
        return row
    t0 = time.perf_counter()
    case = {"kind": kind, "impl": impl.name, "n": n, "batch": a.batch, "heads": a.heads, "head_dim": a.head_dim,
            "budget_s": a.budget}
    row.update(spawn(case, a.timeout))
    row["elapsed_s"] = time.perf_counter() - t0  # the whole process: start, imports, the case
    if row["status"] == "missing":
        row["reasons"] = missing_reasons(impl.package or impl.module) + row["reasons"]
    if kind == "speed" and row["status"] in STOPS_LARGER:
        failed.setdefault(impl.name, (row["status"], n))
    return row


def progress(i: int, total: int, row: dict) -> str:
    what = f"[{i}/{total}] {row['kind']:5s} {row['impl']:22s} n={row['n']:6d}: {row['status']}"
    if row["status"] != "ok":
        return f"{what} ({'; '.join(row['reasons'])[:160]})"
    if row["kind"] == "check":
        return f"{what}, max |diff| {row['check_max_abs_diff']:.1e}"
    return (f"{what}, {row['time_ms_median']:.1f} ms (IQR {row['iqr_ms']:.1f}, {row['repeats']} repeats"
            f"{', noisy' if row['noisy'] else ''}), {row['peak_rss_mb']:.0f} MB, first call "
            f"{row['first_call_ms']:.0f} ms ({row['elapsed_s']:.0f} s)")


def run_json(a: argparse.Namespace, argv: list[str], impls: list[Impl]) -> dict:
    exe = Path(sys.executable)
    exe_s = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else "python"
    env = host_environment()
    return {**env, "torch": version_of("torch"), "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join([exe_s, "scripts/peers.py", *argv]),
            "peers": {i.package: version_of(i.package) for i in impls if i.package},
            "seq_lens": a.seq_lens, "budget_s": a.budget, "timeout_s": a.timeout, "check_n": a.check_n,
            "shape": {"batch": a.batch, "heads": a.heads, "head_dim": a.head_dim, "dtype": "float32", "mode": "fwd"}}


def measure(a: argparse.Namespace, argv: list[str], impls: list[Impl]) -> int:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path, run_path = out / "rows.jsonl", out / "run.json"
    done = {peers_rows.key(r) for r in peers_rows.read_rows(rows_path)} if a.resume else set()
    if not a.resume:
        rows_path.unlink(missing_ok=True)
        run_path.write_text(json.dumps(run_json(a, argv, impls), indent=1) + "\n")
    t_run = time.perf_counter()
    cases = plan(a, impls)
    failed: dict[str, tuple[str, int]] = {}
    for i, (kind, impl, n) in enumerate(cases, 1):
        if (kind, impl.name, n) in done:
            continue
        row = run_case(kind, impl, n, a, failed)
        peers_rows.append_row(rows_path, row)
        print(progress(i, len(cases), row), file=sys.stderr, flush=True)
    run = json.loads(run_path.read_text())
    run["wall_s"] = round(time.perf_counter() - t_run, 1)  # this invocation's (a resumed run: its part)
    run_path.write_text(json.dumps(run, indent=1) + "\n")
    print(f"{len(cases)} cases in {time.perf_counter() - t_run:.0f} s -> {rows_path}", file=sys.stderr)
    return write_table(out, a.report)


def report_path(results: Path) -> Path:
    """results/<machine>/<run> -> reports/<machine>/<run>/README.md (else <results>/README.md)."""
    parts = results.resolve().parts
    if "results" in parts:
        i = len(parts) - 1 - parts[::-1].index("results")
        return Path(*parts[:i], "reports", *parts[i + 1:], "README.md")
    return results / "README.md"


def write_table(results: Path, report: str | None) -> int:
    rows = peers_rows.read_rows(results / "rows.jsonl")
    if not rows:
        print(f"peers: no rows in {results / 'rows.jsonl'}", file=sys.stderr)
        return 2
    run = json.loads((results / "run.json").read_text()) if (results / "run.json").is_file() else {}
    text = peers_table.render(rows, run)
    path = Path(report) if report else report_path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def select(only: str | None) -> list[Impl]:
    """Implementations named by --only (names or algorithms, comma-separated), in IMPLS order."""
    if not only:
        return list(IMPLS.values())
    algorithms = {i.algorithm for i in IMPLS.values()}
    words = [w.strip() for w in only.split(",") if w.strip()]
    for w in words:
        if w not in IMPLS and w not in algorithms:
            near = difflib.get_close_matches(w, [*IMPLS, *algorithms], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"--only {w!r}: no such implementation or algorithm; allowed: "
                              f"{', '.join([*IMPLS, *sorted(algorithms)])}{hint}")
    return [i for i in IMPLS.values() if i.name in words or i.algorithm in words]


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-lens", default="4096..16384", help="A..B (powers of two) or a comma list")
    ap.add_argument("--only", default=None, help="implementations or algorithms, comma-separated "
                                                 f"({', '.join(IMPLS)}; or an algorithm: both sides)")
    ap.add_argument("--budget", type=float, default=1.0, help="timing budget per measurement (s)")
    ap.add_argument("--timeout", type=float, default=600.0, help="wall-clock limit per process (s)")
    ap.add_argument("--check-n", type=int, default=1024, help="n of the peers' checks against ours")
    ap.add_argument("--no-check", action="store_true", help="skip the checks")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--out", default=DEFAULT_OUT, help="results directory (rows.jsonl, run.json)")
    ap.add_argument("--report", default=None, help="report file (default: reports/<machine>/<run>/README.md)")
    ap.add_argument("--resume", action="store_true", help="keep the rows there and run only the cases missing")
    ap.add_argument("--table", metavar="DIR", default=None, help="only rebuild the report from DIR's rows")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    if a.table:
        return write_table(Path(a.table), a.report)
    try:
        a.seq_lens = parse_seq_lens(a.seq_lens)
        impls = select(a.only)
    except ConfigError as e:
        print(f"peers: {e}", file=sys.stderr)
        return 2
    return measure(a, argv, impls)


if __name__ == "__main__":
    sys.exit(main())
