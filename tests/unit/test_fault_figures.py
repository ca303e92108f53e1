"""The fault table of docs/fleet.md is docs/faults.json rendered, and docs/faults.json has the figures
of every fault case the tests record (tests/faults/report.py; `make docs` refreshes both)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults import report

FIGURES = {
    "case": "sigkill-holding",
    "limit": 30,
    "clients": 90,
    "instances": 3,
    "hold_seconds": 8.0,
    "max_fleet_in_flight": 30,
    "admitted": 90,
    "refused": 1000,
    "client_errors": 60,
    "recovered_after_s": None,
    "evicted_after_s": 2.1,
    "ghost_leases": 10,
    "ghost_seen_s": [4.0, 12.5],
    "share_back_after_s": 10.6,
    "machine": {
        "cpus": 2,
        "python": "3.11.7",
        "redis": "7.0.15",
        "platform": "Linux",
        "load_average": [1, 2, 3],
    },
    "measured_at": "2026-01-02T03:04:05Z",
}


def test_the_fault_table_is_current() -> None:
    for path, text in report.render().items():
        assert path.read_text() == text, f"stale: {path.relative_to(report.ROOT)}: run `make docs`"


def test_every_fault_case_has_committed_figures_within_the_limit() -> None:
    cases = json.loads(report.SUMMARY.read_text())["cases"]
    assert list(cases) == [*report.CASES, *report.BUDGET_CASES], "run `pytest tests/faults`, then `make docs`"
    for case in report.CASES:
        assert cases[case]["max_fleet_in_flight"] <= cases[case]["limit"], case
    for case in report.BUDGET_CASES:
        doc = cases[case]
        assert doc["max_tokens_in_a_minute"] <= doc["tokens_per_minute"], case
        assert doc["credits_allowed"] <= doc["credits"], case


def test_collect_keeps_the_newest_run_of_each_case_and_drops_timelines(tmp_path: Path) -> None:
    results, summary = tmp_path / "results", tmp_path / "faults.json"
    results.mkdir()
    (results / "sigkill-holding.json").write_text(json.dumps({**FIGURES, "timeline": [[0.0, 1]]}))
    (results / "not-a-case.json").write_text(json.dumps({"case": "other"}))
    assert report.collect(results, summary)
    assert not report.collect(results, summary)  # unchanged: not rewritten
    doc = json.loads(summary.read_text())
    assert doc["cases"] == {"sigkill-holding": FIGURES}
    lines = report.table(doc)
    assert "2 cores, Python 3.11.7, Redis 7.0.15, Linux" in lines[0]
    assert lines[-1].startswith(
        "| an instance SIGKILLed while its clients hold its leases | 8 s | **30** / 30 |"
    )
    assert "its 10 leases counted for 8.5 s; whole limit divided again after 10.6 s" in lines[-1]
    assert "2026-01-02T03:04:05Z, load 1 / 2" in lines[-1]


def test_the_table_needs_its_markers() -> None:
    with pytest.raises(ValueError, match="no markers for the generated section 'faults'"):
        report.fill("no markers", ["x"])
    text = f"a\n{report.marker()}\nold\n{report.marker(end=True)}\nb"
    assert report.fill(text, ["new"]).split("\n")[2] == "new"
