"""Window counters in Lua saturate instead of wrapping: however large a charge that reaches Redis,
a spent window stays spent (the Python side refuses such reports first; this is the second floor)."""

from __future__ import annotations

import pytest

from limiter.core.windows import BudgetAsk
from limiter.redis.fleetstore import RedisStore

MAX_COUNTER = 2**53 - 1


@pytest.mark.parametrize("amount", [10**15, 2**53, 2**63 - 1, 10**30])
async def test_a_huge_charge_saturates_and_the_window_stays_spent(store: RedisStore, amount: int) -> None:
    [usage] = await store.charge("model-alpha", [("tokensPerMinute", amount)])
    assert 0 < usage.used <= MAX_COUNTER
    [usage] = await store.charge("model-alpha", [("tokensPerMinute", amount)])  # twice: still no wrap
    assert usage.used == min(2 * amount, MAX_COUNTER) or usage.used == MAX_COUNTER
    grant = await store.draw("model-alpha", [BudgetAsk("tokensPerMinute", 100000, 1, 1000)])
    assert not grant.ok and grant.granted("tokensPerMinute") == 0
    [usage] = await store.usage("model-alpha", ["tokensPerMinute"])
    assert 0 < usage.used <= MAX_COUNTER
