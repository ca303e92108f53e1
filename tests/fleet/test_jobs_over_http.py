"""Jobs acquired and released over HTTP on real instances: isolation, borrowing, local ratios,
fleet-wide window budgets, Redis restarts and bad input."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

import pytest

from tests.support.fleet import Fleet, Instance
from tests.support.http import http
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for_fresh_minute, wait_until

FIXED = {
    "models": [{"name": "test-model", "limits": {"tokensPerMinute": 1000000, "maxConcurrentRequests": 20}}],
    "jobTypes": [
        {"name": "fixedJobType", "ratio": 0.4, "flexible": False, "estimate": {"tokens": 1000}},
        {"name": "flexibleJobTypeA", "ratio": 0.3, "estimate": {"tokens": 1000}},
        {"name": "flexibleJobTypeB", "ratio": 0.3, "estimate": {"tokens": 1000}},
    ],
}


def acquire(inst: Instance, job: str, wait: float = 0.0) -> tuple[int, Any]:
    status, doc, _ = inst.post("/api/jobs/acquire", {"jobType": job, "waitSeconds": wait})
    return status, doc


def release(inst: Instance, lease: dict[str, Any], tokens: int | None = None) -> None:
    body = {"actual": {"tokens": tokens}} if tokens is not None else {}
    status, doc, _ = inst.post(f"/api/jobs/{lease['leaseId']}/release", body)
    assert status == 200, doc


@pytest.mark.timeout(60)
def test_fixed_isolation_flexible_borrowing_and_local_ratios(fleet: Fleet) -> None:
    fleet.write_policy("isolation", FIXED)
    a, b = fleet.start(2)
    wait_until(lambda: a.allocation()["allocation"]["instanceCount"] == 2, timeout=1)
    # 2 instances: 10 concurrent each; fixed 4, flexible 3 + 3.
    assert a.slots("fixedJobType", "test-model") == 4
    baseline_b = b.allocation()["slotsByJobTypeAndModel"]
    # Overload A's flexible type on instance a: it borrows B's idle 3 slots, never the fixed 4.
    leases = [acquire(a, "flexibleJobTypeA") for _ in range(8)]
    granted = [doc for status, doc in leases if status == 200]
    assert len(granted) == 6 and sum(d["borrowed"] for d in granted) == 3
    assert all(status == 503 for status, _ in leases[6:])
    jobs = a.allocation()["jobTypes"]
    assert jobs["flexibleJobTypeA"]["currentRatio"] == 0.6 and jobs["flexibleJobTypeA"]["initialRatio"] == 0.3
    assert jobs["fixedJobType"]["currentRatio"] == 0.4
    fixed = [acquire(a, "fixedJobType") for _ in range(4)]
    assert all(status == 200 for status, _ in fixed)
    assert acquire(a, "fixedJobType")[0] == 503
    # Ratios are local: instance b is untouched by a's load.
    assert b.allocation()["slotsByJobTypeAndModel"] == baseline_b
    b_jobs = b.allocation()["jobTypes"]
    assert b_jobs["flexibleJobTypeB"]["currentRatio"] == 0.3 and b_jobs["flexibleJobTypeA"]["inFlight"] == 0
    assert all(acquire(b, "flexibleJobTypeB")[0] == 200 for _ in range(6))
    # Lent slots come back as borrowed jobs end.
    for doc in granted:
        release(a, doc)
    assert a.allocation()["jobTypes"]["flexibleJobTypeB"]["allocatedSlots"] == 3


@pytest.mark.timeout(60)
def test_waiting_jobs_get_slots_as_others_release(fleet: Fleet) -> None:
    fleet.write_policy(
        "queueing",
        {
            **FIXED,
            "models": [{"name": "test-model", "limits": {"maxConcurrentRequests": 2}}],
            "jobTypes": [{"name": "only", "ratio": 1.0}],
        },
    )
    (a,) = fleet.start(1)
    held = [acquire(a, "only")[1] for _ in range(2)]
    with ThreadPoolExecutor(4) as pool:
        waiting = [pool.submit(acquire, a, "only", 10) for _ in range(4)]
        wait_until(lambda: a.allocation()["jobTypes"]["only"]["waiting"] == 4, 5, what="four waiting jobs")
        for lease in held:
            release(a, lease)
        # Two waiters get the two freed slots (which two depends on the threads' arrival order).
        first = wait_two(waiting)
        for fut in first:
            status, doc = fut.result()
            assert status == 200
            release(a, doc)
        assert all(f.result(5)[0] == 200 for f in waiting)


def wait_two(futures: list[Future[tuple[int, Any]]]) -> list[Future[tuple[int, Any]]]:
    """The first two futures to complete."""
    done: list[Future[tuple[int, Any]]] = []
    for fut in as_completed(futures, timeout=5):
        done.append(fut)
        if len(done) == 2:
            return done
    return done


@pytest.mark.timeout(60)
def test_concurrent_no_wait_acquires_all_get_a_budget_draw(fleet: Fleet) -> None:
    """Jobs that ask not to wait still wait for the one budget draw a fresh window needs, also
    when they queue behind each other while it is in flight."""
    limits = {"tokensPerMinute": 10**9, "maxConcurrentRequests": 100}
    jobs = [{"name": "only", "ratio": 1.0, "estimate": {"tokens": 100}}]
    fleet.write_policy("no-wait", {"models": [{"name": "m", "limits": limits}], "jobTypes": jobs})
    (a,) = fleet.start(1)
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: acquire(a, "only", 0), range(40)))
    assert [status for status, _ in results].count(200) == 40, [d for s, d in results if s != 200][:3]


BUDGET = {
    "models": [{"name": "budget-model", "limits": {"tokensPerMinute": 100000}}],
    "jobTypes": [{"name": "job", "ratio": 1.0, "estimate": {"tokens": 10000}}],
    "instance": {"heartbeatSeconds": 0.5, "instanceTimeoutSeconds": 3},
}


def hammer(inst: Instance, seconds: float) -> int:
    """Acquire and release (actual = estimate) as fast as possible; return tokens admitted."""
    admitted = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status, doc = acquire(inst, "job", wait=0.2)
        if status == 200:
            admitted += doc["reserved"]["tokens"]
            release(inst, doc, tokens=doc["reserved"]["tokens"])
    return admitted


@pytest.mark.timeout(120)
def test_three_instances_never_admit_more_than_the_minute_limit(
    fleet: Fleet, redis_server: RedisServer
) -> None:
    fleet.write_policy("budget-three", BUDGET)
    instances = fleet.start(3)
    wait_for_fresh_minute(redis_server, 25)
    with ThreadPoolExecutor(6) as pool:
        totals = list(pool.map(lambda i: hammer(i, 8), instances * 2))
    assert sum(totals) == 100000  # the whole minute's budget, and not a token more


@pytest.mark.timeout(120)
def test_one_busy_instance_can_use_the_whole_minute(fleet: Fleet, redis_server: RedisServer) -> None:
    fleet.write_policy("budget-busy", BUDGET)
    busy, idle1, idle2 = fleet.start(3)
    wait_until(lambda: busy.allocation()["allocation"]["instanceCount"] == 3, timeout=1)
    wait_for_fresh_minute(redis_server, 25)
    # Slots: 3 per instance; the busy one cycles them and takes all ten 10K jobs of the minute.
    assert hammer(busy, 4) == 100000
    # The minute is spent fleet-wide: the busy instance and the idle ones all wait now.
    assert acquire(busy, "job")[0] == 503
    time.sleep(1.2)  # heartbeats pass; nothing was left to give back
    assert acquire(idle1, "job")[0] == 503
    assert acquire(idle2, "job")[0] == 503


@pytest.mark.timeout(120)
def test_refund_is_usable_in_the_same_window(fleet: Fleet, redis_server: RedisServer) -> None:
    fleet.write_policy("budget-refund", BUDGET)
    a, b = fleet.start(2)
    wait_for_fresh_minute(redis_server, 20)
    leases = []
    for _ in range(10):  # the whole minute, 5 slots per instance
        inst = a if len(leases) < 5 else b
        status, doc = acquire(inst, "job", wait=2)
        assert status == 200, doc
        leases.append((inst, doc))
    assert acquire(b, "job", wait=0.2)[0] == 503
    for inst, doc in leases[5:]:
        release(inst, doc, tokens=10000)  # b's slots free up, but its jobs used all they reserved
    assert acquire(b, "job", wait=1)[0] == 503  # slots free, the minute's budget is not
    inst, doc = leases[0]
    release(inst, doc, tokens=1000)  # 9000 tokens refunded
    # a holds the 9000 refunded tokens; b needs them for a 5000-token job: they flow to b within a
    # couple of heartbeats (a gives back what it did not spend).
    status, doc2, _ = b.post(
        "/api/jobs/acquire", {"jobType": "job", "estimate": {"tokens": 5000}, "waitSeconds": 3}
    )
    assert status == 200, doc2
    status, doc3, _ = b.post(
        "/api/jobs/acquire", {"jobType": "job", "estimate": {"tokens": 5000}, "waitSeconds": 1.5}
    )
    assert status == 503, doc3  # 4000 left in the fleet's minute: never more than the limit


@pytest.mark.timeout(120)
def test_redis_restart_with_data_loss_recovers(fresh_fleet: Fleet, fresh_redis_server: RedisServer) -> None:
    fresh_fleet.write_policy(
        "restart", {**BUDGET, "instance": {"heartbeatSeconds": 0.3, "instanceTimeoutSeconds": 2}}
    )
    a, b = fresh_fleet.start(2)
    wait_until(lambda: a.slots("job", "budget-model") == 5, timeout=1)
    fresh_redis_server.restart(flush=True)
    # Instances re-register, re-project the policy, and agree on the fleet again.
    wait_until(
        lambda: (
            a.allocation()["allocation"]["instanceCount"] == 2 and http("GET", a.url + "/ready")[0] == 200
        ),
        timeout=5,
    )
    wait_until(lambda: b.slots("job", "budget-model") == 5, timeout=5)
    # The window budgets are fenced until every instance has charged back what it drew of the
    # window (instanceTimeout + 2 heartbeats = 2.6 s, docs/fleet.md): a job that waits gets in.
    assert acquire(a, "job", wait=6)[0] == 200


@pytest.mark.timeout(60)
def test_redis_outage_turns_ready_false_and_heals(
    fresh_fleet: Fleet, fresh_redis_server: RedisServer
) -> None:
    fresh_fleet.write_policy(
        "outage", {**BUDGET, "instance": {"heartbeatSeconds": 0.3, "instanceTimeoutSeconds": 2}}
    )
    (a,) = fresh_fleet.start(1)
    status, held, _ = a.post("/api/jobs/acquire", {"jobType": "job"})
    assert status == 200
    fresh_redis_server.stop()
    wait_until(lambda: http("GET", a.url + "/ready")[0] == 503, timeout=3)
    health = a.get("/health")
    assert health["redis"]["connected"] is False and health["redis"]["error"]
    assert "fleet_limiter_redis_up 0.0" in http("GET", a.url + "/metrics")[1]
    # Work goes on only within what the instance already holds: the lease releases fine.
    release(a, held, tokens=10000)
    fresh_redis_server.start()
    wait_until(lambda: http("GET", a.url + "/ready")[0] == 200, timeout=5)


BAD = [
    (b"{not json", 400, "body: not valid JSON"),
    (b"[1, 2]", 400, "body: expected a JSON object"),
    (b"", 400, "body: a JSON object is required"),
    (b'{"jobType": 5}', 400, "jobType: 5 is not valid"),
    (b'{"jobType": "job", "waitSeconds": -1}', 400, "waitSeconds: -1 is not valid"),
    (b'{"jobType": "job", "estimate": {"tokens": -5}}', 400, "estimate.tokens: -5 is not valid"),
    (b'{"jobType": "job", "extra": 1}', 400, "extra: unknown field"),
    (b'{"jobType": "nope"}', 404, "unknown job type 'nope'"),
    (b'{"jobType": "job", "models": ["other"]}', 400, "may not use model 'other'"),
]


@pytest.mark.timeout(60)
def test_bad_input_gets_json_errors(fleet: Fleet) -> None:
    fleet.write_policy("bad-input", BUDGET)
    (a,) = fleet.start(1)
    for body, status, message in BAD:
        got, doc, headers = a.post("/api/jobs/acquire", body)
        assert got == status, (body, doc)
        assert message in doc["error"] and doc["status"] == status, (body, doc)
        assert headers["Content-Type"].startswith("application/json")
    got, doc, _ = a.post("/api/jobs/nope/release", {"actual": {"tokens": 1}})
    assert got == 404 and "unknown lease 'nope'" in doc["error"]
    status, lease = acquire(a, "job")
    got, doc, _ = a.post(f"/api/jobs/{lease['leaseId']}/release", {"actual": {"tokens": -1}})
    assert got == 400 and "actual.tokens: -1 is not valid" in doc["error"]
    got, doc, _ = a.post(f"/api/jobs/{lease['leaseId']}/release", {"actual": {"tokens": "many"}})
    assert got == 400 and "actual.tokens" in doc["error"]
    got, doc, _ = http("GET", a.url + "/no/such/route")
    assert got == 404 and doc["error"] == "no route GET /no/such/route"
    got, doc, _ = http("GET", a.url + "/api/jobs/acquire")
    assert got == 405 and "not allowed" in doc["error"]
