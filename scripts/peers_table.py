"""The side-by-side table of scripts/peers.py, built from its rows (rows.jsonl + run.json) only:
never a measurement, byte for byte the same from the same files.

One table row per comparison (``COMPARISONS``): ours and the peer at the largest n, the ratios
peer / ours of time and of peak memory (> 1: ours faster, leaner), and whether the issue's goal
holds. Then the same per n, the checks (does the peer compute our pattern?), and the failed
rows with their reasons.
"""
from __future__ import annotations

from dataclasses import dataclass

from attnbench.harness.env import with_cpu

NOISY = "~"  # after a time measured while other processes used the CPU (the timing's `noisy`)


@dataclass(frozen=True)
class Goal:
    time: float  # peer ms / ours ms must be >= this
    memory: float  # peer MB / ours MB must be >= this
    words: str


FASTER_LEANER = Goal(3.0, 3.0, ">= 3x faster and >= 3x leaner")
MATCH = Goal(0.9, 0.9, "match: time and memory within 10% (peer / ours >= 0.9)")


@dataclass(frozen=True)
class Comparison:
    label: str
    ours: str
    peer: str
    peer_label: str
    goal: Goal


COMPARISONS = (
    Comparison("sliding window ±256", "sliding_window@blocked", "local-attention", "lucidrains local-attention",
               FASTER_LEANER),
    Comparison("Longformer", "longformer@blocked", "hf-longformer", "HF transformers LongformerSelfAttention",
               FASTER_LEANER),
    Comparison("BigBird", "bigbird@blocked", "hf-bigbird", "HF transformers BigBird (block sparse)", FASTER_LEANER),
    Comparison("Reformer LSH, 4 hashes", "lsh@shared_qk", "reformer-pytorch", "reformer-pytorch LSHAttention",
               FASTER_LEANER),
    Comparison("Performer FAVOR+, 256 features", "performer@favor", "performer-pytorch",
               "performer-pytorch FastAttention", FASTER_LEANER),
    Comparison("sliding window, compiled FlexAttention", "sliding_window@blocked", "sliding_window@flex",
               "sliding_window@flex (ours via torch FlexAttention)", MATCH),
)


def _ms(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _x(r: float) -> str:
    return f"{r:.0f}x" if r >= 10 else f"{r:.1f}x" if r >= 1 else f"{r:.2g}x"


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _reason(row: dict) -> str:
    """The status and the first reason, short (every reason: the failures table)."""
    text = (row.get("reasons") or [""])[0]
    text = text if len(text) <= 120 else text[:117] + "..."
    return _md(f"{row['status']}: {text}" if text else row["status"])


def cell(row: dict | None) -> str:
    """'ms / MB' of an ok row, else its status and reason."""
    if row is None:
        return "not measured"
    if row["status"] != "ok":
        return _reason(row)
    return f"{_ms(row['time_ms_median'])}{NOISY if row.get('noisy') else ''} / {row['peak_rss_mb']:.0f}"


def ratios(ours: dict | None, peer: dict | None) -> tuple[float, float] | None:
    """(peer ms / ours ms, peer MB / ours MB) when both are ok."""
    if not ours or not peer or ours["status"] != "ok" or peer["status"] != "ok":
        return None
    return peer["time_ms_median"] / ours["time_ms_median"], peer["peak_rss_mb"] / ours["peak_rss_mb"]


def verdict(goal: Goal, r: tuple[float, float] | None) -> str:
    if r is None:
        return "—"
    short = [f"{what} {_x(x)} < {need:g}x" for what, x, need in
             (("time", r[0], goal.time), ("memory", r[1], goal.memory)) if not x >= need]
    return "met" if not short else "not met (" + ", ".join(short) + ")"


def speed_rows(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """(impl, n) -> its speed row (the last one, if a resumed run has two)."""
    return {(r["impl"], r["n"]): r for r in rows if r["kind"] == "speed"}


def comparison_table(rows: list[dict], n: int) -> list[str]:
    by = speed_rows(rows)
    out = ["| n = %d, fwd | ours | ours ms / MB | peer | peer ms / MB | peer ÷ ours (time / memory) | goal | "
           "goal holds |" % n, "|---|---|---:|---|---:|---:|---|---|"]
    for c in COMPARISONS:
        o, p = by.get((c.ours, n)), by.get((c.peer, n))
        r = ratios(o, p)
        rt = "—" if r is None else f"{_x(r[0])} / {_x(r[1])}"
        out.append(f"| {c.label} | {c.ours} | {cell(o)} | {c.peer_label} | {cell(p)} | {rt} | {c.goal.words} | "
                   f"{verdict(c.goal, r)} |")
    return out


def checks_table(rows: list[dict]) -> list[str]:
    checks = {r["impl"]: r for r in rows if r["kind"] == "check"}
    out = ["| peer | checked against | n | result | max abs diff | how its pattern relates to ours |",
           "|---|---|---:|---|---:|---|"]
    for c in COMPARISONS:
        r = checks.get(c.peer)
        if r is None:
            out.append(f"| {c.peer} | {c.ours} | — | not checked | — | — |")
            continue
        res = "same attention" if r["status"] == "ok" else _reason(r)
        diff = "—" if r["check_max_abs_diff"] is None else f"{r['check_max_abs_diff']:.1e}"
        note = _md(r["pattern"] + (f" ({r['check_note']})" if r.get("check_note") else ""))
        out.append(f"| {c.peer} | {c.ours} | {r['n']} | {res} | {diff} | {note} |")
    return out


def failures(rows: list[dict]) -> list[str]:
    bad = [r for r in rows if r["status"] != "ok"]
    if not bad:
        return ["None: every case gave a number."]
    out = ["| kind | implementation | n | status | reasons |", "|---|---|---:|---|---|"]
    for r in bad:
        reasons = _md("; ".join(r["reasons"] or [])) or "—"
        out.append(f"| {r['kind']} | {r['impl']} | {r['n']} | {r['status']} | {reasons} |")
    return out


def load_line(rows: list[dict]) -> str:
    """How busy the machine was while the cases were timed (their ``other_cpu_share``)."""
    shares = sorted(r["other_cpu_share"] for r in rows if r["kind"] == "speed" and r.get("other_cpu_share") is not None)
    if not shares:
        return "Load: not recorded."
    noisy = sum(1 for r in rows if r["kind"] == "speed" and r.get("noisy"))
    return (f"Load: other processes used a median {shares[len(shares) // 2]:.0%} of the machine's CPU while the "
            f"cases were timed (max {shares[-1]:.0%}); {noisy} of {len(shares)} timings are flagged noisy "
            f"({NOISY}). Compare ratios within this run, not its times with another's.")


def header(run: dict, rows: list[dict]) -> list[str]:
    vers = sorted({(r["package"], r["package_version"]) for r in rows
                   if r["role"] == "peer" and r["package"] and r["package"] != "torch"})
    threads = sorted({r["threads"] for r in rows if r.get("threads") is not None})
    return [  # the CPU's summary is absent from runs before the record
        f"Machine: {with_cpu(str(run.get('cpu_model')), run.get('cpu'))}, {run.get('cpu_count')} cores, torch {run.get('torch')} "
        f"({', '.join(map(str, threads)) or '?'} threads, torch's default); run started {run.get('started_at')} "
        f"at git {(run.get('git_sha') or '?')[:12]}{' (dirty tree)' if run.get('git_dirty') else ''}.",
        f"Peers: {', '.join(f'{p} {v}' for p, v in vers) or 'none'}.",
        "",
        load_line(rows),
        "",
        f"Command: `{run.get('command')}`",
        "",
        "Each case: forward, B=1 H=8 D=64, fp32, non-causal, seeded standard-normal q, k, v, in a fresh "
        "process. ms: median of `attnbench.harness.timing.measure` after a first call timed apart "
        f"({NOISY}: noisy, other processes used the CPU while it was timed). MB (2^20 bytes): peak resident "
        "memory of one forward including its q, k, v and output (4 x 32 MB at n = 16384): the inputs' resident "
        "size plus the high-water mark of one call above the size just before it; the interpreter, torch and "
        "what the first call leaves resident (compiled code, cached layouts; `residue_mb` in the rows) are "
        "not counted.",
    ]


def render(rows: list[dict], run: dict) -> str:
    ns = sorted({r["n"] for r in rows if r["kind"] == "speed"})
    lines = ["# Side by side with the public peers (issue 15)", "",
             "Generated by `python scripts/peers.py --table DIR` from the rows of DIR (never re-measured).", ""]
    lines += header(run, rows) + [""]
    if ns:
        lines += ["## At n = %d" % ns[-1], ""] + comparison_table(rows, ns[-1]) + [""]
    lines += ["## Does each peer compute our pattern?", ""] + checks_table(rows) + [""]
    for n in ns[:-1]:
        lines += ["## At n = %d" % n, ""] + comparison_table(rows, n) + [""]
    lines += ["## Cases without a number", ""] + failures(rows) + [""]
    return "\n".join(lines)
