"""One published message per change, delivered to every subscriber, across reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from limiter.core.membership import AllocationRecord
from limiter.redis.fleetstore import AllocationSubscription, Pull, RedisStore
from limiter.redis.plumbing import StoreUnavailable
from tests.redis.conftest import SPEC
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.redis


async def drain(sub: AllocationSubscription, quiet: float = 0.2) -> list[AllocationRecord | Pull]:
    """Every item the subscription yields until none has for ``quiet`` seconds."""
    records = []
    while True:
        try:
            records.append(await asyncio.wait_for(anext(sub), quiet))
        except TimeoutError:
            return records


class Published:
    """Every message on a policy's channel, as Redis sent it (a plain subscriber: nothing coalesced)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.pubsub = store.client.pubsub()

    async def __aenter__(self) -> Published:
        await self.pubsub.subscribe(self.store.keys.channel)
        assert (await self.pubsub.get_message(timeout=2))["type"] == "subscribe"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]

    async def records(self, quiet: float = 0.2) -> list[AllocationRecord]:
        out = []
        while (
            msg := await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=quiet)
        ) is not None:
            out.append(AllocationRecord.from_json(msg["data"]))
        return out


async def publish_calls(client: aioredis.Redis) -> int:
    """PUBLISH calls the server has run since the last CONFIG RESETSTAT (scripts' calls included)."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_publish", {}).get("calls", 0))


async def test_five_joins_publish_five_messages_not_twenty_five(
    store: RedisStore, make_store: Callable[..., RedisStore]
) -> None:
    await store.project_policy(SPEC, 1)
    pods = [make_store() for _ in range(5)]
    async with contextlib.AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(Published(p)) for p in pods]  # one per instance
        await store.client.config_resetstat()
        for i, pod in enumerate(pods):
            await pod.register(f"pod-{i}", {})
            for _ in range(3):  # heartbeats publish nothing
                await pod.heartbeat(f"pod-{i}")
        received = [await sub.records() for sub in subs]
        assert await publish_calls(store.client) == 5
    for records in received:
        assert [r.instance_count for r in records] == [1, 2, 3, 4, 5]
        assert [r.epoch for r in records] == sorted({r.epoch for r in records})
        assert records[-1].pools["model-alpha"].total_slots == 2  # floor(100000 / 7500 / 5)


async def test_leave_eviction_and_policy_each_publish_once(store: RedisStore) -> None:
    store.instance_timeout_seconds = 0.2
    async with Published(store) as sub:
        await store.register("a", {})
        await store.register("b", {})
        await store.register("c", {})
        assert len(await sub.records(0.1)) == 3
        await store.deregister("a")
        await asyncio.sleep(0.25)  # b and c fall silent
        await store.register("d", {})  # evicts b and c and joins: one change, one message
        await store.project_policy(SPEC, 1)
        await store.project_policy(SPEC, 1)  # stale: nothing
        records = await sub.records()
    assert [(r.reason, r.instance_count) for r in records] == [("leave", 2), ("evict+join", 1), ("policy", 1)]
    assert records[-1].generation == 1
    assert records[-1].pools["model-beta"].total_slots == 40


async def test_subscription_reconnects_and_resyncs_after_a_redis_restart(
    fresh_redis_server: RedisServer,
) -> None:
    async with RedisStore.from_url(fresh_redis_server.url, "team-a", "chat") as store:
        await store.register("a", {})
        async with store.subscribe() as sub:
            fresh_redis_server.restart(flush=True)  # every connection drops; the data is gone

            # The instance re-registers on its next heartbeat; the subscriber hears of it either by
            # the published message or by the record it reads back after resubscribing.
            async def heartbeat() -> bool:
                try:
                    await store.heartbeat("a")
                except StoreUnavailable:
                    return False
                return True

            await wait_until_async(heartbeat, 5, interval=0.05, what="a heartbeat after the restart")
            record = await asyncio.wait_for(anext(sub), 5)
            assert record.instance_count == 1
            assert sub.reconnects == 1
            await store.register("b", {})
            nxt = await asyncio.wait_for(anext(sub), 5)
            while nxt.instance_count == 1:  # the rejoin's own message, if the resync came first
                nxt = await asyncio.wait_for(anext(sub), 5)
            assert nxt.instance_count == 2


async def test_iteration_stops_after_close(store: RedisStore) -> None:
    sub = store.subscribe()
    async with sub:
        await store.register("a", {})
        assert (await anext(sub)).instance_count == 1
    with pytest.raises(StopAsyncIteration):
        await anext(sub)


async def test_a_burst_is_read_as_its_newest_record_and_no_pull_is_lost(
    store: RedisStore, make_store: Callable[..., RedisStore]
) -> None:
    """Records already received behind one another are coalesced: the subscriber gets the newest
    (the channel is in publish order) and counts the others; pulls in between all come through."""
    await store.project_policy(SPEC, 1)
    async with store.subscribe() as sub:
        for i in range(20):
            await make_store().register(f"pod-{i}", {})
            if i % 5 == 0:
                await store.client.publish(store.keys.pull_channel, f"model-{i}")
        await asyncio.sleep(0.2)  # everything is in the subscriber's socket before it reads
        items = await drain(sub)
    records = [x for x in items if isinstance(x, AllocationRecord)]
    pulls = [x.model for x in items if isinstance(x, Pull)]
    assert pulls == ["model-0", "model-5", "model-10", "model-15"]
    assert [r.instance_count for r in records] == [20]
    assert sub.coalesced == 19


async def test_records_read_one_by_one_are_never_coalesced(
    store: RedisStore, make_store: Callable[..., RedisStore]
) -> None:
    async with store.subscribe() as sub:
        for i in range(5):
            await make_store().register(f"pod-{i}", {})
            assert (await asyncio.wait_for(anext(sub), 5)).instance_count == i + 1
    assert sub.coalesced == 0


async def test_close_soon_ends_a_subscription_at_its_next_poll(store: RedisStore) -> None:
    async with store.subscribe() as sub:
        reading = asyncio.create_task(anext(sub))
        await asyncio.sleep(0.2)  # in a read of the channel
        t0 = time.monotonic()
        sub.close_soon()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(reading, 5)
        assert time.monotonic() - t0 <= 1.5  # the poll is 1 s
