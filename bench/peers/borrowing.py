"""Borrowing utilisation (fleet-limiter only; the peers have no job types to lend between): the share
of a model's slots in use under imbalanced load, with two flexible job types versus the same two
fixed (a static split).

One `LimiterInstance` in this process on the benchmark's Redis (borrowing is local to an instance):
model ``b`` with ``maxConcurrentRequests = SLOTS``, job types ``busy`` and ``light`` at 0.5 each.
``busy`` has twice as many workers as there are slots, each holding a slot for ``HOLD`` seconds
back to back; ``light`` has one worker that holds a slot for ``HOLD`` then idles for ``10 * HOLD``.
Utilisation is the slot-seconds held divided by ``SLOTS * elapsed``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from limiter.core.policy import parse_policy
from limiter.fleet.instance import LimiterInstance, NoCapacity
from limiter.fleet.settings import ServeSettings
from limiter.redis.fleetstore import RedisStore

SLOTS = 20
HOLD = 0.02


def spec(flexible: bool) -> dict[str, Any]:
    job = {"estimate": {"requests": 1}, "flexible": flexible, "queue": {"maxWaiting": 1000}}
    return {
        "models": [{"name": "b", "limits": {"maxConcurrentRequests": SLOTS}}],
        "jobTypes": [{"name": "busy", "ratio": 0.5, **job}, {"name": "light", "ratio": 0.5, **job}],
        "instance": {"heartbeatSeconds": 1, "instanceTimeoutSeconds": 3},
    }


async def utilisation(redis_url: str, flexible: bool, seconds: float) -> dict[str, Any]:
    policy, _ = parse_policy(spec(flexible))
    name = "borrow-flexible" if flexible else "borrow-static"
    store = RedisStore.from_url(redis_url, "bench", name)
    inst = LimiterInstance(ServeSettings(instance_id=name), store, policy)
    await inst.run()
    held = {"busy": 0.0, "light": 0.0}
    jobs = {"busy": 0, "light": 0}
    deadline = time.monotonic() + seconds

    async def worker(job_type: str, idle: float) -> None:
        while time.monotonic() < deadline:
            try:
                ticket = await inst.acquire(job_type, wait_seconds=max(0.01, deadline - time.monotonic()))
            except NoCapacity:
                continue
            t0 = time.monotonic()
            await asyncio.sleep(HOLD)
            await inst.release(ticket.id, {"requests": 1})
            held[job_type] += time.monotonic() - t0
            jobs[job_type] += 1
            if idle:
                await asyncio.sleep(idle)

    t0 = time.monotonic()
    workers = [worker("busy", 0.0) for _ in range(2 * SLOTS)] + [worker("light", 10 * HOLD)]
    await asyncio.gather(*workers)
    elapsed = time.monotonic() - t0
    await inst.stop()
    await store.close()
    return {
        "flexible": flexible,
        "slots": SLOTS,
        "seconds": elapsed,
        "jobs": jobs,
        "utilisation": (held["busy"] + held["light"]) / (SLOTS * elapsed),
        "busy_share": held["busy"] / (SLOTS * elapsed),
        "light_share": held["light"] / (SLOTS * elapsed),
    }
