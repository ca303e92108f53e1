"""Entry point of the operator: ``fleet-limiter-operator`` or ``python -P -m limiter_operator``.

Without a command (or with ``run``): reads :class:`limiter_operator.settings.OperatorSettings` from
the environment, registers the handlers, serves the Prometheus metrics (when an address is set) and
runs kopf until SIGTERM. ``check-uninstall`` and ``release-finalizers`` are the uninstall commands of
:mod:`limiter_operator.uninstall`. Errors in the settings or the arguments end it with one line and
exit code 2; an API server that cannot be reached, with one line and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import kopf
import prometheus_client

from . import metrics
from .handlers import Context, register
from .kube import Kube
from .settings import OperatorSettings, SettingsError, is_namespace_name
from .uninstall import Policies, UninstallError, check_uninstall, release_finalizers

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


def parser() -> argparse.ArgumentParser:
    """The command line: no command (or ``run``) runs the operator."""
    top = argparse.ArgumentParser(
        prog="fleet-limiter-operator",
        description="The fleet-limiter operator (no command: run it; settings in FLEET_LIMITER_* variables).",
    )
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="run the operator (the default)")
    check = commands.add_parser(
        "check-uninstall",
        help="the chart's pre-delete hook: fail, listing them, while RateLimitPolicies exist",
        description="Exit 0 when no RateLimitPolicy is left in the namespaces the operator serves "
        "(FLEET_LIMITER_OPERATOR_NAMESPACES, else all); otherwise list them with the command that "
        "deletes them, and exit 1.",
    )
    check.add_argument(
        "--wait", type=float, default=60.0, metavar="SECONDS",
        help="how long to wait for policies that are already being deleted (default 60, 0 to 3600)",
    )  # fmt: skip
    release = commands.add_parser(
        "release-finalizers",
        help="when the operator is gone for good: remove fleetlimiter.io/finalizer from every policy",
        description="Remove the fleetlimiter.io/finalizer finalizer from every RateLimitPolicy (of the "
        "given namespaces, else of all), so that they and their namespaces can be deleted without an "
        "operator. Their pods go with them (garbage collection); their Redis keys are left.",
    )
    release.add_argument(
        "-n", "--namespace", action="append", default=[], dest="namespaces", metavar="NAMESPACE",
        help="only this namespace (repeatable); default: every namespace",
    )  # fmt: skip
    for sub in (check, release):
        sub.add_argument("--kubeconfig", help="kubeconfig file (default: in a pod its service account, "
                         "else $KUBECONFIG or ~/.kube/config)")  # fmt: skip
    return top


def _fail(message: str, code: int) -> NoReturn:
    print(f"fleet-limiter-operator: error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """The console script."""
    args = parser().parse_args(argv)
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as exc:
        _fail(str(exc), 2)
    if args.command in ("check-uninstall", "release-finalizers"):
        sys.exit(_uninstall_command(args, settings))
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


def _uninstall_command(args: argparse.Namespace, settings: OperatorSettings) -> int:
    for ns in getattr(args, "namespaces", []):
        if not is_namespace_name(ns):
            _fail(f"--namespace: {ns!r} is not a namespace name (lowercase letters, digits and '-')", 2)
    if args.kubeconfig and not Path(args.kubeconfig).is_file():
        _fail(f"--kubeconfig: {args.kubeconfig} is not a file", 2)
    if args.command == "check-uninstall" and not 0 <= args.wait <= 3600:
        _fail(f"--wait: {args.wait:g} is out of range: 0 to 3600 seconds", 2)
    try:
        policies = Policies.connect(args.kubeconfig)
        if args.command == "check-uninstall":
            return check_uninstall(policies, settings.namespaces, args.wait, print)
        return release_finalizers(policies, args.namespaces, print)
    except UninstallError as exc:
        _fail(str(exc), 1)


if __name__ == "__main__":
    main()
