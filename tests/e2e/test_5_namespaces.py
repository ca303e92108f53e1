"""Scenario 5: two policies of the same name, with the same model names, in two namespaces share
nothing: not the instance count, not the window budgets, not a Redis key."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.e2e.env import E2E, FleetPolicies, planned, slots_of, spec
from tests.e2e.record import ScenarioRecord

pytestmark = pytest.mark.e2e

#: Two models by the same names in both namespaces; 10K-token jobs.
SHARED_NAMES = {
    "models": [
        {"name": "model-alpha", "limits": {"tokensPerMinute": 100000}},
        {"name": "model-beta", "limits": {"tokensPerMinute": 50000}},
    ],
    "jobTypes": [{"name": "A", "ratio": 1, "estimate": {"tokens": 10000}}],
    "instance": {"heartbeatSeconds": 1, "instanceTimeoutSeconds": 5},
}


def redis_time(e2e: E2E) -> float:
    """Redis's clock, which aligns the minute windows of the budgets."""
    client = e2e.redis_client()
    try:
        secs, micros = client.time()
    finally:
        client.close()
    return secs + micros / 1e6


def fresh_minute(e2e: E2E, need: float = 15) -> int:
    """The current UTC minute by Redis's clock, once at least ``need`` seconds of it are left (a
    budget check must not cross into the next window, which renews every budget)."""
    now = redis_time(e2e)
    left = 60 - now % 60
    if left < need:
        time.sleep(left + 0.2)
        now = redis_time(e2e)
    return int(now // 60)


@pytest.mark.timeout(240)
def test_two_namespaces_share_no_capacity_and_no_key(
    e2e: E2E, new_namespace: Callable[[], FleetPolicies], record: ScenarioRecord
) -> None:
    a, b = new_namespace(), new_namespace()
    with e2e.watch(a, "chat", record) as wa, e2e.watch(b, "chat", record) as wb:
        record.step(f"policy chat in {a.namespace} (2 pods) and in {b.namespace} (1 pod)")
        a.apply("chat", spec(SHARED_NAMES, replicas=2))
        b.apply("chat", spec(SHARED_NAMES, replicas=1))
        pods_a = wa.wait_agreed(2, planned(SHARED_NAMES, 2), timeout=120)
        (pod_b,) = wb.wait_agreed(1, planned(SHARED_NAMES, 1), timeout=120)
        # Each fleet divides by its own pods only.
        assert slots_of(wa.views()[pods_a[0].name].doc, "A") == 5
        assert slots_of(wb.views()[pod_b.name].doc, "A") == 10

        jobs_a, jobs_b = wa.jobs(), wb.jobs()
        alpha = ["model-alpha"]
        minute = fresh_minute(e2e)
        record.step(f"spend {a.namespace}'s model-alpha minute: 10 jobs of 10K tokens, then an 11th")
        spent = [
            f.result(30)
            for f in [
                jobs_a.submit(pods_a[i % 2], "A", hold=0.05, tokens=10000, models=alpha, wait=5)
                for i in range(10)
            ]
        ]
        refused = jobs_a.submit(pods_a[0], "A", hold=0.05, tokens=10000, models=alpha, wait=1).result(30)
        record.step(f"{b.namespace} runs its own 10 jobs on model-alpha")
        t0 = time.time()
        other = [
            f.result(30)
            for f in [
                jobs_b.submit(pod_b, "A", hold=0.05, tokens=10000, models=alpha, wait=5) for _ in range(10)
            ]
        ]
        b_seconds = time.time() - t0
        assert redis_time(e2e) // 60 == minute, "the check crossed a minute boundary (it took over 15 s)"

    assert [j.state for j in spent] == ["completed"] * 10, [j.error for j in spent]
    assert refused.state == "refused", f"{a.namespace} admitted an 11th 10K job in a 100K minute: {refused}"
    assert [j.state for j in other] == ["completed"] * 10, [j.error for j in other]
    record.figure("b_ten_jobs_s", round(b_seconds, 3))
    assert max(j.started - j.queued for j in other if j.started) < 1, "b waited for a's spent budget"

    # Redis: every key of each policy carries its own hash tag; no key in common; separate counters.
    keys_a, keys_b = a.redis_keys("chat"), b.redis_keys("chat")
    tag_a, tag_b = f"{{{a.namespace}/chat}}", f"{{{b.namespace}/chat}}"
    assert keys_a and keys_b and not set(keys_a) & set(keys_b)
    assert all(tag_a in k for k in keys_a) and all(tag_b in k for k in keys_b)
    client = e2e.redis_client()
    try:
        everything = sorted(k.decode() for k in client.scan_iter(match="fl:*", count=1000))
        budget = {
            ns: int(client.hget(f"fl:{{{ns}/chat}}:budget:tokensPerMinute:model-alpha", "used") or 0)
            for ns in (a.namespace, b.namespace)
        }
    finally:
        client.close()
    mine = [k for k in everything if tag_a in k or tag_b in k]
    assert sorted(keys_a + keys_b) == mine
    record.figure("keys", {"a": keys_a, "b": keys_b})
    record.figure("tokens_per_minute_used", budget, headline=f"{len(keys_a)}+{len(keys_b)} keys, none shared")
    assert budget == {a.namespace: 100000, b.namespace: 100000}
