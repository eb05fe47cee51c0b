"""The progress a person watches during ``train``: one bar for the jobs, one for the current
job's steps with its loss, last validation figure and steps/s; one line per finished job."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attnbench.vocab import STATUSES


def job_line(row: dict) -> str:
    """'listops-small-full@sdpa-s0: ok, test 0.372 ± 0.011 (best val 0.361 at step 400), 3.1 steps/s, 58 s'."""
    head = f"{row['job']}: {row['status']}"
    if row["status"] != "ok":
        return f"{head} ({'; '.join(row['reasons'] or [])[:300]})"
    return (f"{head}, test {row['metric']} {row['test']:.4f} ± {row['test_se']:.4f} (best val {row['best_val']:.4f} "
            f"at step {row['best_step']}), {row['steps_per_s']:.2f} steps/s, {row['wall_s']:.0f} s")


class TrainProgress:
    def __init__(self, jobs: int):
        self.console = Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console)
        self.jobs = self.bar.add_task("jobs", total=jobs, info="")
        self.current = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def start(self, job_id: str, steps: int) -> None:
        self.current = self.bar.add_task(job_id, total=steps, info="starting")

    def update(self, p: dict) -> None:
        val = "" if p.get("val") is None else f" val {p['val']:.4f}"
        self.bar.update(self.current, completed=p["step"],
                        info=f"loss {p['loss']:.4f}{val} {p['steps_per_s']:.2f} steps/s")

    def finish(self, row: dict) -> None:
        self.bar.remove_task(self.current)
        self.bar.advance(self.jobs)
        mark = STATUSES[row["status"]][0]
        self.console.print(job_line(row) + (f"  [{mark}]" if mark else ""), highlight=False, markup=False)
