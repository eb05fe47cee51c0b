"""The committed reports are what `report` makes of the committed results (tables byte for byte)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_committed_report_tables_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "regenerate_reports.py"), "--check"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "reference" in r.stdout
