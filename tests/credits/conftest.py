"""Fixtures for credit budget tests: stores on the session's private redis-server, and fleets of
real `fleet-limiter serve` processes (tests/support/fleet.py) that stay up across the cases of a
module.

Requests go to the instances over real HTTP from an aiohttp client with real concurrency.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from limiter.redis.creditstore import CreditStore
from tests.support.fleet import Fleet, Instance
from tests.support.redis_server import RedisServer

ADMIN_TOKEN = "credits-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: The smallest policy an instance runs with; credits do not depend on it.
SPEC: dict[str, Any] = {
    "models": [{"name": "m", "limits": {"maxConcurrentRequests": 1000}}],
    "jobTypes": [{"name": "job", "ratio": 1.0}],
    "instance": {"heartbeatSeconds": 1, "instanceTimeoutSeconds": 5},
}


def new_key(prefix: str = "key") -> str:
    """A fresh API key, so cases sharing a fleet and a Redis never see each other's budgets."""
    return f"{prefix}-{uuid.uuid4().hex}"


@pytest.fixture
async def credit_store(redis_server: RedisServer) -> AsyncIterator[CreditStore]:
    """A store of policy team-a/chat with its own client, on the session server flushed first."""
    redis_server.start()  # no-op unless a test stopped it
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    store = CreditStore.from_url(redis_server.url, "team-a", "chat")
    yield store
    await store.close()


@pytest.fixture
async def make_store(redis_server: RedisServer) -> AsyncIterator[Callable[..., CreditStore]]:
    """Stores with clients of their own (like separate pods), closed afterwards."""
    stores: list[CreditStore] = []

    def make(url: str | None = None, **kwargs: Any) -> CreditStore:
        store = CreditStore.from_url(url or redis_server.url, "team-a", "chat", **kwargs)
        stores.append(store)
        return store

    yield make
    for s in stores:
        await s.close()


class Nodes:
    """A fleet of ``n`` instances of one policy, addressed round robin, with an HTTP session."""

    def __init__(self, fleet: Fleet, instances: list[Instance]) -> None:
        self.fleet = fleet
        self.instances = instances
        self._next = itertools.cycle(range(len(instances)))

    @property
    def urls(self) -> list[str]:
        return [i.url for i in self.instances]

    def url(self, index: int | None = None) -> str:
        """The base URL of instance ``index``, or of the next one in turn."""
        return self.instances[next(self._next) if index is None else index].url


def start_nodes(tmp: Path, redis_url: str, n: int, policy_name: str) -> Nodes:
    """Start ``n`` instances (all at once, then wait for each) of a policy of their own."""
    fleet = Fleet(tmp, redis_url)
    fleet.write_policy(policy_name, SPEC)
    try:
        instances = fleet.start(n, env={"FLEET_LIMITER_ADMIN_TOKEN": ADMIN_TOKEN})
    except BaseException:
        fleet.close()
        raise
    return Nodes(fleet, instances)


class FleetPool:
    """At most one fleet alive at a time, by node count: cases ordered by count start each fleet
    once (and 2 CPUs never host 18 instances at once)."""

    def __init__(self, tmp: pytest.TempPathFactory, redis_url: str) -> None:
        self._tmp = tmp
        self._redis_url = redis_url
        self.current: Nodes | None = None
        self.starts = 0

    def get(self, n: int) -> Nodes:
        """A fleet of ``n`` instances, the one already running if it has that many."""
        current = self.current
        alive = current is not None and all(i.process.poll() is None for i in current.instances)
        if current is not None and alive and len(current.instances) == n:
            return current
        self.close()
        self.current = start_nodes(self._tmp.mktemp(f"nodes{n}"), self._redis_url, n, f"credits-{n}")
        self.starts += 1
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.fleet.close()
            self.current = None


@pytest.fixture(scope="module")
def fleets(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetPool]:
    """Fleets of real instances by node count, kept across the cases of a module."""
    pool = FleetPool(tmp_path_factory, redis_server.url)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def three(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    """Three instances for the API tests of a module."""
    group = start_nodes(tmp_path_factory.mktemp("three"), redis_server.url, 3, "credits-three")
    yield group
    group.fleet.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that can hold many requests open at once (real concurrency)."""
    connector = aiohttp.TCPConnector(limit=200, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    admin: bool = False,
    raw: bytes | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """One HTTP call: (status, decoded JSON, headers)."""
    headers = dict(ADMIN) if admin else {}
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with session.request(method, url, data=data, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None), dict(resp.headers)


async def put_key(session: aiohttp.ClientSession, base: str, key: str, **body: Any) -> dict[str, Any]:
    """PUT /api/keys/{key} with the admin token; asserts it was created."""
    status, doc, _ = await call(session, "PUT", f"{base}/api/keys/{key}", body, admin=True)
    assert status == 201, (status, doc)
    return doc  # type: ignore[no-any-return]


async def get_key(session: aiohttp.ClientSession, base: str, key: str) -> dict[str, Any]:
    """GET /api/keys/{key} with the admin token; asserts 200."""
    status, doc, _ = await call(session, "GET", f"{base}/api/keys/{key}", admin=True)
    assert status == 200, (status, doc)
    return doc  # type: ignore[no-any-return]
