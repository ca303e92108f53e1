"""The benchmarks run in a short smoke mode so they cannot rot (numbers are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.timeout(120)
def test_fleet_benchmark_smoke(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-P", str(ROOT / "bench" / "fleet.py"), "--smoke", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    doc = json.loads((tmp_path / "fleet-smoke.json").read_text())
    assert [r["concurrency"] for r in doc["in_process"]] == [1, 10, 100]
    assert all(r["jobs"] > 0 for r in doc["in_process"] + doc["http"])
    assert doc["convergence"]["crash_seconds"]["n"] == 1
    assert (tmp_path / "fleet-smoke.png").stat().st_size > 1000
