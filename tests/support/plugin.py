"""The suite's shared fixtures, registered once by tests/conftest.py (``pytest_plugins``).

Redis: one private redis-server for the session (tests use policy names of their own, or flush it
first), and one of a test's own for tests that stop, restart or kill it. If redis-server is not
installed these fixtures fail with the command that installs it: the tests never skip.
Instances: a :class:`~tests.support.fleet.Fleet` of real `fleet-limiter serve` processes on the
session server (``fleet``) or on the test's own (``fresh_fleet``), closed after the test. A suite's
conftest may override a fixture by name (the operator suite runs its session server with an
append-only file).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fleet import Fleet
from tests.support.redis_server import RedisServer, new_server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's private redis-server."""
    with new_server() as server:
        yield server


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that stop, restart or kill it."""
    with new_server() as server:
        yield server


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer) -> Iterator[Fleet]:
    """Instances of one policy on the session server (started by the test), closed afterwards."""
    redis_server.start()  # no-op unless a test stopped it
    f = Fleet(tmp_path, redis_server.url)
    yield f
    f.close()


@pytest.fixture
def fresh_fleet(tmp_path: Path, fresh_redis_server: RedisServer) -> Iterator[Fleet]:
    """Instances on the test's own redis-server (``fresh_redis_server``), which the test may stop,
    restart or flush; closed afterwards."""
    f = Fleet(tmp_path, fresh_redis_server.url)
    yield f
    f.close()
