"""Every benchmark runs once, in its short smoke mode, through `bench/run_all.py` (what `make bench`
runs), so none of them can rot. The shapes of the results are checked, never the numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bench")
    out = subprocess.run(
        [sys.executable, "-P", str(ROOT / "bench" / "run_all.py"), "--smoke", "--results-dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=420,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return folder


def load(folder: Path, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((folder / f"{name}.json").read_text())
    assert (folder / f"{name}.png").stat().st_size > 1000, f"{name}.png"
    return doc


@pytest.mark.timeout(440)
def test_fleet_benchmark(results: Path) -> None:
    doc = load(results, "fleet-smoke")
    assert [r["concurrency"] for r in doc["in_process"]] == [1, 10, 100]
    assert all(r["jobs"] > 0 for r in doc["in_process"] + doc["http"])
    assert doc["convergence"]["crash_seconds"]["n"] == 1


@pytest.mark.timeout(440)
def test_proxy_overhead_benchmark(results: Path) -> None:
    doc = load(results, "proxy_overhead-smoke")
    assert [r["concurrency"] for r in doc["levels"]] == [1, 10, 50]
    for row in doc["levels"]:
        assert row["direct"]["n"] > 0 and row["proxy"]["n"] > 0
        assert row["direct"]["errors"] == row["proxy"]["errors"] == 0
        assert row["ratio_p50"] > 0


@pytest.mark.timeout(440)
def test_credits_benchmark(results: Path) -> None:
    doc = load(results, "credits-smoke")
    for series in ("python", "http"):
        assert [r["concurrency"] for r in doc[series]] == [1, 10, 100]
        assert all(r["consumes"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in doc[series])
    # One script call per consume (heartbeats of the fleet may add a fraction).
    assert all(0.99 <= r["redis_round_trips_per_consume"] < 1.2 for r in doc["http"])


@pytest.mark.timeout(440)
def test_peers_benchmark(results: Path) -> None:
    doc = load(results, "peers-smoke")
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


@pytest.mark.timeout(440)
def test_admission_benchmark(results: Path) -> None:
    doc = load(results, "admission-smoke")
    assert [r["waiting"] for r in doc["levels"]] == [0, 100, 1000, 10000]
    assert all(r["other_type"]["n"] == r["churn"]["n"] == r["rounds"] > 0 for r in doc["levels"])


@pytest.mark.timeout(440)
def test_fleet_scale_benchmark(results: Path) -> None:
    doc = load(results, "fleet_scale-smoke")
    assert [r["instances"] for r in doc["sizes"]] == [5, 20]
    for r in doc["sizes"]:
        assert r["cold_start_s"] >= r["cold_start_registered_s"] > 0
        assert r["join_s"] >= 0 and r["graceful_leave_s"] >= 0 and r["idle_redis_commands_per_s"] > 0
