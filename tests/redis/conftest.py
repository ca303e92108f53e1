"""Fixtures for tests against a real, private redis-server: clients and stores on the session's
server (``redis_server`` of tests/support/plugin.py), which is flushed before every test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from limiter.redis.fleetstore import RedisStore
from tests.support.redis_server import RedisServer

#: A small policy: TPM 100K shared by a (10K tokens, 0.6) and b (5K, 0.4), plus RPM on a second model.
SPEC: dict[str, Any] = {
    "models": [
        {"name": "model-alpha", "limits": {"tokensPerMinute": 100000}},
        {"name": "model-beta", "limits": {"requestsPerMinute": 500, "maxConcurrentRequests": 40}},
    ],
    "jobTypes": [
        {"name": "a", "ratio": 0.6, "estimate": {"tokens": 10000, "requests": 1}},
        {"name": "b", "ratio": 0.4, "estimate": {"tokens": 5000, "requests": 5}},
    ],
    "instance": {"heartbeatSeconds": 0.1, "instanceTimeoutSeconds": 5},
}


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of the session server, which is flushed first."""
    redis_server.start()  # no-op unless a test stopped it
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_client: aioredis.Redis) -> RedisStore:
    """The store of policy team-a/chat on the flushed session server."""
    return RedisStore(redis_client, "team-a", "chat")


@pytest.fixture
async def make_store(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> AsyncIterator[Callable[..., RedisStore]]:
    """Stores with their own clients (separate connections, like separate pods) on the flushed
    session server, closed afterwards."""
    stores: list[RedisStore] = []

    def make(
        namespace: str = "team-a", name: str = "chat", *, url: str | None = None, **kwargs: Any
    ) -> RedisStore:
        s = RedisStore.from_url(url or redis_server.url, namespace, name, **kwargs)
        stores.append(s)
        return s

    yield make
    for s in stores:
        await s.close()
