"""Scenario 8: the fleets' Redis goes down and comes back empty (a new Redis pod, or a restart without
persistence). The pods turn unready and the policy's status shows the outage; when Redis answers
again, the pods register again, the operator projects the policy again, the status heals and jobs
run, all without restarting a pod."""

from __future__ import annotations

import time
from contextlib import ExitStack

import pytest

from tests.e2e.env import E2E, MIXED, FleetPolicies, planned, spec
from tests.e2e.record import ScenarioRecord

pytestmark = pytest.mark.e2e

#: Seconds Redis stays down at least: long enough for the operator's 1 s status refresh to see it.
OUTAGE_S = 4


@pytest.mark.timeout(300)
def test_the_fleet_recovers_from_a_redis_restart(
    e2e: E2E, policies: FleetPolicies, record: ScenarioRecord
) -> None:
    s = spec(MIXED, replicas=2)
    with ExitStack() as cleanup, e2e.watch(policies, "mixed", record) as watch:
        policies.apply("mixed", s)
        pods = watch.wait_agreed(2, planned(s, 2), timeout=120)
        policies.wait_ready("mixed", timeout=60)
        before = policies.fingerprint("mixed")
        jobs = watch.jobs()
        first = [f.result(30) for f in [jobs.submit(p, "batch", hold=0.1) for p in pods * 3]]
        assert [j.state for j in first] == ["completed"] * 6

        record.step("Redis stops")
        down = time.time()
        e2e.redis.stop()
        # Whatever happens next, Redis comes back: the policy's deletion after the test needs it.
        restarted = False

        def restart() -> None:
            if not restarted:
                e2e.redis.start()

        cleanup.callback(restart)
        watch.wait("every pod unready", lambda: not watch.ready_pods(), timeout=30, interval=0.1)
        unready = time.time()
        obj = policies.wait_condition("mixed", "RedisUnavailable", "True", timeout=30)
        in_status = time.time()
        ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "RedisUnavailable")
        assert "instanceCount" not in obj["status"]
        row = policies.get_rlp_row("mixed")
        assert (row["READY"], row["INSTANCES"]) == ("False", ""), row
        time.sleep(max(0.0, OUTAGE_S - (time.time() - down)))

        record.step("Redis starts again, empty")
        e2e.redis.start()
        restarted = True
        up = time.time()
        watch.wait_agreed(2, planned(s, 2), timeout=60)
        agreed = time.time()
        obj = policies.wait_ready("mixed", timeout=60)
        healed = time.time()
        assert obj["status"]["instanceCount"] == 2
        assert policies.redis_policy("mixed")[0] == obj["metadata"]["generation"]
        after = [f.result(30) for f in [jobs.submit(p, "batch", hold=0.1) for p in pods * 3]]

    assert [j.state for j in after] == ["completed"] * 6, [j.error for j in after]
    assert policies.fingerprint("mixed") == before, "a Redis outage must not restart or replace pods"
    record.figure("down_to_pods_unready_s", round(unready - down, 3))
    record.figure("down_to_status_s", round(in_status - down, 3))
    record.figure("up_to_fleet_agreed_s", round(agreed - up, 3))
    record.figure(
        "up_to_status_ready_s", round(healed - up, 3),
        headline=f"outage in status after {in_status - down:.1f} s; fleet back {agreed - up:.1f} s "
        f"after Redis, status {healed - up:.1f} s",
    )  # fmt: skip
