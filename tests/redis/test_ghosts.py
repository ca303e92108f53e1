"""The leases of an instance that left the fleet stay counted (its ghost) until they time out or the
same process re-joins: the allocation record's ``held``, computed by the membership scripts."""

from __future__ import annotations

import asyncio
import time

import pytest

from limiter.core.allocation import Held
from limiter.core.membership import LeaseReport, lease_report
from limiter.redis.fleetstore import RedisStore
from tests.redis.conftest import SPEC

pytestmark = pytest.mark.redis


def report(incarnation: str, leases: int, seconds: float, model: str = "model-beta") -> LeaseReport:
    """``leases`` leases on ``model`` of 5 requests and 5000 tokens each, ending ``seconds`` from now
    (local time stands in for Redis's: the same machine)."""
    return lease_report(incarnation, [(model, 5000, 5, time.time() + seconds)] * leases)


async def evicted(store: RedisStore, survivor: str = "b") -> None:
    """Let "a" fall silent past the timeout while ``survivor`` heartbeats."""
    for _ in range(4):
        await asyncio.sleep(0.1)
        await store.heartbeat(survivor)


async def test_an_evicted_instance_leaves_its_leases_held_until_they_time_out(store: RedisStore) -> None:
    store.instance_timeout_seconds = 0.3
    await store.project_policy(SPEC, 1)
    await store.register("a", {})
    await store.register("b", {})
    beat = await store.heartbeat("a", report("a1", 3, 1.2))
    assert beat.allocation.held == {}  # a live instance's leases are its own to count
    await evicted(store)
    record = (await store.heartbeat("b")).allocation
    assert record.instance_count == 1
    assert record.held == {"model-beta": Held(3, 15000, 15)}
    await asyncio.sleep(1.0)  # past the reported deadline
    record = (await store.heartbeat("b")).allocation
    assert record.held == {} and "expired" in record.reason
    assert await store.client.hlen(store.keys.ghosts) == 0


async def test_the_same_process_rejoining_drops_its_ghost_and_counts_again(store: RedisStore) -> None:
    store.instance_timeout_seconds = 0.3
    await store.register("a", {})
    await store.register("b", {})
    await store.heartbeat("a", report("a1", 2, 60))
    await evicted(store)
    assert (await store.heartbeat("b")).allocation.held["model-beta"].leases == 2
    back = await store.heartbeat("a", report("a1", 2, 60))
    assert back.changed and back.allocation.instance_count == 2
    assert back.allocation.held == {}


async def test_a_new_process_with_the_same_id_keeps_the_old_ones_leases_held(store: RedisStore) -> None:
    store.instance_timeout_seconds = 5
    await store.register("a", {})
    await store.heartbeat("a", report("old", 4, 60))
    # The container restarted before it was evicted: the new process knows nothing of those leases.
    restarted = await store.register("a", {})
    assert not restarted.changed and "restart" in restarted.allocation.reason
    assert restarted.allocation.held == {"model-beta": Held(4, 20000, 20)}
    # Nor does its re-joining (another incarnation) drop the old process's ghost.
    await store.heartbeat("a", report("new", 1, 60))
    assert (await store.heartbeat("a", report("new", 1, 60))).allocation.held["model-beta"].leases == 4


async def test_a_graceful_leave_keeps_what_is_in_flight_until_it_ends(store: RedisStore) -> None:
    await store.register("a", {})
    await store.register("b", {})
    left = await store.deregister("a", report("a1", 5, 60))
    assert left.allocation.instance_count == 1
    assert left.allocation.held["model-beta"].leases == 5
    fewer = await store.deregister("a", report("a1", 2, 60))
    assert not fewer.changed and fewer.allocation.held["model-beta"].leases == 2
    assert "held" in fewer.allocation.reason
    done = await store.deregister("a", report("a1", 0, 60))
    assert done.allocation.held == {}
    assert (await store.deregister("a", report("a1", 0, 60))).allocation.epoch == done.allocation.epoch


async def test_ghosts_of_several_instances_add_up_per_model(store: RedisStore) -> None:
    await store.register("x", {})
    for i in range(3):
        await store.register(f"g{i}", {})
        await store.deregister(f"g{i}", report(f"i{i}", i + 1, 60))
    await store.deregister("x", report("ix", 1, 60, model="model-alpha"))
    record = (await store.register("y", {})).allocation
    assert record.held == {"model-alpha": Held(1, 5000, 5), "model-beta": Held(6, 30000, 30)}
    assert list(record.held) == ["model-alpha", "model-beta"]
    assert await store.delete_policy() > 0
    assert await store.client.exists(store.keys.ghosts, store.keys.lease_reports) == 0


async def test_an_instance_holding_nothing_leaves_no_report(store: RedisStore) -> None:
    await store.register("a", {})
    await store.heartbeat("a", report("a1", 2, 60))
    assert await store.client.hexists(store.keys.lease_reports, "a")
    await store.heartbeat("a", report("a1", 0, 60))
    assert not await store.client.hexists(store.keys.lease_reports, "a")
    assert report("a1", 0, 60).encode() == ""
