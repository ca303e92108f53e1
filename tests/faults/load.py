"""The load of the fault tests: 90 clients against three real instances sharing a limit of 30
concurrent requests (3x), counting on the clients' side the leases held at once across the fleet
(the true fleet concurrency), and the results files each case writes.

Every case writes tests/results/faults/<case>.json (git-ignored, with the timeline); `make docs`
collects their figures into the committed docs/faults.json and renders the table of docs/fleet.md
from it (tests/faults/report.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.fleet import Fleet, Instance
from tests.support.waiting import wait_until

LIMIT = 30
CLIENTS = 90
RESULTS = Path(__file__).parents[1] / "results" / "faults"
POLICY: dict[str, Any] = {
    "models": [{"name": "m", "limits": {"maxConcurrentRequests": LIMIT}}],
    "jobTypes": [{"name": "a", "ratio": 1, "queue": {"maxWaiting": 100, "maxWaitSeconds": 2}}],
    "instance": {"heartbeatSeconds": 0.5, "instanceTimeoutSeconds": 2},
}


class Load:
    """``CLIENTS`` loops acquiring (wait 1 s), holding ``hold`` seconds and releasing, spread over the
    instances; counts what is held at once, on the clients' side.

    A client whose instance refuses connections (killed) moves on to the next instance, as a
    client behind a Service would; a release that fails is dropped (the lease then times out on
    the instance, if it still lives)."""

    def __init__(self, instances: list[Instance], hold: float = 0.2) -> None:
        self.urls = [i.url for i in instances]
        self.hold = hold
        self.held = 0
        self.peak = 0
        self.admitted = 0
        self.refused = 0
        self.errors: list[str] = []
        self.timeline: list[tuple[float, int]] = []
        self.started = time.monotonic()
        self._stop = asyncio.Event()

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 2)

    async def _client(self, session: aiohttp.ClientSession, n: int) -> None:
        url = self.urls[n % len(self.urls)]
        while not self._stop.is_set():
            try:
                async with session.post(
                    url + "/api/jobs/acquire", json={"jobType": "a", "waitSeconds": 1}
                ) as r:
                    doc = await r.json()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.errors.append(type(exc).__name__)
                if isinstance(exc, aiohttp.ClientConnectorError):
                    url = self.urls[(self.urls.index(url) + 1) % len(self.urls)]
                await asyncio.sleep(0.1)
                continue
            if status != 200:
                self.refused += 1
                await asyncio.sleep(0.05)
                continue
            self.admitted += 1
            self.held += 1
            self.peak = max(self.peak, self.held)
            try:
                await asyncio.sleep(self.hold)
            finally:
                self.held -= 1
                try:
                    async with session.post(url + f"/api/jobs/{doc['leaseId']}/release", json={}) as r:
                        await r.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.errors.append(f"release: {type(exc).__name__}")

    async def _sample(self) -> None:
        while not self._stop.is_set():
            self.timeline.append((self.elapsed(), self.held))
            await asyncio.sleep(0.05)

    async def watch(self, session: aiohttp.ClientSession) -> None:
        """Runs beside the clients until the load stops (subclasses observe the instances here)."""

    async def run(self, seconds: float, fault: Callable[[], Any], at: float) -> float:
        """Run the load for ``seconds``, calling ``fault`` (in a thread) after ``at`` seconds; returns
        how long after the fault the fleet admitted again."""
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
            self.started = time.monotonic()
            tasks = [asyncio.create_task(self._client(session, n)) for n in range(CLIENTS)]
            sampler = asyncio.create_task(self._sample())
            watcher = asyncio.create_task(self.watch(session))
            await asyncio.sleep(at)
            before = self.admitted
            fault_at = time.monotonic()
            await asyncio.to_thread(fault)
            recovered = None
            while time.monotonic() - self.started < seconds:
                await asyncio.sleep(0.05)
                if recovered is None and self.admitted > before + LIMIT:
                    recovered = time.monotonic() - fault_at
            self._stop.set()
            await asyncio.gather(*tasks, sampler, watcher)
        return recovered if recovered is not None else float("inf")


def machine() -> dict[str, Any]:
    """What the figures were measured on (the machine may be shared: the load average says)."""
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "redis": redis.split(" v=")[-1].split()[0] if " v=" in redis else redis,
        "platform": platform.system(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def record(case: str, load: Load, recovered: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write tests/results/faults/<case>.json: the figures, the machine, the time and the timeline."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "case": case,
        "limit": LIMIT,
        "clients": CLIENTS,
        "instances": 3,
        "hold_seconds": load.hold,
        "max_fleet_in_flight": load.peak,
        "admitted": load.admitted,
        "refused": load.refused,
        "client_errors": len(load.errors),
        "recovered_after_s": round(recovered, 2) if recovered != float("inf") else None,
        **(extra or {}),
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (RESULTS / f"{case}.json").write_text(json.dumps({**doc, "timeline": load.timeline}) + "\n")
    print(json.dumps(doc))
    return doc


def three(fleet: Fleet, policy: dict[str, Any] = POLICY, name: str = "faults") -> list[Instance]:
    fleet.write_policy(name, policy)
    instances = fleet.start(3)
    wait_until(lambda: all(i.allocation()["allocation"]["instanceCount"] == 3 for i in instances), timeout=5)
    return instances
