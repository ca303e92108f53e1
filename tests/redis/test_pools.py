"""The pools the Lua scripts compute equal the pure allocation exactly, for every instance count."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from limiter.core.allocation import compute_allocation
from limiter.core.policy import PolicySpec
from limiter.redis.fleetstore import RedisStore
from tests.redis.conftest import SPEC
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

_names = itertools.count()

LIMITS = st.fixed_dictionaries(
    {},
    optional={
        "tokensPerMinute": st.integers(1, 10**9),
        "requestsPerMinute": st.integers(1, 10**6),
        "tokensPerDay": st.integers(1, 10**12),
        "requestsPerDay": st.integers(1, 10**8),
        "maxConcurrentRequests": st.integers(1, 10**4),
    },
).filter(bool)


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """Valid specs: 1-3 models with any limits, 1-4 job types with ratios in hundredths summing to 1,
    each allowed a subset of the models (so some models may have no user: pool 0)."""
    models = [{"name": f"m{i}", "limits": draw(LIMITS)} for i in range(draw(st.integers(1, 3)))]
    count = draw(st.integers(1, 4))
    cuts = sorted(draw(st.lists(st.integers(1, 99), min_size=count - 1, max_size=count - 1, unique=True)))
    shares = [b - a for a, b in itertools.pairwise([0, *cuts, 100])]
    names = [m["name"] for m in models]
    job_types = []
    for i, share in enumerate(shares):
        job: dict[str, Any] = {
            "name": f"j{i}",
            "ratio": share / 100,
            "estimate": {"tokens": draw(st.integers(1, 10**6)), "requests": draw(st.integers(1, 20))},
        }
        allowed = draw(st.none() | st.lists(st.sampled_from(names), min_size=1, unique=True))
        if allowed is not None:
            job["models"] = allowed
        job_types.append(job)
    return {"models": models, "jobTypes": job_types}


async def check_pools(url: str, spec_json: dict[str, Any], max_instances: int = 12) -> None:
    """Register 1..max_instances instances and compare every pool with compute_allocation."""
    spec = PolicySpec.model_validate(spec_json)
    client = aioredis.Redis.from_url(url)
    try:
        store = RedisStore(client, "pools", f"p{next(_names)}")
        assert await store.project_policy(spec_json, 1)
        for n in range(1, max_instances + 1):
            record = (await store.register(f"i{n}", {})).allocation
            expected = compute_allocation(spec, n)
            assert record.instance_count == n
            assert list(record.pools) == [m.name for m in spec.models]
            for name, pool in record.pools.items():
                assert pool.total_slots == expected.pools[name].total_slots, (name, n)
                for limit, share in expected.pools[name].shares.items():
                    if share is not None:
                        assert pool.shares[limit] == pytest.approx(float(share), rel=1e-15)
        await store.delete_policy()
    finally:
        await client.aclose()


@settings(max_examples=40, deadline=None)
@given(spec_json=specs())
def test_lua_pools_equal_compute_allocation(redis_server: RedisServer, spec_json: dict[str, Any]) -> None:
    asyncio.run(check_pools(redis_server.url, spec_json))


WORKED = {
    "spec example": SPEC,
    "near 2**53": {  # p close to 2**53: Lua's doubles must stay exact
        "models": [{"name": "big", "limits": {"tokensPerDay": 2**51 + 7}}],
        "jobTypes": [
            {"name": "a", "ratio": 0.5, "estimate": {"tokens": 3}},
            {"name": "b", "ratio": 0.5, "estimate": {"tokens": 4}},
        ],
    },
    "concurrency only, no user": {
        "models": [
            {"name": "used", "limits": {"tokensPerMinute": 1000}},
            {"name": "idle", "limits": {"maxConcurrentRequests": 7}},
            {"name": "unused", "limits": {"requestsPerMinute": 9}},
        ],
        "jobTypes": [{"name": "a", "ratio": 1, "estimate": {"tokens": 7}, "models": ["used"]}],
    },
    "ratios 0.29/0.71": {
        "models": [{"name": "m", "limits": {"tokensPerMinute": 100, "requestsPerMinute": 29}}],
        "jobTypes": [
            {"name": "a", "ratio": 0.29, "estimate": {"tokens": 1, "requests": 1}},
            {"name": "b", "ratio": 0.71, "estimate": {"tokens": 2, "requests": 3}},
        ],
    },
}


@pytest.mark.parametrize("spec_json", WORKED.values(), ids=WORKED.keys())
async def test_worked_policies(
    redis_server: RedisServer, redis_client: aioredis.Redis, spec_json: Any
) -> None:
    await check_pools(redis_server.url, spec_json)


async def test_pool_parameters_beyond_2_53_are_refused(store: RedisStore) -> None:
    spec = {
        "models": [{"name": "huge", "limits": {"tokensPerDay": 2**60}}],
        "jobTypes": [{"name": "a", "ratio": 1, "estimate": {"tokens": 3}}],
    }
    # The policy's own bound (2^52 per limit) refuses it first, naming the field.
    with pytest.raises(ValueError, match=r"tokensPerDay\n.*less than or equal to 4503599627370496"):
        await store.project_policy(spec, 1)
    assert await store.load_policy() is None
