"""A Redis replica promoted after its primary is killed, under 3x load: the fleet never admits more
than the limit and serves again on the new primary (issue: never over-admit).

The instances reach Redis through a TCP forwarder on 127.0.0.1, a stand-in for the Kubernetes
Service (or Sentinel-aware proxy) that points clients at the current primary: at the failover the
test kills the primary (SIGKILL), promotes the replica (REPLICAOF NO ONE), and points the forwarder
at it, dropping every open connection as a Service's endpoints change would.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.faults.load import LIMIT, POLICY, Load, record
from tests.support.fleet import Fleet, Instance
from tests.support.forwarder import Forwarder
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until


def whole(instances: list[Instance]) -> bool:
    return all(i.allocation()["allocation"]["instanceCount"] == 3 for i in instances)


@pytest.mark.timeout(120)
def test_a_promoted_replica_never_over_admits(tmp_path: Path, pair: tuple[RedisServer, RedisServer]) -> None:
    primary, replica = pair
    forwarder = Forwarder(primary.port)
    fleet = Fleet(tmp_path, forwarder.url)
    try:
        fleet.write_policy("failover", POLICY)
        instances = fleet.start(3)
        wait_until(
            lambda: all(i.allocation()["allocation"]["instanceCount"] == 3 for i in instances), timeout=5
        )
        load = Load(instances)
        failed_over: list[float] = []

        def failover() -> None:
            primary.kill()
            replica.command("REPLICAOF", "NO", "ONE")
            forwarder.point(replica.port)
            failed_over.append(time.monotonic())

        recovered = asyncio.run(load.run(16, failover, at=4))
        record("replica-promoted", load, recovered)
        assert load.peak <= LIMIT, f"{load.peak} leases held at once against a limit of {LIMIT}"
        assert recovered < 10, recovered
        # The fleet is whole again on the new primary.
        wait_until(
            lambda: all(i.allocation()["allocation"]["instanceCount"] == 3 for i in instances), timeout=10
        )
    finally:
        fleet.close()
        forwarder.close()
