"""An acknowledged consume survives a Redis crash with the append-only file on (docs/credits.md,
"Durability"): Redis runs with appendonly yes and appendfsync always, as the chart's credits
setting does, is killed with SIGKILL (nothing flushed at shutdown) and started again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.credits.conftest import call, new_key, put_key, start_nodes
from tests.support.redis_server import new_server
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]


async def test_acknowledged_consumes_survive_a_redis_crash(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    with new_server(appendonly=True, appendfsync="always") as redis:
        assert b"always" in redis.command("CONFIG", "GET", "appendfsync")
        nodes = start_nodes(tmp_path, redis.url, 1, "credits-durable")
        try:
            base = nodes.url(0)
            key = new_key("durable")
            await put_key(session, base, key, credits=100)
            for i in range(7):
                body = {"cost": 3, **({"requestId": "last"} if i == 6 else {})}
                status, doc, _ = await call(session, "POST", f"{base}/api/keys/{key}/consume", body)
                assert status == 200 and doc["remaining"] == 100 - 3 * (i + 1)
            status, held, _ = await call(
                session, "POST", f"{base}/api/keys/{key}/reservations", {"amount": 10}
            )
            assert status == 200

            redis.kill()  # a crash: only what appendfsync already wrote survives
            redis.start()

            async def answered() -> tuple[int, Any, dict[str, str]] | None:
                answer = await call(session, "GET", f"{base}/api/keys/{key}", admin=True)
                return answer if answer[0] == 200 else None

            # The instance reconnects by itself; allow a 503 while it does.
            status, state, _ = await wait_until_async(
                answered, 20, interval=0.2, what="the key's state after the crash"
            )
            assert (state["remaining"], state["reserved"], state["totals"]["consumed"]) == (69, 10, 21)
            # The idempotency record and the reservation survived too.
            status, doc, _ = await call(
                session, "POST", f"{base}/api/keys/{key}/consume", {"cost": 3, "requestId": "last"}
            )
            assert status == 200 and doc["replayed"] is True and doc["remaining"] == 79
            settle = f"{base}/api/keys/{key}/reservations/{held['reservationId']}/settle"
            status, doc, _ = await call(session, "POST", settle, {"actual": 4})
            assert status == 200 and doc["remaining"] == 75
        finally:
            nodes.fleet.close()
