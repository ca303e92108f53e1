"""What a limiter instance's /metrics says after real use: admissions, refusals by reason, lease
waits, memory, window budgets, Redis round trips and credit decisions (docs/metrics.md)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from limiter.core.admission import NotReady
from limiter.core.policy import PolicySpec
from limiter.core.stats import WAIT_BUCKETS, Histogram
from limiter.fleet.instance import LimiterInstance
from limiter.fleet.settings import ServeSettings
from limiter.redis.fleetstore import RedisStore
from limiter.web.metrics import InstanceCollector
from tests.metrics.conftest import MODEL
from tests.metrics.promql import samples, value
from tests.support.fleet import Fleet, Instance
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for_fresh_minute, wait_until

pytestmark = pytest.mark.redis


@pytest.mark.parametrize(
    "observed, counts",
    [
        ([], [0] * 17),
        ([0.0], [1] * 17),  # an immediate grant falls in the first bucket
        ([0.001, 0.002], [1, 2, *[2] * 15]),  # a bound is inclusive (le)
        ([301.0], [*[0] * 16, 1]),  # beyond the last bound: only +Inf
    ],
)
def test_histogram_buckets_are_cumulative(observed: list[float], counts: list[int]) -> None:
    h = Histogram(WAIT_BUCKETS)
    for seconds in observed:
        h.observe(seconds)
    rows = h.cumulative()
    assert [n for _, n in rows] == counts
    assert rows[-1][0] == "+Inf" and (h.count, h.total) == (len(observed), sum(observed))


def test_admissions_refusals_and_waits_per_job_type(limiter_scrape: str, used_instance: Instance) -> None:
    text = limiter_scrape
    batch_slots = used_instance.allocation()["slotsByJobTypeAndModel"]["batch"][MODEL]["slots"]
    # chat: two leases over the lease API and one proxied request; batch: its slots filled.
    assert value(text, "fleet_limiter_admissions_total", job_type="chat", model=MODEL) == 3
    assert value(text, "fleet_limiter_admissions_total", job_type="batch", model=MODEL) == batch_slots
    # Both refusals of batch (one at once, one after its wait) are its full slots.
    assert value(text, "fleet_limiter_refusals_total", job_type="batch", reason="parallel_limit") == 2
    assert value(text, "fleet_limiter_refusals_total", job_type="batch", reason="queue_full") == 0
    assert value(text, "fleet_limiter_refusals_total", job_type="", reason="invalid") == 1  # unknown type
    # Waits: every grant, and the wait that timed out (0.3 s); refusals at once are not waits.
    assert value(text, "fleet_limiter_acquire_wait_seconds_count", job_type="chat") == 3
    assert value(text, "fleet_limiter_acquire_wait_seconds_count", job_type="batch") == batch_slots + 1
    assert 0.3 <= value(text, "fleet_limiter_acquire_wait_seconds_sum", job_type="batch") < 5
    assert (
        value(text, "fleet_limiter_acquire_wait_seconds_bucket", job_type="batch", le="0.25") == batch_slots
    )
    assert (
        value(text, "fleet_limiter_acquire_wait_seconds_bucket", job_type="batch", le="+Inf")
        == batch_slots + 1
    )
    assert value(text, "fleet_limiter_in_flight", job_type="chat", model=MODEL) == 1
    assert value(text, "fleet_limiter_waiting", job_type="batch") == 0


def test_memory_budgets_redis_and_credits(limiter_scrape: str) -> None:
    text = limiter_scrape
    assert value(text, "fleet_limiter_memory_budget_bytes") == 64 * 1024 * 1024
    in_flight = sum(v for (name, _), v in samples(text).items() if name == "fleet_limiter_in_flight")
    assert value(text, "fleet_limiter_memory_reserved_bytes") == in_flight * 1024 * 1024
    assert value(text, "fleet_limiter_budget_limit", model=MODEL, limit="tokensPerMinute") == 100000
    held = value(text, "fleet_limiter_budget_held", model=MODEL, limit="tokensPerMinute")
    used = value(text, "fleet_limiter_budget_held_used", model=MODEL, limit="tokensPerMinute")
    remaining = value(text, "fleet_limiter_budget_held_remaining", model=MODEL, limit="tokensPerMinute")
    assert 0 < used <= held <= 100000 and remaining == held - used
    assert value(text, "fleet_limiter_redis_call_duration_seconds_count") >= 2  # register, draws, ...
    assert value(text, "fleet_limiter_redis_calls_total") >= value(
        text, "fleet_limiter_redis_call_duration_seconds_count"
    )
    assert value(text, "fleet_limiter_redis_errors_total") == 0
    assert value(text, "fleet_limiter_ready") == 1
    # One consume allowed, one refused; the proxied request reserved on the key and settled.
    assert value(text, "fleet_limiter_credits_decisions_total", operation="consume", outcome="allowed") == 1
    assert value(text, "fleet_limiter_credits_decisions_total", operation="consume", outcome="refused") == 1
    assert value(text, "fleet_limiter_credits_decisions_total", operation="reserve", outcome="allowed") == 1
    assert value(text, "fleet_limiter_credits_charged_total") == 10 + 18  # the consume + the answer's usage
    info = [labels for (name, labels) in samples(text) if name == "fleet_limiter_instance_info"]
    assert [dict(i)["policy_name"] for i in info] == ["metrics"]


def _queue_policy() -> dict[str, Any]:
    return {
        "models": [{"name": "m", "limits": {"tokensPerMinute": 1000}}],
        "jobTypes": [
            {"name": "only", "ratio": 1.0, "estimate": {"tokens": 600}, "queue": {"maxWaiting": 1}},
        ],
    }


@pytest.mark.timeout(60)
def test_refusal_reasons_queue_full_and_budget(fleet: Fleet, redis_server: RedisServer) -> None:
    fleet.write_policy("metrics-reasons", _queue_policy())
    (inst,) = fleet.start(1)
    # One slot (1000 TPM / 600 tokens). Windows are UTC minutes: keep the test inside one.
    wait_for_fresh_minute(redis_server, 15)
    status, lease, _ = inst.post("/api/jobs/acquire", {"jobType": "only", "waitSeconds": 5})
    assert status == 200
    answers: list[int] = []
    waiter = threading.Thread(
        target=lambda: answers.append(
            inst.post("/api/jobs/acquire", {"jobType": "only", "waitSeconds": 3})[0]
        )
    )
    waiter.start()
    wait_until(lambda: inst.allocation()["jobTypes"]["only"]["waiting"] == 1, timeout=5)
    assert inst.post("/api/jobs/acquire", {"jobType": "only", "waitSeconds": 3})[0] == 503  # queue full
    # The slot comes back, but 600 of the window's 1000 tokens are spent: the waiter now waits for
    # budget, not for a slot, and its wait ends as a budget refusal.
    assert inst.post(f"/api/jobs/{lease['leaseId']}/release", {"actual": {"tokens": 600}})[0] == 200
    waiter.join(10)
    assert answers == [503]
    text = inst.get("/metrics")
    assert value(text, "fleet_limiter_refusals_total", job_type="only", reason="queue_full") == 1
    assert value(text, "fleet_limiter_refusals_total", job_type="only", reason="window_spent") == 1
    assert value(text, "fleet_limiter_refusals_total", job_type="only", reason="parallel_limit") == 0
    assert value(text, "fleet_limiter_admissions_total", job_type="only", model="m") == 1
    assert 3 <= value(text, "fleet_limiter_acquire_wait_seconds_sum", job_type="only") < 10


async def test_not_ready_is_a_refusal_and_an_unjoined_instance_still_renders() -> None:
    spec = PolicySpec.model_validate(_queue_policy())
    store = RedisStore.from_url("redis://127.0.0.1:9/0", "tests", "unjoined")
    try:
        inst = LimiterInstance(ServeSettings(instance_id="unjoined"), store, spec)
        with pytest.raises(NotReady):
            await inst.acquire("only")
        assert inst.acquires.refusals == {("", "not_ready"): 1}  # no policy installed yet: no job types
        registry = CollectorRegistry(auto_describe=False)
        registry.register(InstanceCollector(inst))
        text = generate_latest(registry).decode()
        assert value(text, "fleet_limiter_ready") == 0 and value(text, "fleet_limiter_redis_up") == 0
        assert "fleet_limiter_slots" not in text
    finally:
        await store.close()
