"""Waiting for a condition instead of sleeping for a guessed time.

``wait_until`` polls a check until it returns something truthy and returns that; after ``timeout``
seconds it fails the test naming what it waited for and the check's last answer. Tests that
measure how long something took time the call themselves. ``wait_until_async`` is the same loop
for checks that need the event loop to run in between (in-process tasks, async clients).
``wait_for_fresh_minute`` is the one deliberate sleep: a window must not end mid-test.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tests.support.redis_server import RedisServer

T = TypeVar("T")


def _timed_out(what: str, timeout: float, last: Any) -> AssertionError:
    return AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def wait_until(
    check: Callable[[], T], timeout: float, *, interval: float = 0.02, what: str = "the condition"
) -> T:
    """Poll ``check()`` every ``interval`` seconds until it returns something truthy, and return it."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, last)
        time.sleep(interval)


async def wait_until_async(
    check: Callable[[], T | Awaitable[T]],
    timeout: float,  # noqa: ASYNC109 (a deadline that fails the test naming what, not a cancel scope)
    *,
    interval: float = 0.02,
    what: str = "the condition",
) -> T:
    """:func:`wait_until` without blocking the event loop; ``check`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        last: T = await answer if inspect.isawaitable(answer) else answer
        if last:
            return last
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, last)
        await asyncio.sleep(interval)


def wait_for_fresh_minute(redis: RedisServer, need_seconds: float) -> None:
    """Sleep until the current UTC minute by Redis's clock has ``need_seconds`` left, so a test of
    per-minute budgets stays inside one window (the windows are UTC minutes of Redis TIME)."""
    now = float(redis.command("TIME").split(b"\r\n")[2])
    left = 60 - now % 60
    if left < need_seconds:
        time.sleep(left + 0.2)
