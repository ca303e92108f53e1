"""Benchmarks of the fleet (issue 3): lease latency in process and over HTTP, decisions per second,
convergence after joins, graceful leaves and crashes, and Redis commands per admitted job.

    python -P bench/fleet.py [--smoke]

Writes bench/results/fleet.json and bench/results/fleet.png. Everything runs on 127.0.0.1 against
a private redis-server; every loop is bounded in count and time.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, for bench.* and tests.support (the stdlib `operator` is imported by then, so the
# repo's operator/ folder cannot shadow it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import signal
import tempfile
import time
from typing import Any

import aiohttp
import yaml

from bench.common import Progress, percentiles, start_instance, wait_ready, write_results
from limiter.core.policy import parse_policy
from limiter.fleet.instance import LimiterInstance
from limiter.fleet.settings import ServeSettings
from limiter.redis.fleetstore import RedisStore
from tests.support.redis_server import RedisServer

# Generous limits so the numbers measure the limiter, not a spent budget: a slot per concurrent
# client, and window budgets that need grants from Redis (drawn in bulk, spent locally).
SPEC: dict[str, Any] = {
    "models": [
        {
            "name": "m",
            "limits": {
                "tokensPerMinute": 10**12,
                "requestsPerMinute": 10**9,
                "maxConcurrentRequests": 100000,
            },
        }
    ],
    "jobTypes": [{"name": "job", "ratio": 1.0, "estimate": {"tokens": 1000, "requests": 1}}],
    "instance": {"heartbeatSeconds": 1, "instanceTimeoutSeconds": 3},
}


def commands_total(redis: RedisServer) -> int:
    """Commands Redis has executed (INFO commandstats), minus the INFO calls themselves."""
    raw = redis.command("INFO", "commandstats").decode()
    total = 0
    for line in raw.splitlines():
        if line.startswith("cmdstat_") and not line.startswith("cmdstat_info:"):
            total += int(line.split("calls=")[1].split(",")[0])
    return total


async def in_process(redis: RedisServer, concurrency: int, jobs: int, seconds: float) -> dict[str, Any]:
    """Acquire+release through a LimiterInstance in this process (no HTTP)."""
    spec, _ = parse_policy(SPEC)
    store = RedisStore.from_url(redis.url, "bench", f"inproc-{concurrency}")
    inst = LimiterInstance(ServeSettings(instance_id=f"bench-{concurrency}"), store, spec)
    await inst.run()
    latencies: list[float] = []
    before = commands_total(redis)
    deadline = time.monotonic() + seconds
    per_worker = max(1, jobs // concurrency)

    async def worker() -> None:
        for _ in range(per_worker):
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            ticket = await inst.acquire("job", wait_seconds=5)
            await inst.release(ticket.id, {"tokens": 1000, "requests": 1})
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    after = commands_total(redis)
    await inst.stop()
    await store.close()
    return {
        "concurrency": concurrency,
        "jobs": len(latencies),
        "seconds": elapsed,
        "jobs_per_second": len(latencies) / elapsed if elapsed else 0.0,
        "redis_commands_per_job": (after - before) / max(1, len(latencies)),
        **percentiles(latencies),
    }


async def over_http(url: str, concurrency: int, jobs: int, seconds: float) -> dict[str, Any]:
    """Acquire+release over HTTP against one `fleet-limiter serve` process."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    per_worker = max(1, jobs // concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in range(per_worker):
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                async with session.post(
                    url + "/api/jobs/acquire", json={"jobType": "job", "waitSeconds": 5}
                ) as r:
                    lease = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"acquire failed: {lease}")
                async with session.post(
                    url + f"/api/jobs/{lease['leaseId']}/release", json={"actual": {"tokens": 1000}}
                ) as r:
                    await r.read()
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "jobs": len(latencies),
        "seconds": elapsed,
        "jobs_per_second": len(latencies) / elapsed if elapsed else 0.0,
        **percentiles(latencies),
    }


async def instance_count(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url + "/api/debug/allocation") as resp:
        return int((await resp.json())["allocation"]["instanceCount"])


async def until(session: aiohttp.ClientSession, urls: list[str], n: int, within: float) -> float:
    """Seconds until every instance at ``urls`` reports ``n`` instances."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        counts = await asyncio.gather(*(instance_count(session, u) for u in urls))
        if all(c == n for c in counts):
            return time.monotonic() - t0
        await asyncio.sleep(0.005)
    raise RuntimeError(f"no convergence to {n} within {within} s")


async def convergence(redis: RedisServer, policy: Path, rounds: int) -> dict[str, Any]:
    """Join, graceful-leave and crash convergence across three instances."""
    joins: list[float] = []
    leaves: list[float] = []
    crashes: list[float] = []
    async with aiohttp.ClientSession() as session:
        for r in range(rounds):
            procs = []
            a, url_a = start_instance(policy, redis.url, f"conv-a-{r}")
            b, url_b = start_instance(policy, redis.url, f"conv-b-{r}")
            procs += [a, b]
            try:
                await wait_ready(session, url_a)
                await wait_ready(session, url_b)
                await until(session, [url_a, url_b], 2, 5)
                c, url_c = start_instance(policy, redis.url, f"conv-c-{r}")
                procs.append(c)
                await wait_ready(session, url_c)  # joined: registered before it turns ready
                joins.append(await until(session, [url_a, url_b, url_c], 3, 5))
                c.send_signal(signal.SIGTERM)
                t0 = time.monotonic()
                await until(session, [url_a, url_b], 2, 5)
                leaves.append(time.monotonic() - t0)
                b.kill()
                t0 = time.monotonic()
                await until(session, [url_a], 1, 10)
                crashes.append(time.monotonic() - t0)
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                    p.wait(10)
    return {
        "join_seconds": percentiles(joins),
        "graceful_leave_seconds": percentiles(leaves),
        "crash_seconds": percentiles(crashes),
        "instanceTimeoutSeconds": SPEC["instance"]["instanceTimeoutSeconds"],
        "heartbeatSeconds": SPEC["instance"]["heartbeatSeconds"],
        "note": "join is measured from the new instance turning ready (it registers before), leave "
        "from SIGTERM, crash from SIGKILL; the crash bound is instanceTimeoutSeconds + heartbeatSeconds",
    }


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "in_process", "in process"), (axes[1], "http", "over HTTP")):
        rows = doc[key]
        xs = [str(r["concurrency"]) for r in rows]
        ax.bar([i - 0.2 for i in range(len(xs))], [r["p50_ms"] for r in rows], width=0.4, label="p50")
        ax.bar([i + 0.2 for i in range(len(xs))], [r["p99_ms"] for r in rows], width=0.4, label="p99")
        ax.set_xticks(range(len(xs)), xs)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("acquire + release latency (ms)")
        ax.set_title(f"{title}: " + ", ".join(f"{r['jobs_per_second']:.0f}/s" for r in rows))
        ax.legend()
    fig.suptitle("fleet-limiter lease latency (acquire + release)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def main_async(smoke: bool) -> dict[str, Any]:
    say = Progress()
    jobs, seconds, rounds = (200, 2.0, 1) if smoke else (20000, 20.0, 5)
    levels = (1, 10, 100)
    doc: dict[str, Any] = {"smoke": smoke, "policy": SPEC, "in_process": [], "http": []}
    with RedisServer() as redis, tempfile.TemporaryDirectory() as tmp:
        say(f"private redis-server on {redis.url}")
        for c in levels:
            row = await in_process(redis, c, jobs, seconds)
            doc["in_process"].append(row)
            say(
                f"in process, {c:3d} clients: p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms, "
                f"{row['jobs_per_second']:.0f} jobs/s, {row['redis_commands_per_job']:.3f} Redis commands/job"
            )
        policy = Path(tmp) / "bench.yaml"
        manifest = {
            "kind": "RateLimitPolicy",
            "metadata": {"name": "http", "namespace": "bench"},
            "spec": SPEC,
        }
        policy.write_text(yaml.safe_dump(manifest))
        proc, url = start_instance(policy, redis.url, "bench-http")
        try:
            async with aiohttp.ClientSession() as session:
                await wait_ready(session, url)
            for c in levels:
                before = commands_total(redis)
                row = await over_http(url, c, jobs, seconds)
                row["redis_commands_per_job"] = (commands_total(redis) - before) / max(1, row["jobs"])
                doc["http"].append(row)
                say(
                    f"over HTTP,  {c:3d} clients: p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms, "
                    f"{row['jobs_per_second']:.0f} jobs/s"
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        doc["decisions_per_second_per_instance"] = max(r["jobs_per_second"] for r in doc["http"])
        conv_policy = Path(tmp) / "conv.yaml"
        conv_manifest = {**manifest, "metadata": {"name": "conv", "namespace": "bench"}}
        conv_policy.write_text(yaml.safe_dump(conv_manifest))
        doc["convergence"] = await convergence(redis, conv_policy, rounds)
        conv = doc["convergence"]
        say(
            f"convergence over {rounds} round(s): join p50 {conv['join_seconds']['p50_ms']:.1f} ms, "
            f"graceful leave p50 {conv['graceful_leave_seconds']['p50_ms']:.1f} ms, "
            f"crash p50 {conv['crash_seconds']['p50_ms']:.0f} ms"
        )
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description="fleet benchmarks")
    parser.add_argument("--smoke", action="store_true", help="tiny counts, to check the script runs")
    parser.add_argument("--out", default=None, help="results name (default fleet, or fleet-smoke)")
    parser.add_argument("--results-dir", type=Path, default=None, help="default bench/results")
    args = parser.parse_args()
    doc = asyncio.run(main_async(args.smoke))
    name = args.out or ("fleet-smoke" if args.smoke else "fleet")
    path = write_results(name, doc, args.results_dir)
    plot(doc, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
