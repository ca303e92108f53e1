"""``fleet-limiter top``: a live terminal view of a fleet, refreshed every second.

It reads each instance's ``/api/debug/allocation``, ``/health`` and ``/queue/stats``; instances
come from ``--url`` (repeatable) or from Redis (``--redis URL --policy NS/NAME``: every registered
instance, at the host and port it registered with). Instances are named in the per-instance columns
by the shortest part of their ids that tells them apart (the fleet table maps it to the full id and
URL), so they stay distinct on an 80-column terminal.
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

#: Widest per-instance column label; longer ids are cut to their distinguishing part.
LABEL_WIDTH = 12
SEPARATORS = "-.:/_"


class NoAnswer(Exception):
    """``top --once``: no instance answered (the message says which were tried)."""


async def fetch(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """One instance's allocation, health and proxy queues; ``{"url", "error"}`` when it does not
    answer."""
    try:
        async with session.get(url + "/api/debug/allocation") as resp:
            alloc = await resp.json()
        async with session.get(url + "/health") as resp:
            health = await resp.json()
        async with session.get(url + "/queue/stats") as resp:
            queues = await resp.json() if resp.status == 200 else {}
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"url": url, "error": str(exc) or exc.__class__.__name__}
    return {"url": url, "allocation": alloc, "health": health, "queues": queues}


def short_names(names: Sequence[str], width: int = LABEL_WIDTH) -> list[str]:
    """Labels that tell ``names`` apart in ``width`` characters: the names without the prefix they
    all share (cut at a separator such as ``-``), and cut to ``width``; ``#1``, ``#2``, ... when
    even that leaves two alike."""
    if len(names) < 2:
        return [n if len(n) <= width else n[: width - 1] + "…" for n in names]
    prefix = _common_prefix(names)
    cut = max((prefix.rfind(c) + 1 for c in SEPARATORS), default=0)
    rest = [n[cut:] or n for n in names]
    labels = [r if len(r) <= width else r[: width - 1] + "…" for r in rest]
    if len(set(labels)) < len(labels):
        return [f"#{i}" for i in range(1, len(names) + 1)]
    return labels


def _common_prefix(names: Sequence[str]) -> str:
    first, last = min(names), max(names)
    i = 0
    while i < min(len(first), len(last)) and first[i] == last[i]:
        i += 1
    return first[:i]


def _num(value: Any) -> str:
    """A share, compact: 16, 66.67, 266.7K, 66.7M; ``-`` where the model sets no such limit."""
    if value is None:
        return "-"
    v = float(value)
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= size:
            return f"{v / size:.1f}{unit}"
    return f"{v:.0f}" if v == int(v) else f"{v:.2f}"


async def discover(store: RedisStore) -> list[str]:
    """URLs of the instances registered in Redis."""
    return [f"http://{i.info['host']}:{i.info['port']}" for i in await store.instances() if "host" in i.info]


def render(snapshots: Sequence[dict[str, Any]], title: str = "fleet-limiter") -> Group:
    """The view: one row per instance; per job type, in flight / slots on each instance; per model,
    the pool on each instance and the per-instance shares; per proxied model, each instance's queue;
    per model in shadow mode, what enforcing would have refused."""
    live = [s for s in snapshots if "error" not in s]
    labels = short_names([_instance_id(s) for s in live])
    fleet = Table(title=title)
    fleet.add_column("name", no_wrap=True)
    for col in ("instance", "url"):
        fleet.add_column(col, overflow="fold")  # wrapped, never cut: the full id and URL
    for col in ("N", "gen", "redis", "in flight", "waiting"):
        fleet.add_column(col)
    label_of = dict(zip((id(s) for s in live), labels, strict=True))
    for snap in snapshots:
        url = snap["url"].removeprefix("http://")
        if "error" in snap:
            fleet.add_row(Text("unreachable", style="red"), "-", url, "-", "-", "-", "-", snap["error"][:40])
            continue
        alloc, health = snap["allocation"], snap["health"]
        rows = alloc.get("jobTypes", {})
        fleet.add_row(
            label_of[id(snap)],
            str(alloc.get("instanceId", "?")),
            url,
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
    for label in labels:
        jobs.add_column(label, justify="right", min_width=len(label))
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
    return Group(fleet, jobs, _pools(live, labels), *_queues(live, labels), *_shadow(live, labels))


def _pools(live: Sequence[dict[str, Any]], labels: Sequence[str]) -> Table:
    """Per model: pool slots on each instance, and the per-instance share of every limit ``plan``
    shows (TPM, RPM, TPD, RPD, concurrent)."""
    pools = Table(title="models: pool slots per instance, and each instance's share (capacity / N)")
    pools.add_column("model")
    for label in labels:
        pools.add_column(label, justify="right", min_width=len(label))
    for col in ("TPM", "RPM", "TPD", "RPD", "concurrent"):
        pools.add_column(col, justify="right")
    if not live:
        return pools
    first = live[0]["allocation"]
    models = list((first.get("allocation") or {}).get("pools") or {})
    for model in models:
        per = [((s["allocation"].get("allocation") or {}).get("pools") or {}).get(model, {}) for s in live]
        shares = [
            per[0].get(k) for k in ("tokensPerMinute", "requestsPerMinute", "tokensPerDay", "requestsPerDay")
        ]
        # The pool is job-type-blind; the concurrency share is the same under every job type.
        concurrent = next(
            (
                m[model].get("maxConcurrentRequests")
                for m in (first.get("slotsByJobTypeAndModel") or {}).values()
                if model in m
            ),
            None,
        )
        pools.add_row(
            model, *(str(p.get("totalSlots", "-")) for p in per), *(_num(c) for c in [*shares, concurrent])
        )
    return pools


def _queues(live: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[Table]:
    """Per proxied model (``/queue/stats``): active/parallel_limit and queued/queue_limit on each
    instance, then processed and rejected over the instances. None without proxied models."""
    per = [(s.get("queues") or {}).get("models") or {} for s in live]
    models = list(dict.fromkeys(m for stats in per for m in stats))
    if not models:
        return []
    table = Table(title="proxy queues: active/parallel_limit queued/queue_limit, per instance")
    table.add_column("model")
    for label in labels:
        table.add_column(label, justify="right", min_width=len(label))
    table.add_column("processed", justify="right")
    table.add_column("rejected", justify="right")
    for model in models:
        cells = []
        for stats in per:
            q = stats.get(model)
            cells.append(
                "-"
                if q is None
                else f"{q['active_requests']}/{q['parallel_limit']} {q['queued_requests']}/{q['queue_limit']}"
            )
        processed = sum(int(stats[model]["total_processed"]) for stats in per if model in stats)
        rejected = sum(int(stats[model]["total_rejected"]) for stats in per if model in stats)
        table.add_row(model, *cells, str(processed), str(rejected))
    return [table]


def _shadow(live: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[Table]:
    """Per model in shadow mode (or with would-be refusals counted): its mode, the admissions that
    enforcing would have refused on each instance, and their reasons summed over the instances.
    None while every model is enforced and nothing was counted."""
    allocs = [s["allocation"] for s in live]
    modes: dict[str, str] = {}
    for alloc in allocs:
        for model, mode in (alloc.get("modes") or {}).items():
            modes.setdefault(model, mode)
    counted = [alloc.get("wouldRefuse") or {} for alloc in allocs]
    models = [m for m in modes if modes[m] == "shadow" or any(c.get(m) for c in counted)]
    models += [m for c in counted for m in c if m not in models]
    if not models:
        return []
    policy_mode = next((str(a["mode"]) for a in allocs if a.get("mode")), "-")
    table = Table(title=f"shadow mode (spec.mode {policy_mode}): admissions enforcing would have refused")
    table.add_column("model")
    table.add_column("mode")
    for label in labels:
        table.add_column(label, justify="right", min_width=len(label))
    table.add_column("by reason, all instances")
    for model in models:
        reasons: dict[str, int] = {}
        for c in counted:
            for reason, n in (c.get(model) or {}).items():
                reasons[reason] = reasons.get(reason, 0) + int(n)
        cells = [str(sum(int(n) for n in (c.get(model) or {}).values())) for c in counted]
        shown = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "-"
        mode = modes.get(model, "-")
        table.add_row(model, Text(mode, style="yellow") if mode == "shadow" else mode, *cells, shown)
    return [table]


def _instance_id(snap: dict[str, Any]) -> str:
    return str(snap.get("allocation", {}).get("instanceId", snap["url"]))


def _no_answer(snaps: Sequence[dict[str, Any]], discovered: bool) -> str:
    """Why no instance answered, or ``""`` when one did."""
    if not snaps:
        return "no instance is registered in Redis for this policy" if discovered else "no instance to watch"
    if any("error" not in s for s in snaps):
        return ""
    tried = "; ".join(f"{s['url']}: {s['error']}" for s in snaps[:3])
    more = f" and {len(snaps) - 3} more" if len(snaps) > 3 else ""
    return f"no instance answered ({tried}{more})"


async def run_top(
    urls: Sequence[str],
    store: RedisStore | None,
    *,
    interval: float = 1.0,
    frames: int | None = None,
    console: Console | None = None,
) -> None:
    """Refresh the view every ``interval`` seconds; ``frames`` stops after that many (``--once``).

    With ``frames``, raises :class:`NoAnswer` when no instance answered the last frame (none
    listed, none registered in Redis, Redis unavailable, or none reachable)."""
    console = console or Console()
    timeout = aiohttp.ClientTimeout(total=max(0.5, interval * 0.9))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        problem = ""

        async def frame() -> Group:
            nonlocal problem
            targets = list(urls)
            if store is not None:
                try:
                    targets += [u for u in await discover(store) if u not in targets]
                except StoreUnavailable as exc:
                    problem = f"Redis unavailable: {exc}"
                    return Group(Text(problem, style="red"))
            snaps = await asyncio.gather(*(fetch(session, u.rstrip("/")) for u in targets))
            problem = _no_answer(snaps, store is not None)
            return render(sorted(snaps, key=_instance_id))

        if frames is not None:  # plain frames, for tests and pipes
            for i in range(frames):
                shown = await frame()
                if not problem:
                    console.print(shown)
                if i + 1 < frames:
                    await asyncio.sleep(interval)
            if problem:
                raise NoAnswer(problem)
            return
        with (
            Live(await frame(), console=console, refresh_per_second=4, screen=False) as live,
            contextlib.suppress(asyncio.CancelledError),
        ):
            while True:
                await asyncio.sleep(interval)
                live.update(await frame())
