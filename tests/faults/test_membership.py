"""Faults under 3x load on real processes: the fleet never admits more than a limit while its
membership is rebuilt (issue: never over-admit). Each case runs three `fleet-limiter serve`
instances on a private redis-server, drives 90 clients at a limit of 30 concurrent requests, injects
the fault mid-run and counts, on the clients' side, the leases held at once across the fleet (the
true fleet concurrency). The figures go to tests/results/faults/<case>.json (tests/faults/load.py).

Covered here: FLUSHALL, a Redis restart without persistence, a 20 s outage; test_failover.py: a
replica promoted after its primary is killed; test_vanished.py: an instance killed or frozen while
its clients' leases run on.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.load import LIMIT, Load, record, three
from tests.support.fleet import Fleet
from tests.support.redis_server import RedisServer


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["flushall", "restart-empty"])
def test_redis_losing_its_data_never_over_admits(
    fresh_fleet: Fleet, fresh_redis_server: RedisServer, fault: str
) -> None:
    instances = three(fresh_fleet)
    load = Load(instances)

    def inject() -> None:
        if fault == "flushall":
            fresh_redis_server.command("FLUSHALL")
        else:
            fresh_redis_server.restart(flush=True)

    recovered = asyncio.run(load.run(14, inject, at=4))
    record(fault, load, recovered)
    assert load.peak <= LIMIT, f"{load.peak} leases held at once against a limit of {LIMIT}"
    assert load.admitted > 0 and recovered < 8, (load.admitted, recovered)


@pytest.mark.timeout(150)
def test_a_20_second_outage_never_over_admits(fresh_fleet: Fleet, fresh_redis_server: RedisServer) -> None:
    instances = three(fresh_fleet)
    load = Load(instances)

    def outage() -> None:
        fresh_redis_server.stop()
        time.sleep(20)
        fresh_redis_server.start()

    recovered = asyncio.run(load.run(34, outage, at=4))
    record("outage-20s", load, recovered)
    assert load.peak <= LIMIT, f"{load.peak} leases held at once against a limit of {LIMIT}"
    # Back within the settle time after Redis returns (timeout + 2 heartbeats), plus the outage.
    assert recovered < 20 + 8, recovered
