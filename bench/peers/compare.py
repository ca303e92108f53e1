"""fleet-limiter side by side with its peers, in one run, on one machine, one Redis, one workload.

    python -P bench/peers/compare.py [--smoke] [--peers fleet-limiter,limits,ratelimit,litellm]

Peers (installed or built into a cache outside the repo by bench/peers/install.py): envoyproxy/
ratelimit (decision service), the LiteLLM proxy (LLM gateway), the ``limits`` library (library).
Workloads (bench/peers/harness.py):

* accuracy: three replicas, a limit of L requests per minute, L x load requests offered at an even
  pace over a few seconds inside one minute window, round-robin over the replicas, nobody waits:
  admitted / L, over-admission and under-use, at 1.0x and 3.0x;
* overhead: latency per call at concurrency 1, 10, 50 (a decision service's call is all overhead;
  a gateway's added latency is measured per request pair: each client sends the same request
  through the gateway and straight to the stand-in LLM, one after the other, and the difference of
  the two is one sample; never a difference of percentiles from separate runs);
* throughput per core: calls per CPU-second of the loaded replica's process (and with Redis's CPU
  added), from the concurrency-50 run;
* fleet-limiter only: join/leave convergence (bench/fleet.py's measurement) and borrowing
  utilisation (bench/peers/borrowing.py).

Writes bench/results/peers.json and peers.png (``peers-smoke.*`` with ``--smoke``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import yaml

from bench.common import Progress, write_results
from bench.peers import borrowing
from bench.peers.harness import (
    FakeLLM,
    accuracy,
    closed_loop,
    cpu_seconds,
    paired_loop,
    wait_for_window_room,
)
from tests.support.redis_server import RedisServer

ALL_PEERS = ("fleet-limiter", "limits", "ratelimit", "litellm")
SMOKE_PEERS = ("fleet-limiter", "limits")
LOADS = (1.0, 3.0)
LEVELS = (1, 10, 50)


class Params:
    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.limit = 30 if smoke else 120
        self.trial_seconds = 2.0 if smoke else 10.0
        self.jobs = 60 if smoke else 3000
        self.seconds = 1.0 if smoke else 6.0
        self.conv_rounds = 1 if smoke else 3
        self.borrow_seconds = 1.0 if smoke else 5.0


def trial_name(prefix: str, load: float) -> str:
    return f"{prefix}-{load:g}x"


class Run:
    """One run: the shared Redis and stand-in LLM, the parameters, and the document being filled."""

    def __init__(self, params: Params, redis: RedisServer, llm: FakeLLM, folder: Path) -> None:
        self.p = params
        self.redis = redis
        self.llm = llm
        self.folder = folder
        self.say = Progress()
        self.direct: Callable[[], Awaitable[None]] | None = None  # the stand-in LLM, called directly
        self.doc: dict[str, Any] = {
            "smoke": params.smoke,
            "params": vars(params),
            "systems": {},
        }

    def system(self, name: str, kind: str, how: str, version: str | None = None) -> dict[str, Any]:
        entry = self.doc["systems"].setdefault(
            name, {"kind": kind, "how": how, "version": version, "accuracy": [], "overhead": []}
        )
        return dict(entry)

    async def accuracy(self, name: str, decide: Callable[[int, str], Awaitable[bool]], prefix: str) -> None:
        for load in LOADS:
            await wait_for_window_room(self.p.trial_seconds, self.say)
            row = await accuracy(
                decide,
                trial=trial_name(prefix, load),
                replicas=3,
                limit=self.p.limit,
                load=load,
                seconds=self.p.trial_seconds,
            )
            self.doc["systems"][name]["accuracy"].append(row)
            self.say(
                f"{name}: accuracy at {load:g}x: {row['admitted']} admitted of {row['offered']} offered, "
                f"L = {row['limit']} (admitted/L {row['admitted_over_limit']:.3f}, errors {row['errors']})"
            )

    async def overhead(self, name: str, call: Callable[[], Awaitable[Any]], pids: list[int]) -> None:
        redis_pid = [self.redis.process.pid] if self.redis.process else []
        for c in LEVELS:
            redis0 = cpu_seconds(redis_pid)
            if self.doc["systems"][name]["kind"] == "gateway":
                assert self.direct is not None, "run_direct sets the direct call first"
                row = await paired_loop(
                    call, self.direct, concurrency=c, jobs=self.p.jobs, seconds=self.p.seconds, pids=pids
                )
            else:
                row = await closed_loop(
                    call, concurrency=c, jobs=self.p.jobs, seconds=self.p.seconds, pids=pids
                )
            row["redis_cpu_seconds"] = cpu_seconds(redis_pid) - redis0
            row["in_process"] = not pids
            self.doc["systems"][name]["overhead"].append(row)
            added = (
                f" (added, per pair: p50 {row['added_p50_ms']:.3f} ms, p99 {row['added_p99_ms']:.3f} ms)"
                if "added_method" in row
                else ""
            )
            self.say(
                f"{name}: {c:2d} clients: p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms{added}, "
                f"{row['calls_per_second']:.0f}/s, failures {row['failures']}"
            )


async def run_fleet_limiter(run: Run) -> None:
    from bench.peers.fleetlimiter import FleetLimiter, FleetLimiterInProcess

    trials = [trial_name(p, load) for p in ("acc", "gw") for load in LOADS]
    run.system(
        "fleet-limiter",
        "decision",
        "3 `fleet-limiter serve` replicas, lease API over HTTP "
        "(acquire with waitSeconds 0 + release: 2 requests per job)",
    )
    run.system(
        "fleet-limiter proxy",
        "gateway",
        "3 `fleet-limiter serve` replicas, OpenAI proxy in "
        "front of the stand-in LLM (job type maxWaitSeconds 0)",
    )
    run.system(
        "fleet-limiter in process",
        "library",
        "a LimiterInstance in the benchmark process (acquire + release, no HTTP)",
    )
    async with FleetLimiter(run.redis.url, run.llm.url, trials, run.p.limit, run.folder) as fl:
        run.say("fleet-limiter: 3 replicas up")
        await run.accuracy("fleet-limiter", fl.decide, "acc")
        await run.accuracy("fleet-limiter proxy", fl.proxy_decide, "gw")
        await run.overhead("fleet-limiter", fl.call, fl.pids())
        await run.overhead("fleet-limiter proxy", fl.proxy_call, fl.pids())
    async with FleetLimiterInProcess(run.redis.url, run.llm.url, trials, run.p.limit) as inproc:
        await run.overhead("fleet-limiter in process", inproc.call, [])


async def run_limits(run: Run) -> None:
    from bench.peers.limits_lib import LimitsLibrary

    for strategy in ("fixed-window", "moving-window"):
        name = f"limits {strategy}"
        lib = LimitsLibrary(run.redis.url, run.p.limit, strategy)
        run.system(
            name,
            "library",
            f"3 async RedisStorage (redis-py) + {strategy} limiters in the "
            "benchmark process, one hit per request",
            lib.version,
        )
        async with lib:
            await run.accuracy(name, lib.decide, f"limits-{strategy}")
            await run.overhead(name, lib.call, [])


async def run_ratelimit(run: Run) -> None:
    from bench.peers.ratelimit import EnvoyRateLimit

    svc = EnvoyRateLimit(run.redis.port, run.p.limit, run.folder)
    run.system(
        "envoy ratelimit",
        "decision",
        "3 `service_cmd` replicas, POST /json (one ShouldRateLimit per request)",
        svc.version,
    )
    async with svc:
        run.say("envoy ratelimit: 3 replicas up")
        await run.accuracy("envoy ratelimit", svc.decide, "acc")
        await run.overhead("envoy ratelimit", svc.call, svc.pids())


async def run_litellm(run: Run) -> None:
    from bench.peers.litellm_proxy import LiteLLMProxy

    trials = [trial_name("acc", load) for load in LOADS]
    proxy = LiteLLMProxy(run.redis.port, run.llm.url, trials, run.p.limit, run.folder)
    run.system(
        "litellm proxy",
        "gateway",
        "3 `litellm --config` replicas (usage-based-routing-v2, rpm "
        "per deployment, Redis) in front of the stand-in LLM",
        proxy.version,
    )
    async with proxy:
        run.say("litellm proxy: 3 replicas up")
        await run.accuracy("litellm proxy", proxy.decide, "acc")
        await run.overhead("litellm proxy", proxy.call, proxy.pids())


async def run_direct(run: Run, session: aiohttp.ClientSession) -> None:
    """The stand-in LLM called directly: its own latency (for reference), and the direct half of
    every gateway's request pairs (``run.direct``)."""
    run.system("stand-in LLM direct", "baseline", "POST /v1/chat/completions to the stand-in LLM itself")
    body = {"model": "open", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}

    async def call() -> None:
        async with session.post(run.llm.url + "/v1/chat/completions", json=body) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"stand-in answered {r.status}")

    run.direct = call
    assert run.llm.proc is not None
    await run.overhead("stand-in LLM direct", call, [run.llm.proc.pid])


async def run_fleet_only(run: Run) -> None:
    from bench.fleet import SPEC, convergence

    results: dict[str, Any] = {}
    for flexible in (True, False):
        row = await borrowing.utilisation(run.redis.url, flexible, run.p.borrow_seconds)
        results["flexible" if flexible else "static"] = row
        run.say(
            f"borrowing, {'flexible' if flexible else 'static'} split: utilisation {row['utilisation']:.3f}"
        )
    results["flexible_over_static"] = ratio(
        results["flexible"]["utilisation"], results["static"]["utilisation"], "static utilisation"
    )
    run.doc["borrowing"] = results
    policy = run.folder / "conv.yaml"
    manifest = {
        "kind": "RateLimitPolicy",
        "metadata": {"name": "peers-conv", "namespace": "bench"},
        "spec": SPEC,
    }
    policy.write_text(yaml.safe_dump(manifest))
    conv = await convergence(run.redis, policy, run.p.conv_rounds)
    run.doc["convergence"] = conv
    run.say(
        f"convergence ({run.p.conv_rounds} round(s)): join p50 {conv['join_seconds']['p50_ms']:.1f} ms, "
        f"graceful leave p50 {conv['graceful_leave_seconds']['p50_ms']:.1f} ms"
    )


RUNNERS: dict[str, Callable[[Run], Awaitable[None]]] = {
    "fleet-limiter": run_fleet_limiter,
    "limits": run_limits,
    "ratelimit": run_ratelimit,
    "litellm": run_litellm,
}


def row_at(system: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    return next((r for r in system["overhead"] if r["concurrency"] == concurrency), None)


def per_core(system: dict[str, Any]) -> dict[str, float] | None:
    """Calls per CPU-second at concurrency 50: of the loaded process (the benchmark process itself
    for a library), and with Redis's CPU added."""
    row = row_at(system, LEVELS[-1])
    if row is None or not row["calls"]:
        return None
    own = row["client_cpu_seconds"] if row["in_process"] else row["server_cpu_seconds"]
    if own <= 0:  # too short a run for /proc's clock ticks: no figure rather than a huge one
        return None
    return {
        "calls_per_cpu_second": row["calls"] / own,
        "calls_per_cpu_second_with_redis": row["calls"] / (own + row["redis_cpu_seconds"]),
    }


def ratio(num: float | None, den: float | None, what: str) -> dict[str, Any]:
    """``num / den`` as ``{"value": x}``, or ``{"value": None, "reason": ...}`` when the denominator
    is not positive (an added latency at or under zero has no meaningful ratio) or a side is missing."""
    if num is None or den is None:
        return {"value": None, "reason": f"{what}: not measured"}
    if den <= 0:
        return {"value": None, "reason": f"{what}: denominator {den:.4g} is not positive"}
    return {"value": num / den}


def added(system: dict[str, Any]) -> None:
    """A decision service's or library's call is all overhead (added = its latency); a gateway's
    added latency comes from its request pairs (``paired_loop``) and is left as measured."""
    if system["kind"] in ("gateway", "baseline"):
        return
    for row in system["overhead"]:
        row["added_method"] = "whole call"
        row["added_p50_ms"], row["added_p99_ms"] = row["p50_ms"], row["p99_ms"]


def ratios(doc: dict[str, Any]) -> dict[str, Any]:
    """Peer / fleet-limiter, pair by pair: each peer against the fleet-limiter form of its kind.
    Every ratio is ``{"value": x}`` or ``{"value": null, "reason": ...}``, never a guess."""
    systems = doc["systems"]
    out: dict[str, Any] = {"accuracy_admitted_over_limit": {}, "pairs": {}}
    for name, s in systems.items():
        out["accuracy_admitted_over_limit"][name] = {
            f"{r['load']:g}x": r["admitted_over_limit"] for r in s["accuracy"]
        }
        s["per_core"] = per_core(s)
        added(s)
    pairs = {
        "envoy ratelimit": "fleet-limiter",
        "litellm proxy": "fleet-limiter proxy",
        "limits fixed-window": "fleet-limiter in process",
        "limits moving-window": "fleet-limiter in process",
    }
    for peer, ours in pairs.items():
        if peer not in systems or ours not in systems:
            continue
        p, o = systems[peer], systems[ours]
        pair: dict[str, Any] = {"against": ours, "added_latency_peer_over_ours": {}}
        for c in LEVELS:
            pr, orow = row_at(p, c) or {}, row_at(o, c) or {}
            pair["added_latency_peer_over_ours"][str(c)] = {
                q: ratio(pr.get(f"added_{q}_ms"), orow.get(f"added_{q}_ms"), f"added {q} at {c} clients")
                for q in ("p50", "p99")
            }
        pair["per_core_peer_over_ours"] = ratio(
            (p["per_core"] or {}).get("calls_per_cpu_second"),
            (o["per_core"] or {}).get("calls_per_cpu_second"),
            "calls per CPU-second",
        )
        pair["over_admission_at_3x"] = {
            "peer": next((r["over_admission"] for r in p["accuracy"] if r["load"] == 3.0), None),
            "ours": next((r["over_admission"] for r in o["accuracy"] if r["load"] == 3.0), None),
        }
        out["pairs"][peer] = pair
    return out


async def run_peers(run: Run, peers: list[str]) -> None:
    """Each peer in turn; one that cannot be installed or started is reported, the others still run."""
    for name in peers:
        try:
            await RUNNERS[name](run)
        except Exception as exc:
            run.doc.setdefault("failed", {})[name] = f"{type(exc).__name__}: {exc}"
            run.say(f"{name}: FAILED: {type(exc).__name__}: {exc}")
    if "fleet-limiter" in peers:
        await run_fleet_only(run)


async def main_async(smoke: bool, peers: list[str]) -> dict[str, Any]:
    params = Params(smoke)
    with RedisServer() as redis, FakeLLM() as llm, tempfile.TemporaryDirectory() as tmp:
        run = Run(params, redis, llm, Path(tmp))
        run.say(f"private redis-server on {redis.url}, stand-in LLM on {llm.url}; peers: {', '.join(peers)}")
        run.doc["peers"] = peers
        direct_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        async with direct_session:
            await run_direct(run, direct_session)
            await run_peers(run, peers)
        run.doc["ratios"] = ratios(run.doc)
        return run.doc


def main() -> int:
    parser = argparse.ArgumentParser(description="fleet-limiter side by side with its peers")
    parser.add_argument("--smoke", action="store_true", help="tiny durations, to check the script runs")
    parser.add_argument(
        "--peers",
        default=None,
        help=f"comma-separated, from {', '.join(ALL_PEERS)} or 'all' (default: all; with --smoke: "
        f"{', '.join(SMOKE_PEERS)}, as the others need a build or install of minutes the first time)",
    )
    parser.add_argument("--out", default=None, help="results name (default peers, or peers-smoke)")
    parser.add_argument("--results-dir", type=Path, default=None, help="default bench/results")
    args = parser.parse_args()
    if args.peers in (None, ""):
        peers = list(SMOKE_PEERS if args.smoke else ALL_PEERS)
    elif args.peers == "all":
        peers = list(ALL_PEERS)
    else:
        peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in ALL_PEERS]
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(ALL_PEERS)}")
    doc = asyncio.run(main_async(args.smoke, peers))
    name = args.out or ("peers-smoke" if args.smoke else "peers")
    path = write_results(name, doc, args.results_dir)
    from bench.peers.plot import plot

    plot(doc, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png').name}")
    return 1 if doc.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
