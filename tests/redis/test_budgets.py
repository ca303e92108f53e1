"""Fleet-wide window budgets: never more than the limit in a window, whatever the concurrency."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from limiter.core.windows import BudgetAsk
from limiter.redis.fleetstore import RedisStore

pytestmark = pytest.mark.redis

TPM = "tokensPerMinute"
RPM = "requestsPerMinute"


async def test_draw_grants_what_is_wanted_then_what_is_left(store: RedisStore) -> None:
    first = await store.draw("m", [BudgetAsk(TPM, 1000, need=100, want=700)])
    assert first.ok and first.granted(TPM) == 700 and first.retry_after_ms == 0
    assert first.dimensions[0].remaining == 300
    assert 0 < first.dimensions[0].window_ends_in_ms <= 60_000
    second = await store.draw("m", [BudgetAsk(TPM, 1000, need=100, want=700)])
    assert second.ok and second.granted(TPM) == 300  # less than wanted, at least what is needed
    third = await store.draw("m", [BudgetAsk(TPM, 1000, need=1, want=1)])
    assert not third.ok and third.granted(TPM) == 0
    assert 0 < third.retry_after_ms <= 60_000
    assert first.dimensions[0].window_id == third.dimensions[0].window_id
    assert first.dimensions[0].window_id == first.redis_time_ms // 60_000  # aligned to UTC minutes
    [usage] = await store.usage("m", [TPM])
    assert usage.used == 1000


async def test_draws_are_all_or_nothing_across_dimensions(store: RedisStore) -> None:
    asks = [BudgetAsk(TPM, 100000, need=5000, want=5000), BudgetAsk(RPM, 3, need=1, want=1)]
    for _ in range(3):
        assert (await store.draw("m", asks)).ok
    refused = await store.draw("m", asks)  # RPM is spent; TPM has plenty but must not be taken
    assert not refused.ok
    assert [d.granted for d in refused.dimensions] == [0, 0]
    assert refused.dimensions[0].remaining == 85000
    used = {u.dimension: u.used for u in await store.usage("m", [TPM, RPM])}
    assert used == {TPM: 15000, RPM: 3}
    # The retry time is when the refusing window ends, not the plentiful one.
    assert refused.retry_after_ms == refused.dimensions[1].window_ends_in_ms


async def test_concurrent_draws_from_many_connections_never_exceed_the_limit(
    make_store: Callable[..., RedisStore],
) -> None:
    limit = 5000
    pods = [make_store() for _ in range(4)]  # four connections, like four instances
    grants: list[int] = []

    async def worker(pod: RedisStore, seed: int) -> None:
        rng = random.Random(seed)
        while True:
            need = rng.randint(1, 40)
            grant = await pod.draw("model-alpha", [BudgetAsk(TPM, limit, need, need + rng.randint(0, 80))])
            if not grant.ok:
                if grant.dimensions[0].remaining < 1:
                    return
                continue  # too little left for this need: a smaller one may still fit
            grants.append(grant.granted(TPM))

    await asyncio.gather(*(worker(pods[i % 4], i) for i in range(40)))
    assert sum(grants) == limit  # never more, and the whole window's budget was usable
    [usage] = await pods[0].usage("model-alpha", [TPM])
    assert usage.used == limit


async def test_give_back_is_usable_again_in_the_same_window(store: RedisStore) -> None:
    ask = BudgetAsk(TPM, 1000, need=1000, want=1000)
    grant = await store.draw("m", [ask])
    assert grant.ok and not (await store.draw("m", [ask])).ok
    window = grant.dimensions[0].window_id
    # The job used 600 of its 1000-token reservation: 400 flow back to the fleet at once.
    assert await store.give_back("m", [(TPM, window, 400)]) == [400]
    again = await store.draw("m", [BudgetAsk(TPM, 1000, need=400, want=500)])
    assert again.ok and again.granted(TPM) == 400
    assert await store.give_back("m", [(TPM, window, 5000)]) == [1000]  # never below 0
    [usage] = await store.usage("m", [TPM])
    assert usage.used == 0


async def test_windows_roll_over_by_redis_time(make_store: Callable[..., RedisStore]) -> None:
    store = make_store(window_seconds={TPM: 1})  # one-second windows: tests only
    ask = BudgetAsk(TPM, 10, need=10, want=10)
    grant = await store.draw("m", [ask])
    if not grant.ok or grant.dimensions[0].window_ends_in_ms < 50:  # avoid starting at a window's edge
        await asyncio.sleep(0.06)
        grant = await store.draw("m", [ask])
    assert grant.ok
    refused = await store.draw("m", [ask])
    assert not refused.ok and 0 < refused.retry_after_ms <= 1000
    await asyncio.sleep(refused.retry_after_ms / 1000 + 0.02)
    later = await store.draw("m", [ask])
    assert later.ok
    assert later.dimensions[0].window_id == grant.dimensions[0].window_id + 1
    # Budget of an ended window cannot be given back into the new one.
    assert await store.give_back("m", [(TPM, grant.dimensions[0].window_id, 10)]) == [0]
    assert not (await store.draw("m", [ask])).ok
    ttl = await store.client.pttl(store.keys.budget("m", TPM))
    assert 0 < ttl <= 2000  # budget keys expire two windows after their last write


async def test_charge_beyond_the_limit_blocks_draws_until_the_window_ends(store: RedisStore) -> None:
    grant = await store.draw("m", [BudgetAsk(TPM, 1000, need=800, want=800)])
    assert grant.ok
    # The job reserved 800 but used 1500: the 700 overage is charged, even past the limit.
    [charged] = await store.charge("m", [(TPM, 700)])
    assert charged.used == 1500 and charged.window_id == grant.dimensions[0].window_id
    for need in (1, 0):  # an overdrawn window refuses even a draw that needs nothing
        refused = await store.draw("m", [BudgetAsk(TPM, 1000, need=need, want=10)])
        assert not refused.ok and refused.dimensions[0].remaining == -500
    await store.give_back("m", [(TPM, charged.window_id, 499)])
    assert not (await store.draw("m", [BudgetAsk(TPM, 1000, need=1, want=1)])).ok
    await store.give_back("m", [(TPM, charged.window_id, 2)])
    assert (await store.draw("m", [BudgetAsk(TPM, 1000, need=1, want=1)])).ok


async def test_models_and_policies_have_separate_budgets(store: RedisStore) -> None:
    other_policy = RedisStore(store.client, "team-b", "chat")
    ask = BudgetAsk(TPM, 100, need=100, want=100)
    assert (await store.draw("model-alpha", [ask])).ok
    assert (await store.draw("model-beta", [ask])).ok
    assert (await other_policy.draw("model-alpha", [ask])).ok
    assert (await store.draw("model-alpha", [BudgetAsk("tokensPerDay", 100, 100, 100)])).ok
    assert not (await store.draw("model-alpha", [ask])).ok


async def test_usage_of_untouched_budgets_is_zero(store: RedisStore) -> None:
    usage = await store.usage("m")
    assert [u.dimension for u in usage] == [
        "tokensPerMinute",
        "requestsPerMinute",
        "tokensPerDay",
        "requestsPerDay",
    ]
    assert all(u.used == 0 for u in usage)
    assert usage[2].window_id == usage[0].window_id // 1440  # minutes per UTC day
    assert await store.client.keys("*") == []  # reading writes nothing


async def test_bad_asks_are_refused_with_a_clear_message(store: RedisStore) -> None:
    with pytest.raises(ValueError, match="exceeds the limit 100"):
        BudgetAsk(TPM, 100, need=101, want=200)
    with pytest.raises(ValueError, match="0 <= need <= want"):
        BudgetAsk(TPM, 100, need=10, want=5)
    with pytest.raises(ValueError, match="not a window limit"):
        BudgetAsk("maxConcurrentRequests", 100, 1, 1)
    with pytest.raises(ValueError, match="appears twice"):
        await store.draw("m", [BudgetAsk(TPM, 100, 1, 1), BudgetAsk(TPM, 100, 1, 1)])
    with pytest.raises(ValueError, match="at least one"):
        await store.draw("m", [])
    with pytest.raises(ValueError, match="give back instead"):
        await store.charge("m", [(TPM, -1)])
    with pytest.raises(ValueError, match="window_seconds"):
        RedisStore(store.client, "a", "b", window_seconds={TPM: 0})


async def test_a_draw_that_finds_redis_lost_its_data_fences_every_draw_until_it_ends(
    store: RedisStore, make_store: Callable[..., RedisStore]
) -> None:
    """Redis lost its data (FLUSHALL) after an instance applied a record: its next draw finds no
    record (or one that began again) and sets the budget fence; while it stands nobody draws, so
    every instance can charge back what it drew of the window first (docs/fleet.md)."""
    record = (await store.register("a", {})).allocation
    assert record.since == record.changed_at_ms  # the chain begins with the first record
    assert (await store.register("b", {})).allocation.since == record.since
    store.records_since, store.fence_ms = record.since, 400
    other = make_store()
    other.records_since, other.fence_ms = record.since, 400
    ask = [BudgetAsk(TPM, 1000, need=100, want=100)]
    assert (await store.draw("m", ask)).ok  # nothing lost: no fence
    await store.client.flushall()
    fenced = await store.draw("m", ask)
    assert not fenced.ok and fenced.fenced and 0 < fenced.retry_after_ms <= 400
    # Another instance that already follows the new chain is fenced too, and so is a newcomer.
    again = (await other.register("c", {})).allocation
    assert again.since > record.since
    other.records_since = again.since
    assert (await other.draw("m", ask)).fenced
    fresh = make_store()
    assert (await fresh.draw("m", ask)).fenced
    await asyncio.sleep(0.45)
    after = await other.draw("m", ask)
    assert after.ok and not after.fenced
    # The fence is set once, not extended by every draw that sees it.
    assert await store.client.exists(store.keys.budget_fence) == 0


async def test_a_brand_new_fleet_is_never_fenced(store: RedisStore) -> None:
    store.fence_ms = 10_000
    assert (await store.draw("m", [BudgetAsk(TPM, 1000, need=1, want=1)])).ok  # no record seen yet
    record = (await store.register("a", {})).allocation
    store.records_since = record.since
    assert (await store.draw("m", [BudgetAsk(TPM, 1000, need=1, want=1)])).ok
