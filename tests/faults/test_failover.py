"""A Redis replica promoted after its primary is killed, under 3x load: the fleet never admits more
than the limit and serves again on the new primary (issue: never over-admit).

The instances reach Redis through a TCP forwarder on 127.0.0.1, a stand-in for the Kubernetes
Service (or Sentinel-aware proxy) that points clients at the current primary: at the failover the
test kills the primary (SIGKILL), promotes the replica (REPLICAOF NO ONE), and points the forwarder
at it, dropping every open connection as a Service's endpoints change would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.load import LIMIT, POLICY, Load, record
from tests.support.fleet import Fleet, Instance
from tests.support.redis_server import RedisServer, free_port, new_server
from tests.support.waiting import wait_until


class Forwarder:
    """Forwards 127.0.0.1:<port> to a Redis server; :meth:`point` switches it and drops connections."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def point(self, target: int) -> None:
        self.target = target
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.point(self.target)


def whole(instances: list[Instance]) -> bool:
    return all(i.allocation()["allocation"]["instanceCount"] == 3 for i in instances)


@pytest.fixture
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    with new_server() as primary, new_server() as replica:
        replica.command("REPLICAOF", "127.0.0.1", str(primary.port))
        wait_until(lambda: b"master_link_status:up" in replica.command("INFO", "replication"), timeout=10)
        yield primary, replica


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
