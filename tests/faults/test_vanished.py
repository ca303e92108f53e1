"""An instance killed (SIGKILL) or frozen (SIGSTOP) while its clients hold leases, under 3x load: the
survivors never take the vanished instance's share while those leases may still run (its ghost,
docs/fleet.md), and a frozen instance that wakes up re-joins and counts its own leases again.

Three `fleet-limiter serve` instances, one redis-server, `maxConcurrentRequests: 30`, 90 clients
holding each lease 8 s (an LLM call), counted on the clients' side. `leaseTimeoutSeconds` is 12 s:
a lease outlives its job, and the ghost of a killed instance ends at its latest lease deadline.
"""

from __future__ import annotations

import asyncio
import copy
import signal
import time
from typing import Any

import aiohttp
import pytest

from tests.faults.load import LIMIT, POLICY, Load, record, three
from tests.support.fleet import Fleet, Instance
from tests.support.http import http
from tests.support.waiting import wait_until

HOLD = 8.0
LEASE_TIMEOUT = 12
FREEZE = 8.0
VANISHING: dict[str, Any] = copy.deepcopy(POLICY)
VANISHING["instance"]["leaseTimeoutSeconds"] = LEASE_TIMEOUT


class Watched(Load):
    """The load, plus what one survivor's allocation says every 0.2 s: instances, the leases it
    counts as held by vanished instances, and its own slots."""

    def __init__(self, instances: list[Instance], survivor: Instance) -> None:
        super().__init__(instances, hold=HOLD)
        self.survivor = survivor
        self.views: list[tuple[float, int, int, int]] = []

    async def watch(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            try:
                async with session.get(
                    self.survivor.url + "/api/debug/allocation", timeout=aiohttp.ClientTimeout(total=2)
                ) as r:
                    doc = await r.json()
                held = doc["heldByVanished"].get("m", {}).get("leases", 0)
                slots = doc["slotsByJobTypeAndModel"]["a"]["m"]["slots"]
                self.views.append((self.elapsed(), doc["allocation"]["instanceCount"], held, slots))
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)

    def figures(self, fault_at: float) -> dict[str, Any]:
        """When the survivor saw the eviction, the ghost and its end, and the peak after the eviction."""
        evicted = next((t for t, n, _, _ in self.views if t >= fault_at and n == 2), None)
        ghost = [(t, held) for t, _, held, _ in self.views if held > 0]
        after = [held for t, held in self.timeline if evicted is not None and t >= evicted]
        whole = next((t for t, n, _, s in self.views if t >= (evicted or 1e9) and s * n >= LIMIT), None)
        return {
            "lease_timeout_seconds": LEASE_TIMEOUT,
            "fault_at_s": fault_at,
            "evicted_after_s": round(evicted - fault_at, 2) if evicted is not None else None,
            "ghost_leases": max((h for _, h in ghost), default=0),
            "ghost_seen_s": [ghost[0][0], ghost[-1][0]] if ghost else None,
            "max_fleet_in_flight_after_eviction": max(after, default=None),
            "survivor_slots": sorted({s for _, _, _, s in self.views}),
            # When the whole limit was divided again (the ghost timed out, or its instance re-joined).
            "share_back_after_s": round(whole - fault_at, 2) if whole is not None else None,
        }


@pytest.mark.timeout(150)
def test_a_killed_instance_s_leases_stay_counted_until_they_time_out(fresh_fleet: Fleet) -> None:
    instances = three(fresh_fleet, VANISHING, "vanishing")
    victim, survivor = instances[0], instances[1]
    load = Watched(instances, survivor)
    at = 2.0  # the first leases were granted at the start: they run 6 s more

    recovered = asyncio.run(load.run(at + LEASE_TIMEOUT + 6, victim.kill, at=at))
    figures = load.figures(at)
    record("sigkill-holding", load, recovered, figures)
    assert load.peak <= LIMIT, f"{load.peak} leases held at once against a limit of {LIMIT}"
    assert figures["evicted_after_s"] is not None, load.views
    # The victim's clients held leases when it died: the survivors counted them, then took its
    # share once they had timed out (15 slots each), well within the run.
    assert figures["ghost_leases"] >= 1, load.views
    assert load.views[-1][1:] == (2, 0, LIMIT // 2), load.views[-6:]


@pytest.mark.timeout(150)
def test_a_frozen_instance_s_leases_stay_counted_and_it_re_joins(fresh_fleet: Fleet) -> None:
    instances = three(fresh_fleet, VANISHING, "vanishing")
    victim, survivor = instances[0], instances[1]
    load = Watched(instances, survivor)
    at = 2.0  # the first leases were granted at the start: they run 6 s more
    rejoined: list[float] = []

    def freeze() -> None:
        victim.signal(signal.SIGSTOP)
        time.sleep(FREEZE)
        victim.signal(signal.SIGCONT)
        woke = time.monotonic()
        wait_until(lambda: http("GET", victim.url + "/ready", timeout=2)[0] == 200, timeout=15, interval=0.05)
        rejoined.append(round(time.monotonic() - woke, 2))

    recovered = asyncio.run(load.run(at + FREEZE + 8, freeze, at=at))
    figures = load.figures(at)
    figures |= {"frozen_s": FREEZE, "rejoined_after_s": rejoined[0]}
    record("sigstop-holding", load, recovered, figures)
    assert load.peak <= LIMIT, f"{load.peak} leases held at once against a limit of {LIMIT}"
    assert figures["evicted_after_s"] is not None and figures["ghost_leases"] >= 1, load.views
    # Woken, it re-joined: its ghost is gone and the three share the limit again.
    wait_until(lambda: all(i.allocation()["allocation"]["instanceCount"] == 3 for i in instances), timeout=10)
    assert survivor.allocation()["heldByVanished"] == {}
