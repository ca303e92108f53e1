"""Redis plumbing shared by every store: the client, the Lua scripts, outages and the retry policy.

Every store (:class:`~limiter.redis.fleetstore.RedisStore`, :class:`~limiter.redis.creditstore.CreditStore`)
talks to Redis through :func:`connect` and :func:`call`, so one policy holds everywhere:

* Timeouts are short (connect 2 s, reply 5 s) so an outage shows within seconds.
* redis-py's own retries are off (``Retry(NoBackoff(), 0)``): a script whose reply was lost may have
  run, and only the caller knows whether running it twice is safe.
* After a *connection* error (typically a pooled connection the server closed when it restarted) a
  call marked ``retry=True`` is sent once more on a fresh connection. Timeouts are never repeated:
  the first call may still be running.
* Every outage (refused, timed out, loading its data, connection lost, a read-only replica after a
  failover) becomes :class:`StoreUnavailable`, naming the server and the operation, with the
  redis-py exception as ``__cause__``.

Scripts live in ``limiter/redis/lua/``; Redis scripts cannot import each other, so each script is sent
with the library files it needs prepended (:func:`script_source`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import TypeVar

import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

T = TypeVar("T")

#: redis-py errors that mean "Redis is not there right now" rather than a bug in a call.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    rex.ConnectionError,  # also BusyLoadingError: Redis is loading its data after a restart
    rex.TimeoutError,
    rex.ReadOnlyError,  # a replica promoted or demoted during a failover
    OSError,
)


class StoreUnavailable(Exception):
    """Redis cannot be reached; the message names the server and the operation."""


def connect(url: str, client_name: str) -> aioredis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``) with the shared policy."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),  # no blind retries: see the module docstring
        client_name=client_name,
    )


def server_of(client: aioredis.Redis) -> str:
    """Where ``client`` connects (host:port or socket path, never credentials), for messages."""
    kwargs = client.connection_pool.connection_kwargs
    return str(kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}")


@functools.cache
def script_source(name: str, libraries: tuple[str, ...]) -> str:
    """The text of script ``name`` with its ``libraries`` prepended (read once per process)."""
    folder = resources.files("limiter.redis").joinpath("lua")
    return "\n".join(
        folder.joinpath(f"{part}.lua").read_text(encoding="utf-8") for part in (*libraries, name)
    )


def register_scripts(
    client: aioredis.Redis, scripts: Mapping[str, tuple[str, tuple[str, ...]]]
) -> dict[str, AsyncScript]:
    """Register ``{name: (file, libraries)}`` on ``client``; scripts are sent by SHA, loaded on demand."""
    return {
        name: client.register_script(script_source(file, libraries))
        for name, (file, libraries) in scripts.items()
    }


async def call(server: str, operation: str, fn: Callable[[], Awaitable[T]], *, retry: bool) -> T:
    """Run ``fn``, translating outages into :class:`StoreUnavailable`; with ``retry``, once more on a
    fresh connection after a connection error (only for calls that are safe to run twice)."""
    for attempt in (1, 2):
        try:
            return await fn()
        except UNAVAILABLE as exc:
            if retry and attempt == 1 and isinstance(exc, rex.ConnectionError):
                continue
            raise StoreUnavailable(f"Redis at {server} is unavailable ({operation}): {exc}") from exc
    raise AssertionError("unreachable")


async def run_script(
    server: str,
    script: AsyncScript,
    operation: str,
    keys: Sequence[str],
    args: Sequence[str | int],
    *,
    retry: bool,
) -> object:
    """Run a registered script through :func:`call`."""
    return await call(server, operation, lambda: script(keys=list(keys), args=list(args)), retry=retry)
