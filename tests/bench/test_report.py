"""The generated benchmark sections: figures from the results files, with their machine and time;
a gateway's added latency only when it was measured per request pair."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report

MACHINE = {
    "cpus": 2,
    "cpu": "Test CPU",
    "python": "3.11.7",
    "redis": "Redis server v=7.0.15 x",
    "platform": "L",
}


def gateway(added_method: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"concurrency": 1, "p50_ms": 1.5, "p99_ms": 3.0}
    if added_method:
        row |= {"added_method": added_method, "added_p50_ms": 0.4, "added_p99_ms": 1.1}
    return {"kind": "gateway", "accuracy": [], "overhead": [row], "per_core": None}


@pytest.mark.parametrize(("method", "cell"), [("pairs", "0.400 / 1.10"), (None, "n/a (latency 1.50 / 3.00)")])
def test_gateway_added_latency_only_from_pairs(method: str | None, cell: str) -> None:
    doc = {"systems": {"fleet-limiter proxy": gateway(method)}, "params": {"limit": 120}}
    table = "\n".join(report.peers_overhead(doc))
    assert f"| fleet-limiter proxy | {cell} |" in table
    assert ("predates the request pairs" in table) == (method is None)


def test_sections_name_the_machine_and_time_and_markers_are_required(tmp_path: Path) -> None:
    doc = json.loads((report.RESULTS / "credits.json").read_text())
    doc |= {"machine": MACHINE, "measured_at": "2026-01-02T03:04:05Z"}
    (tmp_path / "credits.json").write_text(json.dumps(doc))
    (tmp_path / "credits-smoke.json").write_text("{}")  # smoke results are never shown
    docs = report.load(tmp_path)
    assert list(docs) == ["credits"]
    (line,) = report.readme(docs)
    assert "2 cores (Test CPU), Python 3.11.7, Redis 7.0.15, L; measured 2026-01-02T03:04:05Z" in line
    text = f"a\n{report.marker('benchmarks')}\nold\n{report.marker('benchmarks', end=True)}\nb"
    assert report.fill(text, {"benchmarks": ["new"]}, "R").split("\n")[2] == "new"
    with pytest.raises(ValueError, match="no markers for the generated section 'fleet'"):
        report.fill("no markers", {"fleet": ["x"]}, "R")
