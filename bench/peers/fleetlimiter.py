"""fleet-limiter as the benchmark drives it: three `fleet-limiter serve` processes sharing one Redis,
used through the lease API (the decision service) and through the LLM proxy (the gateway), and a
`LimiterInstance` in process (the library).

One policy serves every workload: a model per accuracy trial with ``requestsPerMinute = L`` (so
each trial starts from a fresh window budget), and an ``open`` model with limits far above the
load for the overhead and throughput workloads. Every model forwards to the stand-in LLM server.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.common import safe_env
from bench.peers.harness import stop, wait_http
from limiter.core.policy import parse_policy
from limiter.fleet.instance import LimiterInstance
from limiter.fleet.settings import ServeSettings
from limiter.redis.fleetstore import RedisStore
from tests.support.redis_server import free_port

EXE = Path(sys.executable).with_name("fleet-limiter")
OPEN = "open"
JOB = "job"
#: The overhead workloads' job type: it may wait (up to 5 s, as in bench/fleet.py) for a slot or a
#: budget draw, so a request is never refused while the open model's limits are far away.
WAITING_JOB = "job-waits"


def policy_spec(trials: list[str], limit: int, upstream: str) -> dict[str, Any]:
    """Accuracy models (RPM = limit), the open model, and one job type that never queues."""
    up = {"url": upstream, "protocol": "openai"}
    models = [{"name": t, "limits": {"requestsPerMinute": limit}, "upstream": up} for t in trials]
    models.append(
        {
            "name": OPEN,
            "limits": {"requestsPerMinute": 10**9, "maxConcurrentRequests": 100000},
            "upstream": up,
        }
    )
    return {
        "models": models,
        "jobTypes": [
            {
                "name": JOB,
                "ratio": 0.5,
                "estimate": {"requests": 1, "tokens": 1},
                # Refuse at once rather than queue, as the peers do (their answer is 429).
                "queue": {"maxWaiting": 100000, "maxWaitSeconds": 0},
            },
            {
                "name": WAITING_JOB,
                "ratio": 0.5,
                "estimate": {"requests": 1, "tokens": 1},
                "models": [OPEN],
                "queue": {"maxWaiting": 100000, "maxWaitSeconds": 5},
            },
        ],
        "instance": {"heartbeatSeconds": 1, "instanceTimeoutSeconds": 3},
    }


class FleetLimiter:
    """Three `fleet-limiter serve` replicas; ``decide`` uses the lease API, ``proxy_decide`` the proxy."""

    replicas = 3

    def __init__(self, redis_url: str, upstream: str, trials: list[str], limit: int, folder: Path) -> None:
        self.redis_url = redis_url
        self.spec = policy_spec(trials, limit, upstream)
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> FleetLimiter:
        policy = self.folder / "fleet-limiter.yaml"
        manifest = {"kind": "RateLimitPolicy", "metadata": {"name": "peers", "namespace": "bench"}}
        policy.write_text(yaml.safe_dump({**manifest, "spec": self.spec}))
        try:
            for i in range(self.replicas):
                port = free_port()
                log = (self.folder / f"fleet-limiter-{i}.log").open("wb")
                self.procs.append(
                    subprocess.Popen(  # noqa: ASYNC220 (spawned once at set-up, not on a hot path)
                        [
                            str(EXE),
                            "serve",
                            "--policy",
                            str(policy),
                            "--redis",
                            self.redis_url,
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(port),
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=safe_env({"FLEET_LIMITER_INSTANCE_ID": f"peers-{i}"}),
                        cwd=self.folder,
                    )
                )
                log.close()  # the child holds its own copy
                self.urls.append(f"http://127.0.0.1:{port}")
            for url, proc in zip(self.urls, self.procs, strict=True):
                await wait_http(url + "/ready", proc=proc)
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
            await self._until_three()
        except BaseException:
            stop(self.procs)
            raise
        return self

    async def _until_three(self) -> None:
        assert self.session is not None
        for _ in range(200):
            counts = []
            for url in self.urls:
                async with self.session.get(url + "/api/debug/allocation") as r:
                    counts.append((await r.json())["allocation"]["instanceCount"])
            if all(c == self.replicas for c in counts):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the three replicas never agreed on 3 instances: {counts}")

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        stop(self.procs)

    def pids(self) -> list[int]:
        """The replica the overhead workloads load (replica 0)."""
        return [self.procs[0].pid]

    # -- the lease API -----------------------------------------------------------------------------

    async def decide(self, replica: int, trial: str) -> bool:
        """Acquire a lease on ``trial`` (no waiting) and release it at once with 1 request used."""
        assert self.session is not None
        url = self.urls[replica]
        body = {"jobType": JOB, "models": [trial], "waitSeconds": 0}
        async with self.session.post(url + "/api/jobs/acquire", json=body) as r:
            doc = await r.json()
            if r.status == 503:
                return False
            if r.status != 200:
                raise RuntimeError(f"acquire answered {r.status}: {doc}")
        async with self.session.post(
            url + f"/api/jobs/{doc['leaseId']}/release", json={"actual": {"requests": 1, "tokens": 1}}
        ) as r:
            await r.read()
        return True

    async def call(self) -> None:
        """One job's decisions on the open model: acquire + release (two HTTP requests)."""
        assert self.session is not None
        body = {"jobType": WAITING_JOB, "models": [OPEN], "waitSeconds": 5}
        async with self.session.post(self.urls[0] + "/api/jobs/acquire", json=body) as r:
            doc = await r.json()
            if r.status != 200:
                raise RuntimeError(f"acquire answered {r.status}: {doc}")
        async with self.session.post(
            self.urls[0] + f"/api/jobs/{doc['leaseId']}/release",
            json={"actual": {"requests": 1, "tokens": 1}},
        ) as r:
            await r.read()

    # -- the LLM proxy -----------------------------------------------------------------------------

    async def proxy_decide(self, replica: int, trial: str, job_type: str = JOB) -> bool:
        """A chat completion for model ``trial`` through the proxy: 200 admitted, 503 refused."""
        assert self.session is not None
        body = {"model": trial, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        url = self.urls[replica] + "/v1/chat/completions"
        async with self.session.post(url, json=body, headers={"X-Job-Type": job_type}) as r:
            text = await r.text()
            if r.status in (503, 429) and job_type == JOB:
                return False
            if r.status != 200:
                raise RuntimeError(f"proxy answered {r.status}: {text[:200]}")
        return True

    async def proxy_call(self) -> None:
        await self.proxy_decide(0, OPEN, WAITING_JOB)


class FleetLimiterInProcess:
    """One `LimiterInstance` in this process (the library use: no HTTP, same Redis)."""

    def __init__(self, redis_url: str, upstream: str, trials: list[str], limit: int) -> None:
        self.spec, _ = parse_policy(policy_spec(trials, limit, upstream))
        self.store = RedisStore.from_url(redis_url, "bench", "peers-inproc")
        self.instance = LimiterInstance(ServeSettings(instance_id="peers-inproc"), self.store, self.spec)

    async def __aenter__(self) -> FleetLimiterInProcess:
        await self.instance.run()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.instance.stop()
        await self.store.close()

    async def call(self) -> None:
        ticket = await self.instance.acquire(WAITING_JOB, [OPEN], wait_seconds=5)
        await self.instance.release(ticket.id, {"requests": 1, "tokens": 1})
