"""Benchmarks of credit budgets (issue 8): consume latency p50/p95/p99 and throughput with 1, 10
and 100 concurrent clients over 3 instances (HTTP), the same through the Python API the proxy uses
(no HTTP), and Redis commands per consume.

    python -P bench/credits.py [--smoke] [--results-dir DIR]

Writes bench/results/credits.json (credits-smoke.json with --smoke) and a PNG beside it when
matplotlib is installed. Redis runs as the chart runs it for credits: appendonly yes, appendfsync
everysec; the full run repeats the HTTP rows with appendfsync always. Everything runs on 127.0.0.1
against a private redis-server, so client, instances and Redis share the machine's CPUs.

Redis commands per consume come from INFO commandstats before and after a run, less what the idle
fleet (heartbeats) does in the same time, measured just before. Round trips per consume is the
EVALSHA count alone: one script call per consume.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, for bench.* and tests.support (the stdlib `operator` is imported by then, so the
# repo's operator/ folder cannot shadow it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import itertools
import os
import signal
import tempfile
import time
import uuid
from typing import Any

import aiohttp
import yaml

from bench.common import Progress, percentiles, start_instance, wait_ready, write_results
from limiter.redis.creditstore import CreditStore
from tests.support.redis_server import RedisServer

ADMIN_TOKEN = "bench-admin-token"
INSTANCES = 3
LEVELS = (1, 10, 100)
#: Credits never run out during a run: every consume is an allowed one (the common, costlier path).
CREDITS = 10**12
# A slow heartbeat keeps the fleet's own Redis traffic small next to the consumes.
SPEC: dict[str, Any] = {
    "models": [{"name": "m", "limits": {"maxConcurrentRequests": 1000}}],
    "jobTypes": [{"name": "job", "ratio": 1.0}],
    "instance": {"heartbeatSeconds": 5, "instanceTimeoutSeconds": 15},
}


def command_counts(redis: RedisServer) -> tuple[int, int]:
    """(all commands, EVALSHA calls) Redis has run, from INFO commandstats, INFO itself excluded."""
    raw = redis.command("INFO", "commandstats").decode()
    total = evalsha = 0
    for line in raw.splitlines():
        if line.startswith("cmdstat_") and not line.startswith("cmdstat_info:"):
            calls = int(line.split("calls=")[1].split(",")[0])
            total += calls
            if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
                evalsha += calls
    return total, evalsha


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used (Linux /proc; 0 elsewhere)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


async def new_key(session: aiohttp.ClientSession, url: str) -> str:
    key = f"bench-{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with session.put(f"{url}/api/keys/{key}", json={"credits": CREDITS}, headers=headers) as resp:
        if resp.status != 201:
            raise RuntimeError(f"PUT /api/keys failed: {resp.status} {await resp.text()}")
    return key


async def idle_rate(redis: RedisServer, seconds: float) -> float:
    """Commands per second the idle fleet sends (heartbeats), to subtract from a run."""
    before, _ = command_counts(redis)
    await asyncio.sleep(seconds)
    after, _ = command_counts(redis)
    return max(0, after - before - 1) / seconds  # -1: the first INFO is counted by the second


def row(
    concurrency: int, latencies: list[float], elapsed: float, redis_counts: tuple[float, float]
) -> dict[str, Any]:
    return {
        "concurrency": concurrency,
        "consumes": len(latencies),
        "seconds": round(elapsed, 3),
        "consumes_per_second": len(latencies) / elapsed if elapsed else 0.0,
        **percentiles(latencies),
        "redis_commands_per_consume": redis_counts[0],
        "redis_round_trips_per_consume": redis_counts[1],
    }


async def over_http(
    redis: RedisServer,
    urls: list[str],
    pids: list[int],
    concurrency: int,
    count: int,
    seconds: float,
    idle: float,
) -> dict[str, Any]:
    """``concurrency`` clients each send consumes one after the other, round robin over ``urls``."""
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        key = await new_key(session, urls[0])
        latencies: list[float] = []
        targets = itertools.cycle(urls)
        per_client = max(1, count // concurrency)

        async def warm_up() -> None:  # open the connections first: a run measures consumes only
            for url in urls:
                async with session.post(f"{url}/api/keys/{key}/consume", json={"cost": 1}) as resp:
                    await resp.read()

        await asyncio.gather(*(warm_up() for _ in range(concurrency)))
        # From here, not before the warm-up: on a busy machine 100 warm-ups can take the whole run.
        deadline = time.monotonic() + seconds

        async def client() -> None:
            for _ in range(per_client):
                if time.monotonic() > deadline:
                    return
                url = next(targets)
                t0 = time.perf_counter()
                async with session.post(f"{url}/api/keys/{key}/consume", json={"cost": 1}) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"consume failed: {resp.status} {body!r}")
                latencies.append(time.perf_counter() - t0)

        assert redis.process is not None
        cpu0, redis_cpu0 = cpu_seconds(pids), cpu_seconds([redis.process.pid])
        (total0, eval0), t0 = command_counts(redis), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        total1, eval1 = command_counts(redis)
        cpu1, redis_cpu1 = cpu_seconds(pids), cpu_seconds([redis.process.pid])
    n = max(1, len(latencies))
    commands = max(0.0, total1 - total0 - 1 - idle * elapsed) / n
    out = row(concurrency, latencies, elapsed, (commands, (eval1 - eval0) / n))
    # CPU per consume does not depend on what else shares the machine: it bounds what one instance
    # can serve on one core (1 / instance_cpu_ms_per_consume consumes per ms).
    out["instance_cpu_ms_per_consume"] = (cpu1 - cpu0) * 1000 / n
    out["redis_cpu_ms_per_consume"] = (redis_cpu1 - redis_cpu0) * 1000 / n
    return out


async def in_process(redis: RedisServer, concurrency: int, count: int, seconds: float) -> dict[str, Any]:
    """The Python API the proxy calls (CreditStore.consume), one store, no HTTP."""
    store = CreditStore.from_url(redis.url, "bench", "python")
    try:
        key = f"bench-{uuid.uuid4().hex}"
        await store.put(key, CREDITS)
        latencies: list[float] = []
        await asyncio.gather(*(store.consume(key, 1) for _ in range(concurrency)))  # open connections
        deadline = time.monotonic() + seconds
        per_client = max(1, count // concurrency)

        async def client() -> None:
            for _ in range(per_client):
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                answer = await store.consume(key, 1)
                if not answer.allowed:
                    raise RuntimeError("consume refused")
                latencies.append(time.perf_counter() - t0)

        (total0, eval0), t0 = command_counts(redis), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        total1, eval1 = command_counts(redis)
    finally:
        await store.close()
    n = max(1, len(latencies))
    return row(concurrency, latencies, elapsed, ((total1 - total0 - 1) / n, (eval1 - eval0) / n))


async def http_series(
    say: Progress, redis: RedisServer, tmp: Path, label: str, count: int, seconds: float
) -> list[dict[str, Any]]:
    policy = tmp / f"{label}.yaml"
    manifest = {"kind": "RateLimitPolicy", "metadata": {"name": label, "namespace": "bench"}, "spec": SPEC}
    policy.write_text(yaml.safe_dump(manifest))
    procs = [
        start_instance(
            policy, redis.url, f"bench-{label}-{i}", env={"FLEET_LIMITER_ADMIN_TOKEN": ADMIN_TOKEN}
        )
        for i in range(INSTANCES)
    ]
    urls = [url for _, url in procs]
    rows: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession() as session:
            for url in urls:
                await wait_ready(session, url)
        say(f"{INSTANCES} instances ready ({label})")
        idle = await idle_rate(redis, 1.0)
        for c in LEVELS:
            r = await over_http(redis, urls, [p.pid for p, _ in procs], c, count, seconds, idle)
            rows.append(r)
            say(
                f"HTTP {label}, {c:3d} clients: p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms, "
                f"p99 {r['p99_ms']:.2f} ms, {r['consumes_per_second']:.0f} consumes/s, "
                f"{r['redis_commands_per_consume']:.2f} Redis commands and "
                f"{r['redis_round_trips_per_consume']:.2f} round trips per consume; CPU per consume: "
                f"{r['instance_cpu_ms_per_consume']:.3f} ms in the instances, "
                f"{r['redis_cpu_ms_per_consume']:.3f} ms in Redis"
            )
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            proc.wait(15)
    return rows


def plot(doc: dict[str, Any], path: Path) -> bool:
    """A PNG of the latency percentiles and throughput; False when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("http", "HTTP, 3 instances (AOF everysec)"), ("python", "Python API (CreditStore)")]
    fig, axes = plt.subplots(1, len(series), figsize=(12, 4))
    for ax, (name, title) in zip(axes, series, strict=True):
        rows = doc[name]
        xs = range(len(rows))
        for offset, pct in ((-0.27, "p50_ms"), (0.0, "p95_ms"), (0.27, "p99_ms")):
            ax.bar(
                [x + offset for x in xs], [r[pct] for r in rows], width=0.27, label=pct.removesuffix("_ms")
            )
        ax.set_xticks(list(xs), [str(r["concurrency"]) for r in rows])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("consume latency (ms)")
        ax.set_title(title + "\n" + ", ".join(f"{r['consumes_per_second']:.0f}/s" for r in rows), fontsize=10)
        ax.legend()
    fig.suptitle("fleet-limiter credit consumes: latency and throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


async def main_async(smoke: bool) -> dict[str, Any]:
    say = Progress()
    count, seconds = (150, 2.0) if smoke else (20000, 10.0)
    doc: dict[str, Any] = {
        "smoke": smoke,
        "instances": INSTANCES,
        "levels": list(LEVELS),
        "notes": (
            "consume of cost 1 on a key that never runs out; clients, instances and Redis share this "
            "machine's CPUs; Redis commands per consume less the idle fleet's heartbeats"
        ),
        "load_average_at_start": os.getloadavg(),  # the CPUs may be shared with other work
        "python": [],
        "http": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        with RedisServer(appendonly=True, appendfsync="everysec") as redis:
            say(f"private redis-server on {redis.url} (appendonly yes, appendfsync everysec)")
            for c in LEVELS:
                r = await in_process(redis, c, count, seconds)
                doc["python"].append(r)
                say(
                    f"Python API, {c:3d} clients: p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, "
                    f"{r['consumes_per_second']:.0f} consumes/s, {r['redis_commands_per_consume']:.2f} "
                    "Redis commands per consume"
                )
            doc["http"] = await http_series(say, redis, Path(tmp), "everysec", count, seconds)
        if not smoke:
            with RedisServer(appendonly=True, appendfsync="always") as redis:
                say(f"private redis-server on {redis.url} (appendonly yes, appendfsync always)")
                doc["http_appendfsync_always"] = await http_series(
                    say, redis, Path(tmp), "always", count, seconds
                )
    best = max(doc["http"], key=lambda r: r["consumes_per_second"])
    doc["summary"] = {
        "http_consumes_per_second_best": round(best["consumes_per_second"]),
        "http_consumes_per_second_per_instance": round(best["consumes_per_second"] / INSTANCES),
        "http_p99_ms_at_1_client": round(doc["http"][0]["p99_ms"], 3),
        "http_p99_ms_at_100_clients": round(doc["http"][-1]["p99_ms"], 3),
        "redis_round_trips_per_consume": round(doc["http"][-1]["redis_round_trips_per_consume"], 3),
        "instance_cpu_ms_per_consume_at_100_clients": round(
            doc["http"][-1]["instance_cpu_ms_per_consume"], 3
        ),
        "consumes_per_second_per_instance_core": round(
            1000 / max(1e-9, doc["http"][-1]["instance_cpu_ms_per_consume"])
        ),
        "redis_cpu_ms_per_consume_at_100_clients": round(doc["http"][-1]["redis_cpu_ms_per_consume"], 4),
    }
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description="credit budget benchmarks")
    parser.add_argument("--smoke", action="store_true", help="tiny counts, to check the script runs")
    parser.add_argument("--out", default=None, help="results name (default credits, or credits-smoke)")
    parser.add_argument("--results-dir", type=Path, default=None, help="default bench/results")
    args = parser.parse_args()
    doc = asyncio.run(main_async(args.smoke))
    name = args.out or ("credits-smoke" if args.smoke else "credits")
    path = write_results(name, doc, args.results_dir)
    drawn = plot(doc, path.with_suffix(".png"))
    print(
        f"wrote {path}" + (f" and {path.with_suffix('.png').name}" if drawn else " (no matplotlib: no PNG)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
