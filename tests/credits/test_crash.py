"""A node killed (SIGKILL) mid-run: no credit lost, none spent twice, and the reservations made
through it come back at their deadline.

Clients send consumes with request ids over three instances; when one instance dies, the calls it
had in flight fail (connection reset) and are retried with the same request id on the others, as
a client should. Whatever the dead node had charged before dying is replayed, never charged again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.credits.conftest import call, get_key, new_key, put_key, start_nodes
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]

#: 400 consumes of 5 fit in 2000 credits; 100 of them are first held by the victim's reservations.
CREDITS, COST, REQUESTS = 2000, 5, 600
HELD, HOLD, HOLD_SECONDS = 5, 100, 15  # the run must end before the holds expire (it takes 1-5 s)


async def test_a_node_killed_mid_run_loses_no_credit_and_spends_none_twice(
    tmp_path: Path, redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    nodes = start_nodes(tmp_path, redis_server.url, 3, "credits-crash")
    try:
        victim, *survivors = nodes.instances
        key = new_key("crash")
        await put_key(session, survivors[0].url, key, credits=CREDITS)
        # Work in flight on the victim: reservations it will never settle.
        for _ in range(HELD):
            status, doc, _ = await call(
                session,
                "POST",
                f"{victim.url}/api/keys/{key}/reservations",
                {"amount": HOLD, "ttlSeconds": HOLD_SECONDS},
            )
            assert status == 200, doc
        reserved_at = time.monotonic()

        done = 0
        retried = 0
        a_third_done = asyncio.Event()
        final: dict[str, tuple[int, dict[str, Any]]] = {}
        limit = asyncio.Semaphore(60)

        async def one(i: int) -> None:
            nonlocal done, retried
            body = {"cost": COST, "requestId": f"req-{i}"}
            targets = [nodes.instances[i % 3], *survivors, *survivors]
            async with limit:
                for attempt, inst in enumerate(targets):
                    if attempt:
                        retried += 1
                    try:
                        status, doc, _ = await call(
                            session, "POST", f"{inst.url}/api/keys/{key}/consume", body
                        )
                    except (TimeoutError, aiohttp.ClientError):
                        continue  # the victim died under this call: retry elsewhere, same id
                    if status == 503:
                        continue
                    final[body["requestId"]] = (status, doc)
                    break
            done += 1
            if done >= REQUESTS // 3:
                a_third_done.set()

        async def kill_midway() -> None:
            await a_third_done.wait()
            victim.kill()

        await asyncio.gather(kill_midway(), *(one(i) for i in range(REQUESTS)))
        took = time.monotonic() - reserved_at
        assert took < HOLD_SECONDS, f"the run took {took:.1f} s: the victim's holds expired during it"
        assert victim.process.poll() is not None
        assert retried > 0 and len(final) == REQUESTS  # every request got a definite answer
        statuses = Counter(status for status, _ in final.values())
        allowed = (CREDITS - HELD * HOLD) // COST
        assert statuses == Counter({200: allowed, 429: REQUESTS - allowed}), statuses

        state = await get_key(session, survivors[0].url, key)
        # Exactly one charge per allowed request id, retried or not.
        assert state["totals"]["consumed"] == allowed * COST
        assert (state["remaining"], state["reserved"]) == (0, HELD * HOLD)

        # The victim's reservations come back at their deadline (Redis time), to the credit.
        await asyncio.sleep(max(0.0, reserved_at + HOLD_SECONDS + 0.3 - time.monotonic()))
        state = await get_key(session, survivors[1].url, key)
        assert (state["remaining"], state["reserved"], state["openReservations"]) == (HELD * HOLD, 0, 0)
        assert state["totals"]["expiredReservations"] == HELD
        assert state["remaining"] + state["totals"]["consumed"] == CREDITS
    finally:
        nodes.fleet.close()
