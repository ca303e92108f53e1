"""``fleet-limiter top``: a live terminal view of a fleet, refreshed every second.

It reads each instance's ``/api/debug/allocation`` and ``/health``; instances come from
``--url`` (repeatable) or from Redis (``--redis URL --policy NS/NAME``: every registered instance,
at the host and port it registered with).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import aiohttp
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from limiter.redis.fleetstore import RedisStore
from limiter.redis.plumbing import StoreUnavailable


async def fetch(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """One instance's allocation and health; ``{"url", "error"}`` when it does not answer."""
    try:
        async with session.get(url + "/api/debug/allocation") as resp:
            alloc = await resp.json()
        async with session.get(url + "/health") as resp:
            health = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"url": url, "error": str(exc) or exc.__class__.__name__}
    return {"url": url, "allocation": alloc, "health": health}


async def discover(store: RedisStore) -> list[str]:
    """URLs of the instances registered in Redis."""
    return [f"http://{i.info['host']}:{i.info['port']}" for i in await store.instances() if "host" in i.info]


def render(snapshots: Sequence[dict[str, Any]], title: str = "fleet-limiter") -> Group:
    """The view: one row per instance; per job type, in flight / slots on each instance; per model,
    the pool on each instance and the per-instance shares."""
    live = [s for s in snapshots if "error" not in s]
    ids = [str(s["allocation"].get("instanceId", "?")) for s in live]
    fleet = Table(title=title)
    for col in ("instance", "url", "N", "gen", "redis", "in flight", "waiting"):
        fleet.add_column(col)
    for snap in snapshots:
        if "error" in snap:
            fleet.add_row(
                Text("unreachable", style="red"), snap["url"], "-", "-", "-", "-", snap["error"][:40]
            )
            continue
        alloc, health = snap["allocation"], snap["health"]
        rows = alloc.get("jobTypes", {})
        fleet.add_row(
            str(alloc.get("instanceId", "?")),
            snap["url"],
            str((alloc.get("allocation") or {}).get("instanceCount", "-")),
            str(alloc.get("generation", "-")),
            Text("up", style="green")
            if health.get("redis", {}).get("connected")
            else Text("down", style="red"),
            str(sum(int(r["inFlight"]) for r in rows.values())),
            str(sum(int(r["waiting"]) for r in rows.values())),
        )
    jobs = Table(title="job types: in flight/slots (waiting) current ratio, per instance")
    jobs.add_column("job type")
    jobs.add_column("kind")
    jobs.add_column("ratio", justify="right")
    for iid in ids:
        jobs.add_column(iid, justify="right")
    names = list(live[0]["allocation"].get("jobTypes", {})) if live else []
    for name in names:
        first = live[0]["allocation"]["jobTypes"][name]
        cells = []
        for snap in live:
            row = snap["allocation"].get("jobTypes", {}).get(name)
            if row is None:
                cells.append("-")
                continue
            wait = f" ({row['waiting']})" if row["waiting"] else ""
            cells.append(f"{row['inFlight']}/{row['allocatedSlots']}{wait} {row['currentRatio']:.2f}")
        jobs.add_row(name, "flexible" if first["flexible"] else "fixed", f"{first['initialRatio']:g}", *cells)
    pools = Table(title="models: pool slots per instance, and each instance's share (capacity / N)")
    pools.add_column("model")
    for iid in ids:
        pools.add_column(iid, justify="right")
    for col in ("TPM", "RPM", "TPD", "RPD"):
        pools.add_column(col, justify="right")
    models = list((live[0]["allocation"].get("allocation") or {}).get("pools") or {}) if live else []
    for model in models:
        per = [((s["allocation"].get("allocation") or {}).get("pools") or {}).get(model, {}) for s in live]
        shares = [
            per[0].get(k) for k in ("tokensPerMinute", "requestsPerMinute", "tokensPerDay", "requestsPerDay")
        ]
        pools.add_row(
            model,
            *(str(p.get("totalSlots", "-")) for p in per),
            *("-" if c is None else f"{c:,.0f}" for c in shares),
        )
    return Group(fleet, jobs, pools)


def _instance_id(snap: dict[str, Any]) -> str:
    return str(snap.get("allocation", {}).get("instanceId", snap["url"]))


async def run_top(
    urls: Sequence[str],
    store: RedisStore | None,
    *,
    interval: float = 1.0,
    frames: int | None = None,
    console: Console | None = None,
) -> None:
    """Refresh the view every ``interval`` seconds; ``frames`` stops after that many (tests)."""
    console = console or Console()
    timeout = aiohttp.ClientTimeout(total=max(0.5, interval * 0.9))
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def frame() -> Group:
            targets = list(urls)
            if store is not None:
                try:
                    targets += [u for u in await discover(store) if u not in targets]
                except StoreUnavailable as exc:
                    return Group(Text(f"Redis unavailable: {exc}", style="red"))
            snaps = await asyncio.gather(*(fetch(session, u.rstrip("/")) for u in targets))
            return render(sorted(snaps, key=_instance_id))

        if frames is not None:  # plain frames, for tests and pipes
            for i in range(frames):
                console.print(await frame())
                if i + 1 < frames:
                    await asyncio.sleep(interval)
            return
        with (
            Live(await frame(), console=console, refresh_per_second=4, screen=False) as live,
            contextlib.suppress(asyncio.CancelledError),
        ):
            while True:
                await asyncio.sleep(interval)
                live.update(await frame())
