"""Refusals that explain themselves and rate-limit headers on the lease API, over plain HTTP (aiohttp,
as curl would see it) against a real `fleet-limiter serve` and a real Redis."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest

from tests.support.fleet import Fleet, Instance
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for_fresh_minute

#: OpenAI's reset durations: 20ms, 1s, 12.5s, 6m0s.
DURATION = re.compile(r"^(?:(\d+)m)?(\d+(?:\.\d+)?)(ms|s)$")


def seconds_of(duration: str) -> float:
    match = DURATION.match(duration)
    assert match is not None, duration
    minutes, value, unit = match.groups()
    return int(minutes or 0) * 60 + float(value) / (1000 if unit == "ms" else 1)


async def acquire(inst: Instance, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(inst.url + "/api/jobs/acquire", json=body) as resp,
    ):
        return resp.status, await resp.json(), dict(resp.headers)


def policy(limits: dict[str, int], max_waiting: int = 1) -> dict[str, Any]:
    return {
        "models": [{"name": "m", "limits": limits}],
        "jobTypes": [
            {
                "name": "only",
                "ratio": 1.0,
                "estimate": {"tokens": 300, "requests": 1},
                "queue": {"maxWaiting": max_waiting, "maxWaitSeconds": 30},
            }
        ],
    }


@pytest.mark.timeout(90)
async def test_grants_carry_rate_limit_headers_and_a_spent_window_says_when_it_resets(
    fleet: Fleet, redis_server: RedisServer
) -> None:
    fleet.write_policy("refusals-window", policy({"tokensPerMinute": 1000, "requestsPerMinute": 50}))
    (inst,) = fleet.start(1)
    wait_for_fresh_minute(redis_server, 20)
    status, lease, headers = await acquire(inst, {"jobType": "only", "waitSeconds": 5})
    assert status == 200, lease
    # This instance's view of the fleet's minute: the 300 tokens and 1 request it reserved are gone.
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "700"
    assert headers["x-ratelimit-limit-requests"] == "50"
    assert headers["x-ratelimit-remaining-requests"] == "49"
    reset = seconds_of(headers["x-ratelimit-reset-tokens"])
    assert 0 < reset <= 60 and seconds_of(headers["x-ratelimit-reset-requests"]) <= 60
    assert headers["RateLimit-Policy"] == '"rpm";q=50;w=60, "tpm";q=1000;w=60;qu="tokens"'
    state = re.fullmatch(r'"rpm";r=49;t=(\d+), "tpm";r=700;t=(\d+)', headers["RateLimit"])
    assert state is not None and 0 <= int(state.group(2)) <= 60
    # One slot of 1000/300 = 3; take the other two: 900 of the minute's 1000 tokens are reserved.
    for _ in range(2):
        assert (await acquire(inst, {"jobType": "only", "waitSeconds": 5}))[0] == 200
    inst.post(f"/api/jobs/{lease['leaseId']}/release", {"actual": {"tokens": 300}})
    status, doc, headers = await acquire(inst, {"jobType": "only", "waitSeconds": 1})
    assert status == 503, doc
    assert doc["reason"] == "window_spent"
    assert doc["limit"] == {
        "name": "tokensPerMinute",
        "model": "m",
        "dimension": "tokens",
        "window": "minute",
        "value": 1000,
    }
    # Retry-After is the minute's end (the test runs inside one minute), the same in body and header.
    assert doc["retryAfterSeconds"] == int(headers["Retry-After"])
    assert 1 <= doc["retryAfterSeconds"] <= 60
    assert "all models rejected" in doc["error"] and "tokensPerMinute" in doc["error"]
    assert int(headers["retry-after-ms"]) <= doc["retryAfterSeconds"] * 1000
    metrics = inst.get("/metrics")
    assert 'fleet_limiter_refusals_total{job_type="only",reason="window_spent"} 1.0' in metrics


@pytest.mark.timeout(90)
async def test_queue_full_and_parallel_limit_name_their_limit(fleet: Fleet) -> None:
    fleet.write_policy("refusals-slots", policy({"maxConcurrentRequests": 1}, max_waiting=1))
    (inst,) = fleet.start(1)
    status, lease, headers = await acquire(inst, {"jobType": "only"})
    assert status == 200
    # No minute limit: no rate-limit headers at all.
    assert not [h for h in headers if h.lower().startswith(("x-ratelimit-", "ratelimit"))]
    status, doc, headers = await acquire(inst, {"jobType": "only", "waitSeconds": 0})
    assert status == 503 and doc["reason"] == "parallel_limit", doc
    assert doc["limit"] == {"name": "slots", "model": "m", "jobType": "only", "value": 1}
    assert doc["retryAfterSeconds"] == int(headers["Retry-After"]) >= 1
    inst.post(f"/api/jobs/{lease['leaseId']}/release", {})


@pytest.mark.timeout(90)
async def test_a_full_queue_gives_the_position_and_the_drain_time(fleet: Fleet) -> None:
    fleet.write_policy("refusals-queue", policy({"maxConcurrentRequests": 1}, max_waiting=1))
    (inst,) = fleet.start(1)
    status, lease, _ = await acquire(inst, {"jobType": "only"})
    assert status == 200
    waiter = asyncio.ensure_future(acquire(inst, {"jobType": "only", "waitSeconds": 20}))
    for _ in range(100):
        if inst.allocation()["jobTypes"]["only"]["waiting"] == 1:
            break
        await asyncio.sleep(0.05)
    status, doc, headers = await acquire(inst, {"jobType": "only", "waitSeconds": 5})
    assert status == 503 and doc["reason"] == "queue_full", doc
    assert doc["limit"] == {"name": "maxWaiting", "jobType": "only", "value": 1}
    assert doc["position"] == 2
    assert doc["estimatedStartSeconds"] >= 0 and doc["retryAfterSeconds"] == int(headers["Retry-After"])
    inst.post(f"/api/jobs/{lease['leaseId']}/release", {})
    status, granted, _ = await waiter
    assert status == 200, granted
