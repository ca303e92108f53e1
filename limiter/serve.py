"""``fleet-limiter serve``: one instance's HTTP server and fleet membership, with graceful shutdown.

On SIGTERM (or Ctrl-C) the instance stops taking new work, leaves the fleet at once (the others
take its share within one published message), lets in-flight leases finish within
``shutdown_grace_seconds`` while still answering their releases, hands back the rest, and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from limiter.app import build_app
from limiter.core.policy import PolicySpec
from limiter.fleet.instance import LimiterInstance
from limiter.fleet.settings import ServeSettings
from limiter.redis.fleetstore import RedisStore

log = logging.getLogger("fleet_limiter.serve")


class ClientErrorsInOneLine(logging.Filter):
    """aiohttp logs a malformed request (a NUL in a header, a bad request line) with a traceback at
    ERROR, although it answers the client 400 itself: that is the client's error, not the server's,
    so it becomes one WARNING line without a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "malformed request answered with %s: %s", (exc.code, exc.message)
            record.exc_info, record.exc_text = None, None
        return True


class ServeError(Exception):
    """The server cannot start (a port in use, a bad address); the message says which."""


async def serve(settings: ServeSettings, spec: PolicySpec | None, namespace: str, name: str) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    logging.getLogger("aiohttp.server").addFilter(ClientErrorsInOneLine())
    store = RedisStore.from_url(settings.redis_url, namespace, name)
    instance = LimiterInstance(settings, store, spec)
    # handler_cancellation: a client that disconnects cancels its handler, so a request queued for
    # a slot leaves the queue and a proxied request stops its upstream call and settles its lease.
    runner = web.AppRunner(
        build_app(instance),
        handle_signals=False,
        access_log=None,
        shutdown_timeout=1.0,
        handler_cancellation=True,
        keepalive_timeout=settings.idle_timeout_seconds,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ServeError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from None
        log.info("instance %s listening on http://%s:%d", settings.instance_id, settings.host, settings.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        join = asyncio.create_task(instance.run(), name="join")
        await stop.wait()
        log.info("shutting down: leaving the fleet, draining leases")
        await instance.stop()
        join.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await join
    finally:
        await runner.cleanup()
        await store.close()
    log.info("instance %s stopped", settings.instance_id)
