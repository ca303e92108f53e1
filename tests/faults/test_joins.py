"""An instance joins a full fleet under 3x load: the shares shrink at once (30 / 2 = 15 -> 30 / 3 = 10)
but the 15 leases each old instance granted run on. The joiner must not add its 10 to the 30 already
held: every instance keeps free what the fleet holds above the new shares (the allocation record's
``excess``, docs/fleet.md "Joins") until those leases end, then the three share the limit.

Two `fleet-limiter serve` instances, one redis-server, `maxConcurrentRequests: 30`, 60 clients on
them and 30 more on the joiner once it is up, each lease held 8 s (an LLM call), counted on the
clients' side.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.faults.load import LIMIT, POLICY, Load, record
from tests.support.fleet import Fleet, Instance
from tests.support.waiting import wait_until

HOLD = 8.0
JOINER_CLIENTS = 30


class Joining(Load):
    """The load on the first instances; once the joiner is up, ``JOINER_CLIENTS`` more on it, and
    what the joiner's allocation says every 0.2 s (instances, its ceiling, leases above the shares)."""

    def __init__(self, instances: list[Instance]) -> None:
        super().__init__(instances, hold=HOLD)
        self.joiner: Instance | None = None
        self.joined_at: float | None = None
        self.views: list[tuple[float, int, int | None, int]] = []
        self.first_grant: float | None = None
        self._up = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def joined(self, joiner: Instance) -> None:
        """From the fault's thread: the joiner is up."""
        self.joiner, self.joined_at = joiner, self.elapsed()
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._up.set)

    async def watch(self, session: aiohttp.ClientSession) -> None:
        self._loop = asyncio.get_running_loop()
        await self._up.wait()
        assert self.joiner is not None
        self.urls.append(self.joiner.url)
        at = len(self.urls) - 1
        clients = [
            asyncio.create_task(self._client(session, at + len(self.urls) * k)) for k in range(JOINER_CLIENTS)
        ]
        while not self._stop.is_set():
            try:
                async with session.get(
                    self.joiner.url + "/api/debug/allocation", timeout=aiohttp.ClientTimeout(total=2)
                ) as r:
                    doc = await r.json()
                settling = doc["settling"].get("m", {})
                self.views.append(
                    (
                        self.elapsed(),
                        doc["allocation"]["instanceCount"],
                        settling.get("ceiling"),
                        settling.get("excess", 0),
                    )
                )
                granted = doc["jobTypes"]["a"]["inFlight"] if "jobTypes" in doc else None
                if self.first_grant is None and granted:
                    self.first_grant = self.elapsed()
            except (aiohttp.ClientError, TimeoutError, KeyError):
                pass
            await asyncio.sleep(0.2)
        await asyncio.gather(*clients)

    def figures(self) -> dict[str, Any]:
        joined = self.joined_at or 0.0
        after = [held for t, held in self.timeline if t >= joined]
        excess = [e for _, _, _, e in self.views]
        settled = next((t for t, n, c, e in self.views if n == 3 and c is None and t >= joined), None)
        full = next((t for t, held in self.timeline if t >= (settled or 1e9) and held >= LIMIT - 2), None)
        return {
            "joined_at_s": joined,
            "max_fleet_in_flight_after_join": max(after, default=None),
            "excess_leases": max(excess, default=0),
            "settled_after_s": round(settled - joined, 2) if settled is not None else None,
            "full_again_after_s": round(full - joined, 2) if full is not None else None,
        }


@pytest.mark.timeout(150)
def test_a_join_under_load_never_adds_its_share_to_a_full_fleet(fresh_fleet: Fleet) -> None:
    fresh_fleet.write_policy("joins", POLICY)
    first = fresh_fleet.start(2)
    wait_until(lambda: all(i.allocation()["allocation"]["instanceCount"] == 2 for i in first), timeout=5)
    load = Joining(first)
    at = 2.0  # the first leases were granted at the start: they run 6 s more

    def join() -> None:
        load.joined(fresh_fleet.start(1)[0])

    recovered = asyncio.run(load.run(at + HOLD + 8, join, at=at))
    figures = load.figures()
    record("join-holding", load, recovered, figures)
    assert load.peak <= LIMIT, f"{load.peak} leases held at once against a limit of {LIMIT}"
    # The old instances held 15 each when the joiner came: 2 * (15 - 10) above the new shares.
    assert figures["excess_leases"] >= 1, load.views
    # Those leases ended (8 s): the three share the whole limit, the joiner too.
    assert figures["settled_after_s"] is not None, load.views
    assert load.views[-1][1:] == (3, None, 0), load.views[-6:]
