"""An asyncio event loop in a thread of its own, for what must keep time while a test blocks.

The fleet watch and the job load run there, so a test's blocking ``kubectl`` calls never delay a
measurement or a job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    """An asyncio event loop in a thread of its own, closed with everything it ran."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="e2e-loop", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run a coroutine in the loop; its future is the test thread's handle."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine in the loop and wait for its result."""
        return self.submit(coro).result(timeout)

    async def _cancel_all(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Cancel every task, stop the loop and its thread pool, close it."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(concurrent.futures.TimeoutError):
            self.call(self._cancel_all(), timeout=15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(15)
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()
