"""Entry point of the operator: ``fleet-limiter-operator`` or ``python -P -m limiter_operator``.

Reads :class:`limiter_operator.settings.OperatorSettings` from the environment, registers the
handlers, serves the Prometheus metrics (when an address is set) and runs kopf until SIGTERM.
Errors in the settings end it with one line and exit code 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

import kopf
import prometheus_client

from . import metrics
from .handlers import Context, register
from .kube import Kube
from .settings import OperatorSettings, SettingsError

log = logging.getLogger("fleet_limiter.operator")


class QuietTimers(logging.Filter):
    """Drops kopf's "Timer 'refresh' succeeded." line, logged for every policy at every tick;
    failures and everything the handlers log still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Timer ") and message.endswith(" succeeded."))


async def run(settings: OperatorSettings) -> None:
    """Run the operator until it is stopped."""
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    context = Context(settings=settings, kube=Kube.from_environment())
    where = "every namespace" if settings.clusterwide else ", ".join(settings.namespaces)
    peering = (
        "standalone"
        if settings.standalone
        else (f"peering {settings.peering_name!r} with priority {settings.peering_priority}")
    )
    log.info("fleet-limiter operator serving RateLimitPolicies in %s (%s)", where, peering)
    runner = None
    if settings.metrics_address:
        runner = await metrics.serve(settings.metrics_address, context.metrics.registry)
        log.info("Prometheus metrics on http://%s/metrics", settings.metrics_address)
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=settings.clusterwide,
            namespaces=list(settings.namespaces),
            standalone=settings.standalone,
            peering_name=None if settings.standalone else settings.peering_name,
            priority=settings.peering_priority,
            liveness_endpoint=(
                f"http://{settings.health_address}/healthz" if settings.health_address else None
            ),
            memo=kopf.Memo(ctx=context),
        )
    finally:
        if runner is not None:
            await runner.cleanup()


def main() -> None:
    """The console script."""
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as exc:
        print(f"fleet-limiter-operator: error: {exc}", file=sys.stderr)
        sys.exit(2)
    # kopf's handler on the root logger: one line per message, prefixed with the policy it is about.
    kopf.configure(verbose=settings.log_level == "DEBUG", log_prefix=True)
    logging.getLogger().setLevel(settings.log_level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(QuietTimers())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # a line per liveness probe
    # A *_created series per counter would double the series of the text format for nothing.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(settings))


if __name__ == "__main__":
    main()
