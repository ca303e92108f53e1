"""Every limit used to the last unit, never more: at exactly 1x the offered load of a per-minute
limit, with clients that refuse to wait, three instances admit the whole limit; at 3x they admit
exactly the limit in every UTC minute (counted per minute by the time of each admission)."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.fleet import Fleet, Instance
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for_fresh_minute, wait_until

LIMIT = 120
POLICY = {
    "models": [{"name": "m", "limits": {"requestsPerMinute": LIMIT}}],
    "jobTypes": [{"name": "a", "ratio": 1, "estimate": {"requests": 1}}],
}


def offer(instances: list[Instance], n: int, seconds: float) -> Counter[int]:
    """``n`` refuse-at-once jobs spread evenly over ``seconds`` and round-robin over the instances;
    returns the admissions per UTC minute (by this machine's clock, which is Redis's here)."""
    started = time.monotonic()

    def one(i: int) -> int | None:
        time.sleep(max(0.0, started + i * seconds / n - time.monotonic()))
        inst = instances[i % len(instances)]
        status, lease, _ = inst.post("/api/jobs/acquire", {"jobType": "a", "waitSeconds": 0})
        if status != 200:
            return None
        minute = int(time.time() // 60)
        status, doc, _ = inst.post(f"/api/jobs/{lease['leaseId']}/release", {"actual": {"requests": 1}})
        assert status == 200, doc
        return minute

    with ThreadPoolExecutor(max_workers=n) as pool:
        return Counter(m for m in pool.map(one, range(n)) if m is not None)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("load", [1, 3])
def test_exactly_the_limit_is_admitted_at_1x_and_never_more_at_3x(
    fresh_fleet: Fleet, fresh_redis_server: RedisServer, load: int
) -> None:
    fresh_fleet.write_policy(f"exact-{load}", POLICY)
    instances = fresh_fleet.start(3)
    wait_until(lambda: all(i.allocation()["allocation"]["instanceCount"] == 3 for i in instances), timeout=5)
    wait_for_fresh_minute(fresh_redis_server, need_seconds=30)
    per_minute = offer(instances, LIMIT * load, seconds=15)
    print(f"load {load}x: admitted per minute {dict(per_minute)} of {LIMIT}")
    assert all(n <= LIMIT for n in per_minute.values()), per_minute  # never more, in any minute
    assert len(per_minute) == 1 and sum(per_minute.values()) == LIMIT, per_minute  # and all of it
