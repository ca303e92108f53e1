"""Fixtures of the fault tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer, new_server
from tests.support.waiting import wait_until


@pytest.fixture
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and its replica, replicating."""
    with new_server() as primary, new_server() as replica:
        replica.command("REPLICAOF", "127.0.0.1", str(primary.port))
        wait_until(lambda: b"master_link_status:up" in replica.command("INFO", "replication"), timeout=10)
        yield primary, replica
