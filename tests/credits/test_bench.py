"""bench/credits.py runs in its short smoke mode, so it cannot rot (numbers are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_credits_benchmark_smoke(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-P", str(ROOT / "bench" / "credits.py"), "--smoke", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    doc = json.loads((tmp_path / "credits-smoke.json").read_text())
    for series in ("python", "http"):
        assert [r["concurrency"] for r in doc[series]] == [1, 10, 100]
        assert all(r["consumes"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in doc[series])
    # One script call per consume (heartbeats of the fleet may add a fraction).
    assert all(0.99 <= r["redis_round_trips_per_consume"] < 1.2 for r in doc["http"])
