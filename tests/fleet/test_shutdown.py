"""An instance's shutdown never waits for ever on a task that missed its cancellation.

bench/fleet_scale.py found it: with 100 instances in one process, stopping one that had just
joined waited on its subscription task for ever. The task was "cancelling" but back in a read of the
policy's channel: a cancellation that lands as a read's own timeout expires can be swallowed
(Python 3.11's ``asyncio.timeout`` turns it into a TimeoutError, and redis-py's read then returns
None). stop() now tells the subscription to end at its next poll and cancels again whatever still
runs (:func:`limiter.fleet.instance.cancel_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from limiter.fleet.instance import cancel_all


async def test_a_task_that_swallows_its_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # what a swallowed cancellation looks like to the task

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    t0 = time.monotonic()
    await asyncio.wait_for(cancel_all([task], every=0.05), 5)
    assert task.cancelled() and swallowed == 1
    assert time.monotonic() - t0 < 1


async def test_cancel_all_gives_up_on_a_task_that_never_ends_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def deaf() -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    task = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all([task], rounds=3, every=0.01), 5)
    assert not task.done()
    assert "tasks still running after shutdown" in caplog.text
    task.get_coro().close()  # type: ignore[union-attr]
