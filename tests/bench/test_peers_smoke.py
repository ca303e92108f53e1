"""The side-by-side benchmark runs in its smoke mode so it cannot rot (numbers are not checked here).

The smoke run covers fleet-limiter and the ``limits`` library (installed with pip into the peers'
cache the first time); envoyproxy/ratelimit and the LiteLLM proxy need a build or an install of
minutes, so they run in `make bench` and in smoke only when asked (``--peers all``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.timeout(300)
def test_peers_benchmark_smoke(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-P", str(ROOT / "bench" / "run_all.py"), "--smoke", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=290,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    doc = json.loads((tmp_path / "peers-smoke.json").read_text())
    systems = doc["systems"]
    for name in ("fleet-limiter", "fleet-limiter proxy", "limits fixed-window", "limits moving-window"):
        assert [r["load"] for r in systems[name]["accuracy"]] == [1.0, 3.0], name
        assert all(r["errors"] == 0 and r["admitted"] > 0 for r in systems[name]["accuracy"]), name
    for name in ("fleet-limiter", "fleet-limiter in process", "limits fixed-window", "stand-in LLM direct"):
        assert [r["concurrency"] for r in systems[name]["overhead"]] == [1, 10, 50], name
        assert all(r["calls"] > 0 and r["failures"] == 0 for r in systems[name]["overhead"]), name
    assert "limits fixed-window" in doc["ratios"]["pairs"]
    assert doc["borrowing"]["flexible"]["utilisation"] > 0
    assert doc["convergence"]["join_seconds"]["n"] == 1
    assert (tmp_path / "peers-smoke.png").stat().st_size > 1000
    assert (tmp_path / "fleet-smoke.json").exists()
