"""Key layout: one hash tag per policy, no collisions, and every script accepted by Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from limiter.core.policy import WINDOW_LIMITS
from limiter.core.windows import BudgetAsk
from limiter.redis.fleetstore import RedisStore
from limiter.redis.keys import PolicyKeys
from tests.redis.conftest import SPEC
from tests.support.redis_server import RedisServer, new_server


def slot(key: str | bytes) -> int:
    return key_slot(key.encode() if isinstance(key, str) else key)


def test_layout() -> None:
    keys = PolicyKeys("team-a", "chat")
    assert keys.instances == "fl:{team-a/chat}:instances"
    assert keys.instance_info == "fl:{team-a/chat}:instance-info"
    assert keys.allocation == "fl:{team-a/chat}:allocation"
    assert keys.policy == "fl:{team-a/chat}:policy"
    assert keys.budget_registry == "fl:{team-a/chat}:budget-keys"
    assert (
        keys.budget("model-alpha", "tokensPerMinute") == "fl:{team-a/chat}:budget:tokensPerMinute:model-alpha"
    )
    assert keys.channel == "fl:{team-a/chat}:changes"


@pytest.mark.parametrize("model", ["model-alpha", "a:tokensPerDay", "{other/tag}", "gpt-4o/2024-08-06", ""])
def test_every_key_of_a_policy_hashes_to_the_tag_slot(model: str) -> None:
    keys = PolicyKeys("team-a", "chat")
    tag_slot = slot("team-a/chat")
    all_keys = [*keys.fixed_keys, *(keys.budget(model, limit) for limit in WINDOW_LIMITS)]
    assert {slot(k) for k in all_keys} == {tag_slot}
    assert set(keys.membership_keys) <= set(keys.fixed_keys)


def test_policies_with_the_same_model_names_never_collide() -> None:
    policies = [PolicyKeys("team-a", "chat"), PolicyKeys("team-b", "chat"), PolicyKeys("team-a", "chat2")]
    names = [
        k
        for p in policies
        for k in (*p.fixed_keys, p.channel, *(p.budget("model-alpha", limit) for limit in WINDOW_LIMITS))
    ]
    assert len(names) == len(set(names))
    # A model whose name looks like "<model>:<limit>" cannot reach another model's budget either.
    keys = policies[0]
    assert keys.budget("a:tokensPerDay", "tokensPerMinute") != keys.budget("a", "tokensPerDay")


@pytest.mark.parametrize(
    "namespace,name", [("team{a}", "chat"), ("team-a", "c/hat"), ("", "chat"), ("a", "-x")]
)
def test_names_that_would_break_the_tag_are_refused(namespace: str, name: str) -> None:
    with pytest.raises(ValueError, match="Kubernetes name"):
        PolicyKeys(namespace, name)


def test_unknown_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="not a window limit"):
        PolicyKeys("a", "b").budget("m", "maxConcurrentRequests")


async def exercise(store: RedisStore) -> None:
    """Every operation of the store, so every script and key is used at least once."""
    await store.project_policy(SPEC, 1)
    await store.register("pod-0", {})
    await store.register("pod-1", {})
    await store.heartbeat("pod-0")
    asks = [BudgetAsk("tokensPerMinute", 100000, 10, 100), BudgetAsk("tokensPerDay", 10**6, 10, 100)]
    grant = await store.draw("model-alpha", asks)
    assert grant.ok
    await store.give_back("model-alpha", [(d.dimension, d.window_id, 5) for d in grant.dimensions])
    await store.charge("model-beta", [("requestsPerMinute", 2), ("requestsPerDay", 2)])
    await store.usage("model-alpha")
    await store.instances()
    await store.load_policy()
    async with store.subscribe():
        await store.deregister("pod-1")


@pytest.mark.redis
async def test_every_key_written_carries_its_policys_tag(redis_client: aioredis.Redis) -> None:
    stores = [RedisStore(redis_client, "team-a", "chat"), RedisStore(redis_client, "team-b", "chat")]
    for s in stores:
        await exercise(s)
    written = [k.decode() for k in await redis_client.keys("*")]
    for s in stores:
        mine = [k for k in written if k.startswith(f"fl:{s.keys.tag}:")]
        assert len(mine) == 9
        assert {slot(k) for k in mine} == {slot(s.keys.tag[1:-1])}
    assert len(written) == 18


@pytest.fixture
async def cluster_client() -> AsyncIterator[tuple[RedisServer, aioredis.Redis]]:
    with new_server(cluster=True) as server:
        client = aioredis.Redis.from_url(server.url)
        yield server, client
        await client.aclose()


@pytest.mark.redis
async def test_every_script_runs_on_redis_cluster(cluster_client: tuple[RedisServer, aioredis.Redis]) -> None:
    # A one-node Redis Cluster refuses scripts whose KEYS span slots, and keys a script touches
    # in another slot than its KEYS: every operation passing here keeps to its policy's slot.
    server, client = cluster_client
    assert b"cluster_enabled:1" in server.command("INFO", "cluster")
    with pytest.raises(aioredis.ResponseError, match="same slot"):
        await client.eval("return 1", 2, "fl:{a/b}:x", "fl:{c/d}:x")
    for namespace in ("team-a", "team-b"):
        await exercise(RedisStore(client, namespace, "chat"))
    assert await RedisStore(client, "team-a", "chat").delete_policy() == 9
