"""What a running instance's clients hold reaches Redis at once when it rises, not at the next
heartbeat: were the instance to vanish then, its ghost would count those leases (docs/fleet.md)."""

from __future__ import annotations

import json

import pytest
import redis

from limiter.redis.keys import PolicyKeys
from tests.support.fleet import Fleet
from tests.support.waiting import wait_until

POLICY = {
    "models": [{"name": "m", "limits": {"maxConcurrentRequests": 10}}],
    "jobTypes": [{"name": "a", "ratio": 1}],
    # Heartbeats far apart: a report within a second of the grants is the rise, not a heartbeat.
    "instance": {"heartbeatSeconds": 8, "instanceTimeoutSeconds": 20, "leaseTimeoutSeconds": 30},
}


@pytest.mark.timeout(60)
def test_a_rise_in_leases_is_reported_before_the_next_heartbeat(fleet: Fleet) -> None:
    fleet.write_policy("reports", POLICY)
    (a,) = fleet.start(1)
    keys = PolicyKeys("tests", "reports")
    client = redis.Redis.from_url(fleet.redis_url)
    try:

        def reported() -> dict | None:
            raw = client.hget(keys.lease_reports, a.id)
            return json.loads(raw) if raw else None

        leases = [a.post("/api/jobs/acquire", {"jobType": "a"})[1]["leaseId"] for _ in range(3)]
        doc = wait_until(lambda: (r := reported()) and r["models"]["m"]["leases"] == 3 and r, timeout=2)
        assert doc["models"]["m"] == {"leases": 3, "tokens": 0, "requests": 3}
        for lease in leases:
            assert a.post(f"/api/jobs/{lease}/release", {})[0] == 200
        # Falling is reported with the next heartbeat only: until then the report counts too many.
        wait_until(lambda: reported() is None, timeout=12)
    finally:
        client.close()
