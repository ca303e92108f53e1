"""Shadow mode on real `fleet-limiter serve` processes and a real Redis: everything is admitted,
would-be refusals are counted by reason (debug allocation, metrics, the fleet's totals in Redis),
and switching to enforce by a new generation refuses again, without a restart."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from limiter.redis.fleetstore import RedisStore
from tests.support.fleet import Fleet, Instance
from tests.support.http import http
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for_fresh_minute, wait_until

SPEC: dict[str, Any] = {
    "mode": "shadow",
    "models": [
        {"name": "c", "limits": {"maxConcurrentRequests": 2}},
        {"name": "t", "limits": {"tokensPerMinute": 1000}},
    ],
    "jobTypes": [{"name": "A", "ratio": 1, "estimate": {"tokens": 100}, "queue": {"maxWaiting": 1}}],
    "instance": {"heartbeatSeconds": 0.2, "instanceTimeoutSeconds": 2},
}
TOTALS = {"parallel_limit": 2, "window_spent": 1}


def acquire(inst: Instance, model: str, tokens: int = 100) -> tuple[int, Any]:
    status, doc, _ = inst.post(
        "/api/jobs/acquire",
        {"jobType": "A", "models": [model], "estimate": {"tokens": tokens}, "waitSeconds": 0},
    )
    return status, doc


def release(inst: Instance, lease: str, tokens: int) -> None:
    status, doc, _ = inst.post(f"/api/jobs/{lease}/release", {"actual": {"tokens": tokens}})
    assert status == 200, doc


def in_flight(inst: Instance) -> int:
    return sum(j["inFlight"] for j in inst.allocation()["jobTypes"].values())


def metric(inst: Instance, model: str, reason: str) -> float:
    _, text, _ = http("GET", inst.url + "/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "fleet_limiter_shadow_refusals_total" and sample.labels == {
                "model": model,
                "job_type": "A",
                "reason": reason,
            }:
                return float(sample.value)
    raise AssertionError(f"no shadow series for {model} {reason}")


def refused(answer: tuple[int, Any], reason: str) -> bool:
    status, doc = answer
    return status == 503 and doc.get("reason", reason) == reason


async def fleet_totals(store: RedisStore, want: dict[str, int]) -> dict[str, int]:
    """The fleet's totals in Redis once they equal ``want`` (they arrive with a heartbeat), or as
    they are after 5 s."""
    totals: dict[str, int] = {}
    for _ in range(50):
        totals = await store.shadow_counts()
        if totals == want:
            break
        await asyncio.sleep(0.1)
    return totals


@pytest.mark.timeout(90)
async def test_shadow_admits_past_the_limits_counts_why_and_enforce_refuses_again(
    fleet: Fleet, redis_server: RedisServer
) -> None:
    fleet.write_policy("shadow", SPEC)
    (inst,) = fleet.start(1)
    doc = inst.allocation()
    assert (doc["mode"], doc["modes"], doc["wouldRefuse"]) == ("shadow", {"c": "shadow", "t": "shadow"}, {})
    assert metric(inst, "c", "parallel_limit") == 0  # the series exist from the start
    wait_for_fresh_minute(redis_server, 40)  # the token budget part stays inside one UTC minute

    # maxConcurrentRequests 2: four leases held at once, two of them beyond the limit.
    held = [acquire(inst, "c") for _ in range(4)]
    assert [s for s, _ in held] == [200] * 4, held
    assert in_flight(inst) == 4
    assert inst.allocation()["wouldRefuse"] == {"c": {"parallel_limit": 2}}
    for _, lease in held:
        release(inst, lease["leaseId"], 100)

    # tokensPerMinute 1000: two jobs of 400 fit, the third would have waited for the next minute.
    for _ in range(3):
        status, lease = acquire(inst, "t", tokens=400)
        assert status == 200, lease
        release(inst, lease["leaseId"], 400)
    assert inst.allocation()["wouldRefuse"] == {"c": {"parallel_limit": 2}, "t": {"window_spent": 1}}
    assert (metric(inst, "c", "parallel_limit"), metric(inst, "t", "window_spent")) == (2, 1)

    async with RedisStore.from_url(redis_server.url, "tests", "shadow") as store:
        assert await fleet_totals(store, TOTALS) == TOTALS  # what the operator's status shows

        # Enforce, live: a new generation in Redis (as the operator projects a policy update).
        enforce = {**SPEC, "mode": "enforce"}
        generation = inst.allocation()["generation"]
        assert await store.project_policy(enforce, generation + 1)
        wait_until(lambda: inst.allocation()["mode"] == "enforce", timeout=5, what="the enforce generation")
        # The minute's budget is spent (shadow charged what it admitted): refused now.
        assert refused(acquire(inst, "t", tokens=400), "window_spent")
        held = [acquire(inst, "c") for _ in range(2)]
        assert [s for s, _ in held] == [200, 200], held
        assert refused(acquire(inst, "c"), "parallel_limit")
        for _, lease in held:
            release(inst, lease["leaseId"], 100)
        # Nothing counted while enforcing, nothing stuck, the same process all along.
        assert inst.allocation()["wouldRefuse"] == {"c": {"parallel_limit": 2}, "t": {"window_spent": 1}}
        assert in_flight(inst) == 0
        assert inst.process.poll() is None and generation + 1 == inst.allocation()["generation"]

        # And back to shadow, live.
        assert await store.project_policy(SPEC, generation + 2)
        wait_until(lambda: inst.allocation()["mode"] == "shadow", timeout=5, what="the shadow generation")
        status, lease = acquire(inst, "t", tokens=400)
        assert status == 200, lease
        assert inst.allocation()["wouldRefuse"]["t"] == {"window_spent": 2}
        want = {**TOTALS, "window_spent": 2}
        assert await fleet_totals(store, want) == want


@pytest.mark.timeout(60)
def test_one_model_in_shadow_leaves_the_others_enforced(fleet: Fleet) -> None:
    spec = copy.deepcopy(SPEC)
    spec["mode"] = "enforce"
    spec["models"] = [
        {"name": "m", "limits": {"maxConcurrentRequests": 1}, "mode": "shadow"},
        {"name": "e", "limits": {"maxConcurrentRequests": 1}},
    ]
    fleet.write_policy("shadow-one", spec)
    (inst,) = fleet.start(1)
    assert inst.allocation()["modes"] == {"m": "shadow", "e": "enforce"}
    on = {name: [inst.post("/api/jobs/acquire", {"jobType": "A", "models": [name], "waitSeconds": 0})[0]
                 for _ in range(2)] for name in ("m", "e")}  # fmt: skip
    assert on == {"m": [200, 200], "e": [200, 503]}
    assert inst.allocation()["wouldRefuse"] == {"m": {"parallel_limit": 1}}
    # Bad input is still refused in shadow.
    assert inst.post("/api/jobs/acquire", {"jobType": "nope", "models": ["m"]})[0] == 404
    assert inst.post("/api/jobs/acquire", {"jobType": "A", "waitSeconds": "soon"})[0] == 400
