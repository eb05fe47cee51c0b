"""One training job in its own process: ``python -m attnbench.train.job JOB_DIR``.

Reads ``JOB_DIR/job.json`` (written by the parent, :mod:`attnbench.train.runner`), trains,
and writes ``JOB_DIR/result.json`` atomically: the row's measured fields with ``status`` and
``reasons``. While training it rewrites ``JOB_DIR/progress.json`` about twice a second for the
parent's progress bar. A failure the process survives (divergence, an exception, an OOM the
allocator reports) is written as a result; a death (the kernel's OOM killer, a segfault) or a
timeout leaves no result and the parent writes the row.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

THREADS = os.environ.get("ATTNBENCH_THREADS")
if THREADS:  # before torch is imported
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = THREADS

import torch  # noqa: E402

from attnbench.catalog import load_plugin  # noqa: E402
from attnbench.harness.failures import classify  # noqa: E402
from attnbench.train.loop import Diverged, Job, Progress  # noqa: E402


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, default=str))
    tmp.replace(path)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run(job_dir: Path) -> dict:
    spec = json.loads((job_dir / "job.json").read_text())
    if THREADS:
        torch.set_num_threads(int(THREADS))

    def report(p: Progress) -> None:
        write_json(job_dir / "progress.json", p.__dict__)

    try:
        for plugin in spec.get("plugins") or []:  # the variants of --plugin files, as in the parent
            load_plugin(plugin)
        job = Job(spec, job_dir)
        if spec.get("resume"):
            job.restore()
        job.run(report)
        result = {"status": "ok", "reasons": [], **job.finish()}
    except Diverged as e:
        result = {"status": "diverged", "reasons": [str(e)]}
    except Exception as e:  # noqa: BLE001 - every failure becomes this job's row
        status, reasons = classify(e)
        result = {"status": status, "reasons": reasons}
    result["peak_mem_bytes"] = peak_rss_bytes()
    result["threads"] = torch.get_num_threads()
    return result


def main() -> None:
    job_dir = Path(sys.argv[1])
    t0 = time.perf_counter()
    result = run(job_dir)
    result["attempt_s"] = time.perf_counter() - t0
    write_json(job_dir / "result.json", result)


if __name__ == "__main__":
    main()
