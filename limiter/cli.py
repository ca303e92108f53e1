"""The ``fleet-limiter`` command line.

Errors end the command with one line on stderr and a non-zero exit code (2 for bad input),
never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from limiter.allocation import SHARE_FIELDS, Allocation, compute_allocation, json_number
from limiter.policy import PolicyError, PolicySpec, load_policy

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
    print(f"fleet-limiter: error: {message}", file=sys.stderr)
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


def main() -> None:
    """Entry point of the ``fleet-limiter`` script."""
    app()


if __name__ == "__main__":
    main()
