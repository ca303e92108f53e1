"""The model queue's gate and statistics, in process (no instance, no HTTP)."""

from __future__ import annotations

import asyncio

import pytest

from limiter.proxy.queues import BUCKETS, ModelQueue, Timing
from tests.support.waiting import wait_until_async


@pytest.mark.parametrize(
    ("override", "share", "expected"),
    [(None, 6, 6), (2, 6, 2), (10, 6, 6), (0, 6, 0), (4, 3, 3)],
)
def test_parallel_limit_is_a_ceiling_under_the_fleet_share(
    override: int | None, share: int, expected: int
) -> None:
    q = ModelQueue("m")
    q.parallel_override = override
    assert q.parallel_limit(share) == expected


def test_queue_limit_override_and_default() -> None:
    q = ModelQueue("m")
    assert q.queue_limit(512) == 512
    q.queue_override = 0
    assert q.queue_limit(512) == 0


def test_timing_buckets_are_cumulative() -> None:
    t = Timing()
    for seconds in (0.001, 0.2, 0.2, 400):
        t.observe(seconds)
    rows = dict(t.cumulative())
    assert rows["0.005"] == 1 and rows["0.25"] == 3 and rows[f"{BUCKETS[-1]:g}"] == 3 and rows["+Inf"] == 4
    assert t.mean_ms == pytest.approx((0.001 + 0.4 + 400) / 4 * 1000)


async def test_gate_is_first_come_first_served_under_the_limit() -> None:
    q = ModelQueue("m")
    limit = 1
    assert await q.pass_gate(lambda: limit, 1)
    order: list[int] = []

    async def enter(i: int) -> None:
        assert await q.pass_gate(lambda: limit, 5)
        order.append(i)

    waiters = [asyncio.create_task(enter(i)) for i in range(3)]
    await wait_until_async(lambda: len(q._gate) == 3, 1, what="three waiters at the gate")
    assert q.active == 1 and not order
    for passed in range(1, 4):
        q.leave()
        await wait_until_async(
            lambda passed=passed: len(order) == passed, 1, what=f"{passed} through the gate"
        )
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2] and q.active == 1


async def test_gate_times_out_and_follows_a_raised_limit() -> None:
    q = ModelQueue("m")
    limit = 0
    assert not await q.pass_gate(lambda: limit, 0.05)
    waiter = asyncio.create_task(q.pass_gate(lambda: limit, 5))
    await wait_until_async(lambda: len(q._gate) == 1, 1, what="the waiter at the gate")
    limit = 1  # no event: the waiter re-checks on its own
    assert await asyncio.wait_for(waiter, 1)
    assert q.active == 1 and not q._gate


async def test_cancelled_waiter_leaves_the_gate() -> None:
    q = ModelQueue("m")
    assert await q.pass_gate(lambda: 1, 1)
    waiter = asyncio.create_task(q.pass_gate(lambda: 1, 5))
    await wait_until_async(lambda: len(q._gate) == 1, 1, what="the waiter at the gate")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not q._gate and q.active == 1
