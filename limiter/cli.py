"""The ``fleet-limiter`` command line.

Errors end the command with one line on stderr and a non-zero exit code (2 for bad input),
never a traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from typer._click.exceptions import (
    BadOptionUsage,
    BadParameter,
    MissingParameter,
    NoArgsIsHelpError,
    NoSuchOption,
    UsageError,
)

from limiter.core.allocation import SHARE_FIELDS, Allocation, compute_allocation, json_number
from limiter.core.policy import ObjectMeta, PolicyError, PolicySpec, load_policy
from limiter.core.urls import redis_url_problem
from limiter.fleet.settings import ServeSettings

app = typer.Typer(
    name="fleet-limiter",
    help="Rate limits and fair shares for fleets of LLM workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2
#: ``serve``'s defaults, as the settings apply them (shown in ``--help``).
DEFAULTS = ServeSettings(instance_id="-")

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
    return _load_with_meta(path)[0]


def _load_with_meta(path: Path) -> tuple[PolicySpec, ObjectMeta]:
    try:
        return load_policy(path)
    except PolicyError as exc:
        fail(exc.first_line())


@app.command()
def plan(
    policy: Annotated[
        Path, typer.Option("--policy", help="Policy file: a RateLimitPolicy manifest or its spec.")
    ],
    instances: Annotated[int, typer.Option("--instances", help="Live instances sharing the limits.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print GET /api/debug/allocation's shape.")] = False,
) -> None:
    """Print the allocation of a policy for N instances, without Redis."""
    spec = _load(policy)  # the file first: what a user fixes first
    if instances < 1:
        fail(f"--instances: {instances} is not valid: at least 1")
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


def _shown(env: str, default: object | None = None) -> str:
    """The ``[env ...] [default: ...]`` tail of an option's help (brackets escaped for rich)."""
    tail = f" \\[env {env}]"
    return tail + (f" \\[default: {default}]" if default is not None else "")


@app.command()
def serve(
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            help="Policy file; without it, the policy the operator projected into Redis for "
            "--namespace/--name." + _shown("FLEET_LIMITER_POLICY_FILE"),
        ),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option("--redis", help="Redis URL." + _shown("FLEET_LIMITER_REDIS_URL", DEFAULTS.redis_url)),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="Listen address (in a pod: POD_IP)." + _shown("FLEET_LIMITER_HOST", DEFAULTS.host),
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port." + _shown("FLEET_LIMITER_PORT", DEFAULTS.port))
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            help="Policy namespace."
            + _shown("FLEET_LIMITER_POLICY_NAMESPACE", "the file's metadata.namespace, else default"),
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Policy name; needed without --policy."
            + _shown("FLEET_LIMITER_POLICY_NAME", "the file's metadata.name"),
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token",
            help="Bearer token of the admin endpoints."
            + _shown("FLEET_LIMITER_ADMIN_TOKEN", "none: admin endpoints answer 401"),
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Run a limiter instance: the lease API, the proxy, the allocation, health and metrics, on one port."""
    # Checks run in the order a user fixes them: the policy file, the policy's name, then the
    # Redis URL, the port and the log level.
    import asyncio
    import logging

    from limiter.redis.keys import PolicyKeys
    from limiter.serve import ServeError
    from limiter.serve import serve as run_serve

    spec = meta = None
    if policy is not None:
        spec, meta = _load_with_meta(policy)
    if port is not None and not 0 < port < 65536:
        port_problem: str | None = f"--port: {port} is not valid: 1 to 65535"
        port = None  # reported after the checks that come first
    else:
        port_problem = None
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
        settings_problem: str | None = str(exc)
        settings = None
    else:
        settings_problem = None
    if spec is None and settings is not None and settings.policy_file:  # from FLEET_LIMITER_POLICY_FILE
        spec, meta = _load_with_meta(Path(settings.policy_file))
    ns = namespace or (settings.namespace if settings else None) or (meta.namespace if meta else None)
    nm = name or (settings.name if settings else None) or (meta.name if meta else None)
    if not nm:
        fail("--name: a policy name is needed without --policy (or set FLEET_LIMITER_POLICY_NAME)")
    ns = ns or "default"
    try:
        PolicyKeys(ns, nm)
    except ValueError as exc:
        fail(str(exc))
    redis_url = redis if redis is not None else (settings.redis_url if settings else None)
    if redis_url is not None and (problem := redis_url_problem(redis_url)):
        fail(f"--redis: {problem}")
    if port_problem:
        fail(port_problem)
    if settings_problem or settings is None:
        fail(settings_problem or "settings: not valid")
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"--log-level: {log_level!r} is not valid: debug, info, warning or error")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run_serve(settings, spec, ns, nm))
    except ServeError as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        pass


@app.command()
def top(
    url: Annotated[
        list[str] | None,
        typer.Option("--url", help="An instance's base URL, e.g. http://127.0.0.1:8080 (repeatable)."),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis", help="Find the instances in Redis instead (with --policy), e.g. redis://host:6379/0."
        ),
    ] = None,
    policy: Annotated[
        str | None, typer.Option("--policy", help="With --redis: the policy as NAMESPACE/NAME.")
    ] = None,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes.")] = 1.0,
    once: Annotated[
        bool,
        typer.Option(
            "--once", help="Print one frame and exit (1 when no instance answers). \\[default: live view]"
        ),
    ] = False,
) -> None:
    """A live view of a fleet: instances, job types, slots, in flight, waiting, pools, proxy queues.
    Ctrl-C quits."""
    import asyncio

    from limiter.redis.fleetstore import RedisStore
    from limiter.redis.keys import PolicyKeys
    from limiter.top import NoAnswer, run_top

    if not url and not redis:
        fail("--url or --redis is needed: the instances to watch")
    if policy is not None and not redis:
        fail("--policy: only with --redis (the policy whose instances Redis lists)")
    store = None
    if redis:
        if problem := redis_url_problem(redis):
            fail(f"--redis: {problem}")
        ns, _, name = (policy or "").partition("/")
        if not ns or not name:
            fail(f"--policy: {policy!r} is not valid: expected NAMESPACE/NAME with --redis")
        try:
            PolicyKeys(ns, name)
        except ValueError as exc:
            fail(str(exc))
    if interval <= 0:
        fail(f"--interval: {interval:g} is not valid: more than 0 seconds")
    if redis:
        store = RedisStore.from_url(redis, ns, name)

    async def go() -> None:
        try:
            await run_top(url or [], store, interval=interval, frames=1 if once else None)
        finally:
            if store is not None:
                await store.close()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(go())
    except NoAnswer as exc:
        fail(str(exc), code=1)


def _usage_line(exc: UsageError, args: Sequence[str]) -> str:
    """One line for a command-line mistake: the option at fault, what is wrong, where the help is."""
    ctx = exc.ctx
    if ctx is not None and ctx.parent is not None:
        command = ctx.command_path
    elif args and args[0] in app_commands():
        command = f"fleet-limiter {args[0]}"  # the mistake was in a command's options
    else:
        command = "fleet-limiter"
    if isinstance(exc, NoSuchOption):
        known = [o for p in (ctx.command.params if ctx else []) for o in p.opts if o.startswith("--")]
        # Compare without the leading dashes, which every option shares.
        close = difflib.get_close_matches(
            exc.option_name.lstrip("-"), [o[2:] for o in known], n=1, cutoff=0.7
        )
        hint = f" (did you mean --{close[0]}?)" if close else ""
        message = f"{exc.option_name}: no such option of '{command}'{hint}"
    elif isinstance(exc, MissingParameter) and exc.param is not None and exc.param.opts:
        message = f"{exc.param.opts[0]}: required"
    elif isinstance(exc, BadParameter) and exc.param is not None and exc.param.opts:
        message = f"{exc.param.opts[0]}: {exc.message}"
    elif isinstance(exc, BadOptionUsage):
        message = f"{exc.option_name}: {exc.message.replace(f'Option {exc.option_name!r} ', '')}"
    else:
        message = exc.format_message()
    return f"{message.rstrip('.')}; see '{command} --help'"


def app_commands() -> set[str]:
    """The names of the commands (``plan``, ``serve``, ``top``)."""
    return {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``fleet-limiter`` script. Usage errors are one line and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args or ["--help"], prog_name="fleet-limiter", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        print(exc.format_message(), file=sys.stderr)
        code = EXIT_BAD_INPUT
    except UsageError as exc:
        try:
            fail(_usage_line(exc, args))
        except typer.Exit as stop:
            code = stop.exit_code
    except typer.Abort:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
