"""Instances joining, heartbeating, leaving and being evicted by Redis's clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from limiter.core.membership import AllocationRecord
from limiter.redis.fleetstore import RedisStore
from tests.redis.conftest import SPEC

pytestmark = pytest.mark.redis


async def test_register_heartbeat_deregister_counts(store: RedisStore) -> None:
    await store.project_policy(SPEC, 1)
    for i in range(3):
        reply = await store.register(f"pod-{i}", {"host": f"10.0.0.{i}", "port": 8080})
        assert reply.changed
        assert reply.allocation.instance_count == i + 1
    again = await store.register("pod-0", {"host": "10.0.0.0", "port": 8080})
    assert not again.changed and again.allocation.instance_count == 3

    beat = await store.heartbeat("pod-1")
    assert not beat.changed
    assert beat.allocation.instance_count == 3
    assert beat.allocation.epoch == again.allocation.epoch  # a heartbeat alone changes nothing

    left = await store.deregister("pod-1")
    assert left.changed and left.allocation.instance_count == 2
    assert (await store.deregister("pod-1")).changed is False  # twice is harmless

    instances = await store.instances()
    assert sorted(i.instance_id for i in instances) == ["pod-0", "pod-2"]
    assert {i.instance_id: i.info for i in instances}["pod-2"] == {"host": "10.0.0.2", "port": 8080}
    stored = await store.allocation()
    assert stored == left.allocation


async def test_replies_carry_redis_time(store: RedisStore) -> None:
    server_s, _ = await store.client.time()
    reply = await store.register("pod-0", {})
    assert abs(reply.redis_time_ms - server_s * 1000) < 2000
    assert reply.allocation.changed_at_ms == reply.redis_time_ms
    beat = await store.heartbeat("pod-0")
    assert beat.redis_time_ms >= reply.redis_time_ms


async def test_epoch_increments_on_every_change(store: RedisStore) -> None:
    epochs = [(await store.register("a", {})).allocation.epoch]
    epochs.append((await store.register("b", {})).allocation.epoch)
    epochs.append((await store.deregister("a")).allocation.epoch)
    await store.project_policy(SPEC, 1)
    epochs.append((await store.heartbeat("b")).allocation.epoch)
    assert epochs == [1, 2, 3, 4]


async def test_silent_instances_are_evicted_by_redis_time(store: RedisStore) -> None:
    store.instance_timeout_seconds = 0.3
    await store.register("quiet", {})
    await store.register("alive", {})
    for _ in range(4):  # 0.4 s: "alive" keeps heartbeating, "quiet" does not
        await asyncio.sleep(0.1)
        reply = await store.heartbeat("alive")
    assert reply.allocation.instance_count == 1
    assert reply.allocation.reason == "evict"
    assert [i.instance_id for i in await store.instances()] == ["alive"]


async def test_evicted_instance_reregisters_on_its_next_heartbeat(store: RedisStore) -> None:
    store.instance_timeout_seconds = 0.3
    await store.register("paused", {"host": "h1"})
    await store.register("other", {})
    await asyncio.sleep(0.4)  # "paused" is silent past the timeout (SIGSTOP in production)
    assert (await store.heartbeat("other")).allocation.instance_count == 1  # evicts both but itself

    back = await store.heartbeat("paused")
    assert back.changed  # re-registered
    assert back.allocation.instance_count == 2
    assert "rejoin" in back.allocation.reason
    assert {i.instance_id: i.info for i in await store.instances()}["paused"] == {"host": "h1"}
    assert not (await store.heartbeat("paused")).changed


async def test_an_instance_paused_alone_comes_back(store: RedisStore) -> None:
    store.instance_timeout_seconds = 0.2
    await store.register("solo", {})
    await asyncio.sleep(0.3)
    back = await store.heartbeat("solo")  # evicts itself, then registers again in the same script
    assert back.changed and back.allocation.instance_count == 1
    assert back.allocation.reason == "evict+rejoin"


async def test_eviction_uses_redis_clock_not_the_callers(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A caller whose clock jumps an hour ahead changes nothing: the scripts never read it.
    store.instance_timeout_seconds = 5
    await store.register("a", {})
    monkeypatch.setattr(time, "time", lambda: 4_000_000_000.0)
    reply = await store.register("b", {})
    assert reply.allocation.instance_count == 2


async def test_separate_connections_see_the_same_fleet(make_store: Callable[..., RedisStore]) -> None:
    pods = [make_store() for _ in range(4)]
    await pods[0].project_policy(SPEC, 1)
    replies = await asyncio.gather(*(p.register(f"pod-{i}", {}) for i, p in enumerate(pods)))
    assert sorted(r.allocation.instance_count for r in replies) == [1, 2, 3, 4]
    beats = await asyncio.gather(*(p.heartbeat(f"pod-{i}") for i, p in enumerate(pods)))
    assert {b.allocation.epoch for b in beats} == {max(r.allocation.epoch for r in replies)}
    assert beats[0].allocation.pools["model-alpha"].total_slots == 3  # floor(100000 / 7500 / 4)


async def test_allocation_is_recomputed_when_redis_lost_it(store: RedisStore) -> None:
    await store.project_policy(SPEC, 1)
    await store.register("a", {})
    await store.client.delete(store.keys.allocation)
    reply = await store.heartbeat("a")
    assert reply.allocation.reason == "resync"
    assert reply.allocation.instance_count == 1
    assert isinstance(await store.allocation(), AllocationRecord)


async def test_empty_instance_id_is_refused(store: RedisStore) -> None:
    with pytest.raises(ValueError, match="instance_id"):
        await store.register("", {})
