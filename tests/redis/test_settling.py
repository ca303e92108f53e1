"""After a join the shares shrink at once but the leases granted under the larger shares run on: the
allocation record's ``excess`` counts the leases the live instances hold above their new share (less
the unowned remainder), computed by the membership scripts, and shrinks, published again with reason
``settle``, as those leases end (docs/fleet.md, "Joins")."""

from __future__ import annotations

import copy
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from limiter.core.allocation import Held
from limiter.core.membership import LeaseReport, fleet_excess, lease_report
from limiter.core.policy import PolicySpec
from limiter.redis.fleetstore import RedisStore
from tests.redis.conftest import SPEC

pytestmark = pytest.mark.redis

BETA = "model-beta"  # maxConcurrentRequests 40


def holding(leases: int, model: str = BETA, incarnation: str = "i") -> LeaseReport:
    return lease_report(incarnation, [(model, 0, 1, time.time() + 60)] * leases)


async def test_a_join_counts_the_leases_above_the_new_share_until_they_end(store: RedisStore) -> None:
    await store.project_policy(SPEC, 1)
    await store.register("a", {})
    await store.register("b", {})
    await store.heartbeat("a", holding(20))
    full = await store.heartbeat("b", holding(20))
    assert full.allocation.excess == {}  # 20 each of 40: nobody above its share
    joined = (await store.register("c", {})).allocation
    # share floor(40 / 3) = 13, remainder 1: a and b hold 7 above it each, 14 - 1 = 13
    assert joined.instance_count == 3 and joined.excess == {BETA: 13}
    fewer = (await store.heartbeat("a", holding(15))).allocation
    assert "settle" in fewer.reason and fewer.epoch == joined.epoch + 1 and fewer.excess == {BETA: 8}
    same = (await store.heartbeat("a", holding(15))).allocation
    assert same.epoch == fewer.epoch  # nothing crossed: nothing published
    assert (await store.heartbeat("b", holding(13))).allocation.excess == {BETA: 1}
    done = (await store.heartbeat("a", holding(13))).allocation
    assert done.excess == {} and "settle" in done.reason
    # At or below their shares, the heartbeats publish nothing however the leases move.
    assert (await store.heartbeat("c", holding(9))).allocation.epoch == done.epoch
    assert (await store.heartbeat("c", holding(13))).allocation.epoch == done.epoch


async def test_a_shadow_model_keeps_nothing_free(store: RedisStore) -> None:
    spec = copy.deepcopy(SPEC)
    spec["models"][1]["mode"] = "shadow"
    await store.project_policy(spec, 1)
    await store.register("a", {})
    await store.heartbeat("a", holding(40))
    assert (await store.register("b", {})).allocation.excess == {}


async def test_a_ghost_s_leases_come_off_the_share_the_excess_is_counted_against(store: RedisStore) -> None:
    await store.project_policy(SPEC, 1)
    for name in ("a", "b", "c"):
        await store.register(name, {})
        await store.heartbeat(name, holding(13))
    # c leaves with its 13 leases in flight: they stay held, so a and b keep a share of 13.
    left = (await store.deregister("c", holding(13))).allocation
    assert left.held[BETA].leases == 13 and left.excess == {}
    # Without them counted, a and b would have grown to 20 each: 53 of 40.
    rejoined = (await store.register("d", {})).allocation  # share floor(27 / 3) = 9
    assert rejoined.excess == {BETA: 2 * (13 - 9)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.integers(0, 45), min_size=1, max_size=6),
    st.integers(0, 50),
    st.integers(1, 3),
)
async def test_the_scripts_count_what_the_reference_counts(
    store: RedisStore, leases: list[int], ghost: int, joiners: int
) -> None:
    await store.client.flushall()
    await store.project_policy(SPEC, 1)
    if ghost:
        await store.register("ghost", {})
        await store.deregister("ghost", holding(ghost, incarnation="g"))
    for i, n in enumerate(leases):
        await store.register(f"i{i}", {})
        await store.heartbeat(f"i{i}", holding(n, incarnation=f"i{i}"))
    for j in range(joiners):
        record = (await store.register(f"new{j}", {})).allocation
    held = {BETA: Held(leases=ghost)} if ghost else {}
    expected = fleet_excess(
        PolicySpec.model_validate(SPEC), len(leases) + joiners, held, [{BETA: n} for n in leases]
    )
    assert record.excess == expected
