"""Instances joining, leaving, crashing and pausing: every instance follows the fleet's size."""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.fleet import Fleet, Instance
from tests.support.http import http
from tests.support.waiting import wait_until

SCALE = {
    "models": [{"name": "scale-model", "limits": {"tokensPerMinute": 100000}}],
    "jobTypes": [{"name": "scaleJob", "ratio": 1.0, "estimate": {"tokens": 10000}}],
    "instance": {"heartbeatSeconds": 0.5, "instanceTimeoutSeconds": 2},
}


def all_have(instances: list[Instance], slots: int) -> bool:
    return all(i.slots("scaleJob", "scale-model") == slots for i in instances)


def converged(instances: list[Instance], slots: int, timeout: float) -> float:
    """Wait until every instance has ``slots``; return the seconds it took."""
    start = time.monotonic()
    wait_until(
        lambda: all_have(instances, slots), timeout, what=f"{len(instances)} instance(s) at {slots} slots"
    )
    return time.monotonic() - start


@pytest.mark.timeout(90)
def test_join_leave_crash_and_pause(fleet: Fleet) -> None:
    fleet.write_policy("scaling", SCALE)
    (a,) = fleet.start(1)
    assert a.slots("scaleJob", "scale-model") == 10
    assert a.allocation()["allocation"]["instanceCount"] == 1

    (b,) = fleet.start(1)
    join = converged([a, b], 5, timeout=1.0)
    (c,) = fleet.start(1)
    converged([a, b, c], 3, timeout=1.0)

    assert c.stop() == 0  # SIGTERM: graceful, exit 0
    leave = converged([a, b], 5, timeout=1.0)

    b.kill()  # SIGKILL: detected by the others within instanceTimeoutSeconds + heartbeatSeconds
    crash = converged([a], 10, timeout=2 + 0.5 + 0.5)
    print(f"converged: join {join:.3f}s, graceful leave {leave:.3f}s, crash {crash:.3f}s")

    # Several join/leave cycles.
    for _ in range(3):
        (d,) = fleet.start(1)
        converged([a, d], 5, timeout=1.0)
        assert d.stop() == 0
        converged([a], 10, timeout=1.0)

    # A paused instance is evicted, then registers again by itself when it resumes.
    (e,) = fleet.start(1)
    converged([a, e], 5, timeout=1.0)
    e.signal(signal.SIGSTOP)
    converged([a], 10, timeout=3.5)
    e.signal(signal.SIGCONT)
    converged([a, e], 5, timeout=3.0)


@pytest.mark.timeout(60)
def test_sigterm_stops_new_work_and_drains_in_flight_leases(fleet: Fleet) -> None:
    fleet.write_policy("drain", SCALE)
    a, b = fleet.start(2)
    status, lease, _ = b.post("/api/jobs/acquire", {"jobType": "scaleJob"})
    assert status == 200
    b.signal(signal.SIGTERM)
    # b leaves the fleet at once; the lease its client still holds stays counted (its ghost, 10000
    # of the 100000 tokens per minute), so a gets the rest of the capacity at once, and all of it
    # once that lease is released.
    converged([a], 9, timeout=1.0)
    wait_until(lambda: _unready(b), timeout=1.0)
    status, doc, headers = b.post("/api/jobs/acquire", {"jobType": "scaleJob"})
    assert status == 503 and "shutting down" in doc["error"] and headers["Retry-After"] == "1"
    status, doc, _ = b.post(f"/api/jobs/{lease['leaseId']}/release", {"actual": {"tokens": 100}})
    assert status == 200 and doc["released"] is True
    converged([a], 10, timeout=2.0)
    assert b.process.wait(10) == 0


def _unready(inst: Instance) -> bool:
    return http("GET", inst.url + "/ready")[0] == 503


@pytest.mark.timeout(60)
def test_graceful_leave_convergence_is_measured_under_a_second(fleet: Fleet) -> None:
    fleet.write_policy("converge", SCALE)
    instances = fleet.start(3)
    converged(instances, 3, timeout=1.0)
    start, sent = time.monotonic(), time.time()
    instances[2].process.send_signal(signal.SIGTERM)
    converged(instances[:2], 5, timeout=1.0)
    assert time.monotonic() - start < 1.0
    # Each survivor says when it applied the leave's record (what the e2e suite times changes by).
    epochs = set()
    for i in instances[:2]:
        doc = i.allocation()
        assert sent <= doc["epochAppliedAt"] <= time.time(), doc["epochAppliedAt"]
        epochs.add(doc["epoch"])
    assert len(epochs) == 1
