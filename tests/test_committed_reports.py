"""The committed reports are what `report` makes of the committed results (tables byte for byte), and no
committed file under results/ or reports/ is over 5 MB (a large run is compacted: `attnbench compact`)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_BYTES = 5_000_000  # what a clone should carry per result or report file


def test_no_committed_result_or_report_file_is_over_5_mb():
    """Files git tracks, or would add (not ignored), as they are in the working tree."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "results",
                                 "reports"], cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: which files are committed is unknown")
    files = [ROOT / f for f in listed.decode().split("\0") if f]
    assert files
    big = [f"{f.relative_to(ROOT)} ({f.stat().st_size / 1e6:.1f} MB)" for f in files
           if f.is_file() and f.stat().st_size > MAX_FILE_BYTES]
    assert not big, "over 5 MB (compact a run with python -m attnbench compact DIR): " + ", ".join(big)


@pytest.mark.slow
def test_committed_report_tables_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "regenerate_reports.py"), "--check"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "reference" in r.stdout
