"""The ``fleet-limiter`` command line.

Errors end the command with one line on stderr and a non-zero exit code (2 for bad input),
never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from limiter.core.allocation import SHARE_FIELDS, Allocation, compute_allocation, json_number
from limiter.core.policy import PolicyError, PolicySpec, load_policy
from limiter.core.urls import redis_url_problem

app = typer.Typer(
    name="fleet-limiter",
    help="Rate limits and fair shares for fleets of LLM workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2

SHORT = {
    "tokensPerMinute": "TPM",
    "requestsPerMinute": "RPM",
    "tokensPerDay": "TPD",
    "requestsPerDay": "RPD",
    "maxConcurrentRequests": "concurrent",
    "memory": "memory",
}


@app.callback()
def _root() -> None:
    """Rate limits and fair shares for fleets of LLM workers."""


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print one line to stderr and exit."""
    # Whatever a policy holds (a lone surrogate, a control character) prints as one safe line.
    safe = message.encode("utf-8", "backslashreplace").decode("utf-8").replace("\n", " ")
    print(f"fleet-limiter: error: {safe}", file=sys.stderr)
    raise typer.Exit(code)


def _load(path: Path) -> PolicySpec:
    try:
        spec, _ = load_policy(path)
    except PolicyError as exc:
        fail(exc.first_line())
    return spec


@app.command()
def plan(
    policy: Annotated[
        Path, typer.Option("--policy", help="Policy file: a RateLimitPolicy manifest or its spec.")
    ],
    instances: Annotated[int, typer.Option("--instances", help="Live instances sharing the limits.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print GET /api/debug/allocation's shape.")] = False,
) -> None:
    """Print the allocation of a policy for N instances, without Redis."""
    if instances < 1:
        fail(f"--instances: {instances} is not valid: at least 1")
    spec = _load(policy)
    alloc = compute_allocation(spec, instances)
    if as_json:
        print(json.dumps(alloc.to_json(), indent=2))
        return
    render_plan(spec, alloc, Console())


def render_plan(spec: PolicySpec, alloc: Allocation, console: Console) -> None:
    """The plan as readable tables: slots per job type and model, then the model pools."""
    n = alloc.instance_count
    memory = f", memory budget {alloc.memory_budget_kb} KB" if alloc.memory_budget_kb else ""
    table = Table(title=f"Slots per instance with {n} instance{'s' if n > 1 else ''}{memory}")
    for col in ("job type", "ratio", "model", "slots", "bound by"):
        table.add_column(col, justify="right" if col in ("ratio", "slots") else "left")
    for job in spec.job_types:
        kind = "" if job.flexible else " (fixed)"
        for i, (model, share) in enumerate(alloc.slots[job.name].items()):
            table.add_row(
                job.name + kind if i == 0 else "",
                f"{job.ratio:g}" if i == 0 else "",
                model,
                str(share.slots),
                SHORT[share.binding],
            )
    console.print(table)
    pools = Table(title="Per-instance share of each model (capacity / N)")
    pools.add_column("model")
    pools.add_column("pool slots", justify="right")
    for f in SHARE_FIELDS:
        pools.add_column(SHORT[f], justify="right")
    for model, pool in alloc.pools.items():
        cells = []
        for f in SHARE_FIELDS:
            v = json_number(pool.shares.get(f))
            cells.append("-" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:,.2f}"))
        pools.add_row(model, str(pool.total_slots), *cells)
    console.print(pools)
    starved = [j.name for j in spec.job_types if all(s.slots == 0 for s in alloc.slots[j.name].values())]
    if starved:
        console.print(
            f"[yellow]warning:[/] with {n} instances, job type(s) {', '.join(starved)} get no slot on any "
            "model; raise the limits, lower the estimates or run fewer instances"
        )


@app.command()
def serve(
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy", help="Policy file; without it, the policy the operator projected into Redis."
        ),
    ] = None,
    redis: Annotated[
        str | None, typer.Option("--redis", help="Redis URL [env FLEET_LIMITER_REDIS_URL].")
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Listen address [env FLEET_LIMITER_HOST].")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port [env FLEET_LIMITER_PORT, 8080].")] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", help="Policy namespace [env FLEET_LIMITER_POLICY_NAMESPACE].")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Policy name [env FLEET_LIMITER_POLICY_NAME].")
    ] = None,
    admin_token: Annotated[
        str | None, typer.Option("--admin-token", help="Admin token [env FLEET_LIMITER_ADMIN_TOKEN].")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Run a limiter instance: the lease API, the allocation, health and metrics, on one port."""
    import asyncio
    import logging

    from limiter.fleet.settings import ServeSettings
    from limiter.redis.keys import PolicyKeys
    from limiter.serve import ServeError
    from limiter.serve import serve as run_serve

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"--log-level: {log_level!r} is not valid: debug, info, warning or error")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = ServeSettings.from_env(
            redis_url=redis,
            policy_file=str(policy) if policy else None,
            host=host,
            port=port,
            namespace=namespace,
            name=name,
            admin_token=admin_token,
        )
    except ValueError as exc:
        fail(str(exc))
    spec = None
    ns, nm = settings.namespace, settings.name
    if settings.policy_file:
        try:
            spec, meta = load_policy(settings.policy_file)
        except PolicyError as exc:
            fail(exc.first_line())
        ns, nm = ns or meta.namespace, nm or meta.name
    if not nm:
        fail("--name: a policy name is needed without --policy (or set FLEET_LIMITER_POLICY_NAME)")
    ns = ns or "default"
    try:
        PolicyKeys(ns, nm)
    except ValueError as exc:
        fail(str(exc))
    if problem := redis_url_problem(settings.redis_url):
        fail(f"--redis: {problem}")
    try:
        asyncio.run(run_serve(settings, spec, ns, nm))
    except ServeError as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        pass


@app.command()
def top(
    url: Annotated[
        list[str] | None, typer.Option("--url", help="An instance's base URL (repeatable).")
    ] = None,
    redis: Annotated[str | None, typer.Option("--redis", help="Find the instances in Redis instead.")] = None,
    policy: Annotated[
        str | None, typer.Option("--policy", help="With --redis: the policy as NS/NAME.")
    ] = None,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
) -> None:
    """A live view of a fleet: instances, job types, slots, in flight, waiting, pools. Ctrl-C quits."""
    import asyncio

    from limiter.redis.fleetstore import RedisStore
    from limiter.redis.keys import PolicyKeys
    from limiter.top import run_top

    if not url and not redis:
        fail("--url or --redis is needed")
    if interval <= 0:
        fail(f"--interval: {interval:g} is not valid: more than 0 seconds")
    store = None
    if redis:
        ns, _, name = (policy or "").partition("/")
        if not ns or not name:
            fail(f"--policy: {policy!r} is not valid: expected NAMESPACE/NAME with --redis")
        try:
            PolicyKeys(ns, name)
        except ValueError as exc:
            fail(str(exc))
        store = RedisStore.from_url(redis, ns, name)

    async def go() -> None:
        try:
            await run_top(url or [], store, interval=interval, frames=1 if once else None)
        finally:
            if store is not None:
                await store.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(go())


def main() -> None:
    """Entry point of the ``fleet-limiter`` script."""
    app()


if __name__ == "__main__":
    main()
