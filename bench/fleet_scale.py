"""Fleet scale (issue 15): N limiter instances on one Redis, at N = 10, 100, 500 and 1,000.

    python -P bench/fleet_scale.py [--smoke] [--sizes 10,100,500,1000] [--results-dir DIR]

Every instance is a real :class:`~limiter.fleet.instance.LimiterInstance` with its own Redis
connections (commands and the policy's channel), its heartbeat, subscription and housekeeping
tasks, all in this one process: 1,000 processes of ``fleet-limiter serve`` (about 60 MiB each) do
not fit this machine, so none is a separate process, and the figures include one process carrying
the whole fleet's Python work on one core. Per size, against a private redis-server on 127.0.0.1:

- cold start: all N started at once, until every one applies an allocation of N instances;
- one join and one graceful leave at full size: from the change's record in Redis (its
  ``changedAtMs``) until the last instance applied it (each instance's own ``epoch_applied_at``);
- idle: Redis commands per second per instance and the process's CPU over a few heartbeats, and
  Redis's memory per instance (``used_memory`` before the start and at full size).

Writes bench/results/fleet_scale.json and bench/results/fleet_scale.png. Every loop is bounded in
count and time.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, for bench.* and tests.support (the stdlib `operator` is imported by then).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import logging
import resource
import time
from typing import Any

from bench.common import RESULTS, Progress, write_results
from limiter.core.policy import PolicySpec, parse_policy
from limiter.fleet.instance import LimiterInstance
from limiter.fleet.settings import ServeSettings
from limiter.redis.fleetstore import RedisStore
from tests.support.redis_server import RedisServer

SPEC: dict[str, Any] = {
    "models": [{"name": "m", "limits": {"tokensPerMinute": 10**9, "maxConcurrentRequests": 100000}}],
    "jobTypes": [{"name": "job", "ratio": 1.0, "estimate": {"tokens": 1000}}],
    "instance": {"heartbeatSeconds": 1, "instanceTimeoutSeconds": 5},
}
SIZES = (10, 100, 500, 1000)
CODE = (
    "records coalesced (limiter/redis/fleetstore.py): of the records an instance has received, it "
    "decodes and applies only the newest"
)


def info(redis: RedisServer, section: str) -> dict[str, str]:
    raw = redis.command("INFO", section).decode()
    return dict(line.split(":", 1) for line in raw.splitlines() if ":" in line and not line.startswith("#"))


def commands_total(redis: RedisServer) -> int:
    return sum(
        int(v.split("calls=")[1].split(",")[0])
        for k, v in info(redis, "commandstats").items()
        if k.startswith("cmdstat_") and k != "cmdstat_info"
    )


def redis_cpu(redis: RedisServer) -> float:
    """CPU seconds the Redis server used so far (user and system)."""
    cpu = info(redis, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Fleet:
    """N in-process instances of one policy."""

    def __init__(self, redis: RedisServer, spec: PolicySpec, name: str) -> None:
        self.redis, self.spec, self.name = redis, spec, name
        self.instances: list[LimiterInstance] = []
        self._serial = 0

    def new(self) -> LimiterInstance:
        self._serial += 1
        store = RedisStore.from_url(self.redis.url, "bench", self.name)
        inst = LimiterInstance(ServeSettings(instance_id=f"{self.name}-{self._serial}"), store, self.spec)
        self.instances.append(inst)
        return inst

    def counts(self) -> set[int]:
        return {i.instance_count for i in self.instances}

    async def until(self, n: int, within: float) -> float:
        """Seconds until every instance divides by ``n``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < within:
            if self.counts() == {n}:
                return time.monotonic() - t0
            await asyncio.sleep(0.005)
        raise RuntimeError(f"not all at {n} within {within} s: counts {sorted(self.counts())[:10]}")

    def spread(self, epoch: int, changed_at: float) -> float:
        """From a record's Redis time until the last instance applied it (or a later one)."""
        applied = [i.epoch_applied_at for i in self.instances if i.epoch >= epoch]
        assert len(applied) == len(self.instances) and None not in applied
        return max(a for a in applied if a is not None) - changed_at

    async def close(self) -> None:
        for chunk in range(0, len(self.instances), 100):
            await asyncio.gather(*(i.stop() for i in self.instances[chunk : chunk + 100]))
        for i in self.instances:
            await i.store.close()
        self.instances.clear()


async def one_size(redis: RedisServer, n: int, say: Progress) -> dict[str, Any]:
    spec, _ = parse_policy(SPEC)
    fleet = Fleet(redis, spec, f"scale-{n}")
    memory_before = int(info(redis, "memory")["used_memory"])
    row: dict[str, Any] = {"instances": n, "in_process": n, "processes": 0}
    try:
        members = [fleet.new() for _ in range(n)]
        t0 = time.monotonic()
        await asyncio.gather(*(m.run() for m in members))
        row["cold_start_registered_s"] = round(time.monotonic() - t0, 3)
        await fleet.until(n, within=120)
        row["cold_start_s"] = round(time.monotonic() - t0, 3)
        say(
            f"N={n}: cold start {row['cold_start_s']:.2f} s "
            f"(all registered after {row['cold_start_registered_s']:.2f} s)"
        )
        await asyncio.sleep(2)  # the burst's last records and heartbeats settle

        # Idle: a few heartbeat intervals at full size.
        seconds = 5.0
        c0, cpu0, r0, w0 = commands_total(redis), cpu_seconds(), redis_cpu(redis), time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - w0
        row["idle_redis_commands_per_s"] = round((commands_total(redis) - c0) / elapsed, 1)
        row["idle_redis_commands_per_s_per_instance"] = round(row["idle_redis_commands_per_s"] / n, 3)
        row["idle_process_cpu"] = round((cpu_seconds() - cpu0) / elapsed, 3)
        row["idle_redis_cpu"] = round((redis_cpu(redis) - r0) / elapsed, 4)
        memory = int(info(redis, "memory")["used_memory"])
        row["redis_memory_per_instance_bytes"] = round((memory - memory_before) / n)

        # One join at full size.
        joiner = fleet.new()
        await joiner.run()
        record = joiner.epoch
        changed_at = joiner.record_time_ms / 1000
        await fleet.until(n + 1, within=30)
        row["join_s"] = round(fleet.spread(record, changed_at), 4)
        # One graceful leave.
        leaver = fleet.instances.pop()
        await leaver.stop()
        await leaver.store.close()
        await fleet.until(n, within=30)
        epoch = max(i.epoch for i in fleet.instances)
        survivor = next(i for i in fleet.instances if i.epoch == epoch)
        row["graceful_leave_s"] = round(fleet.spread(epoch, survivor.record_time_ms / 1000), 4)
        say(
            f"N={n}: join {row['join_s'] * 1000:.0f} ms, "
            f"graceful leave {row['graceful_leave_s'] * 1000:.0f} ms; "
            f"idle {row['idle_redis_commands_per_s']:.0f} Redis commands/s "
            f"({row['idle_redis_commands_per_s_per_instance']:.2f} per instance), process CPU "
            f"{row['idle_process_cpu']:.2f}, "
            f"Redis memory {row['redis_memory_per_instance_bytes']} B per instance"
        )
    finally:
        await fleet.close()
    return row


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["sizes"]
    xs = [r["instances"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(xs, [r["cold_start_s"] for r in rows], "o-", label="cold start (all agree on N)")
    axes[0].plot(xs, [r["join_s"] for r in rows], "s-", label="one join reaches all")
    axes[0].plot(xs, [r["graceful_leave_s"] for r in rows], "^-", label="one graceful leave reaches all")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("instances on one Redis")
    axes[0].set_ylabel("seconds")
    axes[0].legend()
    axes[1].plot(xs, [r["idle_redis_commands_per_s"] for r in rows], "o-", label="Redis commands/s")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("instances on one Redis")
    axes[1].set_ylabel("idle Redis commands per second")
    axes[1].legend()
    fig.suptitle("fleet-limiter: N instances on one Redis (all in one process)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def main_async(sizes: list[int]) -> dict[str, Any]:
    say = Progress()
    logging.basicConfig(level=logging.ERROR)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * max(sizes) + 256  # two connections per instance, with room
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    doc: dict[str, Any] = {
        "policy": SPEC,
        "note": "every instance in this one process (none a separate process): the figures include one "
        "Python process doing the whole fleet's work; join and leave are from the record's Redis time "
        "to the last instance's own apply time",
        "sizes": [],
    }
    with RedisServer() as redis:
        redis.command("CONFIG", "SET", "maxclients", str(max(10000, need)))
        say(f"private redis-server on {redis.url}")
        for n in sizes:
            doc["sizes"].append(await one_size(redis, n, say))
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="sizes 5 and 20 only")
    parser.add_argument("--sizes", default=None, help="comma-separated instance counts")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--name",
        default="fleet_scale",
        help="the results file's name (fleet_scale-before: the code before a change)",
    )
    parser.add_argument("--code", default=CODE, help="what code this measures, for the docs")
    args = parser.parse_args()
    sizes = (
        [int(s) for s in args.sizes.split(",")] if args.sizes else ([5, 20] if args.smoke else list(SIZES))
    )
    doc = asyncio.run(main_async(sizes))
    doc["smoke"] = args.smoke
    doc["code"] = args.code
    name = f"{args.name}-smoke" if args.smoke else args.name
    path = write_results(name, doc, args.results_dir)
    plot(doc, args.results_dir / f"{name}.png")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
