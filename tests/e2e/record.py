"""The e2e suite's record: a JSON file of timestamped events and figures per test, and a summary table.

One file per session, ``tests/results/e2e/e2e-<UTC time>-<cluster>.json`` (and ``latest.json``),
rewritten after every test so an interrupted run still leaves what it saw::

    {"suite": "e2e", "cluster": "local", "startedAt": "...", "finishedAt": "...", "durationSeconds": 412.3,
     "settings": {...}, "summary": [{"test": ..., "outcome": ..., ...}],
     "tests": [{"test": "tests/e2e/test_2_scaling.py::test_...", "outcome": "passed", "durationSeconds": 31.2,
                "figures": {"join_max_s": 0.012, ...},
                "events": [{"t": 1732230000.123, "dt": 0.412, "kind": "pod.ready", "pod": "..."}, ...]}]}

``t`` is Unix time (the host clock, which is also Redis's on the local cluster), ``dt`` seconds since
the test started. Event kinds are listed in docs/e2e.md.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: Kinds counted in the summary table's columns.
COUNTED = {
    "pods": "pod.started",
    "joined": "instance.joined",
    "left": "instance.left",
    "allocs": "allocation.seen",
    "jobs ok": "job.completed",
    "failed": "job.failed",
    "refused": "job.refused",
}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


@dataclass
class ScenarioRecord:
    """What one test saw. Events may come from background threads (the watch, the job load)."""

    test: str
    started: float = field(default_factory=time.time)
    events: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    headline: list[str] = field(default_factory=list)
    outcome: str = "running"
    duration: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def event(self, kind: str, t: float | None = None, **fields: Any) -> None:
        """Record that ``kind`` happened at ``t`` (default: now), with details."""
        t = time.time() if t is None else t
        with self._lock:
            self.events.append({"t": round(t, 4), "dt": round(t - self.started, 4), "kind": kind, **fields})

    def step(self, message: str) -> None:
        """A step of the test (``kubectl apply``, a delete): what the events that follow answer to."""
        self.event("step", message=message)

    def figure(self, name: str, value: Any, *, headline: str | None = None) -> None:
        """A measurement; ``headline`` (a short text) also goes into the summary table."""
        with self._lock:
            self.figures[name] = value
            if headline:
                self.headline.append(headline)

    def count(self, kind: str) -> int:
        """How many events of ``kind``."""
        with self._lock:
            return sum(1 for e in self.events if e["kind"] == kind)

    def to_json(self) -> dict[str, Any]:
        """The test's part of the record file."""
        with self._lock:
            events = sorted(self.events, key=lambda e: e["t"])
            return {
                "test": self.test,
                "outcome": self.outcome,
                "startedAt": _iso(self.started),
                "durationSeconds": round(self.duration, 3),
                "figures": dict(self.figures),
                "events": events,
            }

    def summary_row(self) -> dict[str, Any]:
        """The test's row of the summary table."""
        with self._lock:
            kinds = Counter(e["kind"] for e in self.events)
            row: dict[str, Any] = {
                "test": self.test.rsplit("::", 1)[-1],
                "outcome": self.outcome,
                "seconds": round(self.duration, 1),
            }
            row.update({col: kinds[kind] for col, kind in COUNTED.items()})
            row["figures"] = "; ".join(self.headline)
            return row


class Recorder:
    """The session's record file: every test's record, rewritten after each test."""

    def __init__(self, folder: Path, cluster: str, settings: dict[str, Any]) -> None:
        self.started = time.time()
        self.cluster = cluster
        self.settings = settings
        stamp = datetime.fromtimestamp(self.started, UTC).strftime("%Y%m%dT%H%M%SZ")
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"e2e-{stamp}-{cluster}.json"
        self.latest = folder / "latest.json"
        self.tests: list[ScenarioRecord] = []

    def start(self, test: str) -> ScenarioRecord:
        """A new test's record."""
        record = ScenarioRecord(test)
        self.tests.append(record)
        return record

    @property
    def finished(self) -> float:
        """When the last test ended (the record may be written again later, at the end of a session
        that ran other tests after these)."""
        return max((t.started + t.duration for t in self.tests), default=self.started)

    def write(self) -> Path:
        """Write the record file (and latest.json) as it stands."""
        doc = {
            "suite": "e2e",
            "cluster": self.cluster,
            "startedAt": _iso(self.started),
            "finishedAt": _iso(self.finished),
            "durationSeconds": round(self.finished - self.started, 1),
            "settings": self.settings,
            "summary": [t.summary_row() for t in self.tests],
            "tests": [t.to_json() for t in self.tests],
        }
        text = json.dumps(doc, indent=1)
        self.path.write_text(text)
        self.latest.write_text(text)
        return self.path

    def table(self) -> list[str]:
        """The summary table as lines of text."""
        rows = [t.summary_row() for t in self.tests]
        if not rows:
            return []
        cols = ["test", "outcome", "seconds", *COUNTED, "figures"]
        cells = [[str(r[c]) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        widths[-1] = len(cols[-1])  # the last column is free text: no padding
        line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
        out = [line, "  ".join("-" * w for w in widths[:-1]) + "  " + "-" * 7]
        for row in cells:
            out.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        total = sum(t.duration for t in self.tests)
        out.append(
            f"{len(rows)} tests, {total:.0f} s in tests, {self.finished - self.started:.0f} s from the start "
            "of the record (with the install) to the end of the last test"
        )
        return out
