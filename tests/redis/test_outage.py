"""Redis going away: one clear exception, and recovery when it returns (scripts reloaded)."""

from __future__ import annotations

import pytest

from limiter.core.windows import BudgetAsk
from limiter.redis.fleetstore import RedisStore
from limiter.redis.plumbing import StoreUnavailable
from tests.redis.conftest import SPEC
from tests.support.redis_server import RedisServer, new_server

pytestmark = pytest.mark.redis


async def test_stopped_redis_raises_store_unavailable_then_recovers(fresh_redis_server: RedisServer) -> None:
    async with RedisStore.from_url(fresh_redis_server.url, "team-a", "chat") as store:
        await store.project_policy(SPEC, 1)
        assert (await store.register("a", {})).changed
        assert await store.ping() < 1.0
        fresh_redis_server.stop()
        for call in (
            store.ping(),
            store.heartbeat("a"),
            store.draw("m", [BudgetAsk("tokensPerMinute", 10, 1, 1)]),
            store.load_policy(),
            store.delete_policy(),
        ):
            with pytest.raises(StoreUnavailable, match=f"Redis at 127.0.0.1:{fresh_redis_server.port}"):
                await call
        fresh_redis_server.start()  # same port, data gone (no persistence): like a new Redis pod
        beat = await store.heartbeat("a")  # the script cache is empty too: reloaded transparently
        assert beat.changed and beat.allocation.instance_count == 1
        assert beat.allocation.generation == 0  # the operator projects the policy again
        assert (await store.draw("m", [BudgetAsk("tokensPerMinute", 10, 1, 1)])).ok


async def test_killed_redis_raises_store_unavailable(fresh_redis_server: RedisServer) -> None:
    async with RedisStore.from_url(fresh_redis_server.url, "team-a", "chat") as store:
        await store.register("a", {})
        fresh_redis_server.kill()
        with pytest.raises(StoreUnavailable) as info:
            await store.heartbeat("a")
        assert info.value.__cause__ is not None  # the redis-py error, for logs


async def test_an_appendonly_server_keeps_fleet_state_across_restarts() -> None:
    with new_server(appendonly=True) as server:
        async with RedisStore.from_url(server.url, "team-a", "chat") as store:
            await store.project_policy(SPEC, 4)
            await store.register("a", {"host": "h"})
            grant = await store.draw("m", [BudgetAsk("tokensPerMinute", 100, 30, 30)])
            server.restart()  # SIGTERM flushes the append-only file; the restart replays it
            loaded = await store.load_policy()
            assert loaded is not None and loaded[1] == 4
            assert [i.instance_id for i in await store.instances()] == ["a"]
            [usage] = await store.usage("m", ["tokensPerMinute"])
            if usage.window_id == grant.dimensions[0].window_id:
                assert usage.used == 30
            assert not (await store.heartbeat("a")).changed
