"""envoyproxy/ratelimit as the decision-service peer: three replicas of its Go service sharing the
benchmark's Redis, driven over HTTP/1 through its ``POST /json`` endpoint (on its main HTTP port:
the service decodes the JSON into the same ``RateLimitRequest`` its gRPC API takes and calls the
same ``ShouldRateLimit``; 200 is OK, 429 OVER_LIMIT).

Its config has one descriptor key ``trial`` with ``requests_per_unit = L`` per ``minute``: each
distinct value (one per accuracy trial) is its own counter, a fixed window aligned to the minute
(``now / 60 * 60``), as fleet-limiter's are. The ``open`` key has a limit far above the load. No
local over-limit cache (``LOCAL_CACHE_SIZE_IN_BYTES=0``, the default), statsd off.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import aiohttp
import yaml

from bench.peers.harness import stop, wait_http
from bench.peers.install import RATELIMIT_VERSION, ensure_ratelimit
from tests.support.redis_server import free_port

DOMAIN = "bench"
OPEN = "open"


def config(limit: int) -> dict[str, object]:
    return {
        "domain": DOMAIN,
        "descriptors": [
            {"key": "trial", "rate_limit": {"unit": "minute", "requests_per_unit": limit}},
            {"key": OPEN, "rate_limit": {"unit": "minute", "requests_per_unit": 10**9}},
        ],
    }


class EnvoyRateLimit:
    """Three `service_cmd` replicas; ``decide`` is one ShouldRateLimit call through ``/json``."""

    replicas = 3
    version = RATELIMIT_VERSION

    def __init__(self, redis_port: int, limit: int, folder: Path) -> None:
        self.redis_port = redis_port
        self.limit = limit
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> EnvoyRateLimit:
        binary = ensure_ratelimit()
        runtime = self.folder / "ratelimit-runtime"
        (runtime / "ratelimit" / "config").mkdir(parents=True, exist_ok=True)
        (runtime / "ratelimit" / "config" / "bench.yaml").write_text(yaml.safe_dump(config(self.limit)))
        try:
            for i in range(self.replicas):
                port = free_port()
                env = {
                    **os.environ,
                    "RUNTIME_ROOT": str(runtime),
                    "RUNTIME_SUBDIRECTORY": "ratelimit",
                    "RUNTIME_WATCH_ROOT": "false",
                    "USE_STATSD": "false",
                    "LOG_LEVEL": "warn",
                    "REDIS_SOCKET_TYPE": "tcp",
                    "REDIS_URL": f"127.0.0.1:{self.redis_port}",
                    "HOST": "127.0.0.1",
                    "PORT": str(port),
                    "GRPC_HOST": "127.0.0.1",
                    "GRPC_PORT": str(free_port()),
                    "DEBUG_HOST": "127.0.0.1",
                    "DEBUG_PORT": str(free_port()),
                }
                log = (self.folder / f"ratelimit-{i}.log").open("wb")
                self.procs.append(
                    subprocess.Popen(  # noqa: ASYNC220 (spawned once at set-up, not on a hot path)
                        [str(binary)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.folder
                    )
                )
                log.close()  # the child holds its own copy
                self.urls.append(f"http://127.0.0.1:{port}")
            for url, proc in zip(self.urls, self.procs, strict=True):
                await wait_http(url + "/healthcheck", proc=proc)
        except BaseException:
            stop(self.procs)
            raise
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        stop(self.procs)

    def pids(self) -> list[int]:
        return [self.procs[0].pid]

    async def _should(self, replica: int, key: str, value: str) -> bool:
        assert self.session is not None
        body = {"domain": DOMAIN, "descriptors": [{"entries": [{"key": key, "value": value}]}]}
        async with self.session.post(self.urls[replica] + "/json", json=body) as r:
            text = await r.text()
            if r.status == 429:
                return False
            if r.status != 200:
                raise RuntimeError(f"ratelimit answered {r.status}: {text[:200]}")
        return True

    async def decide(self, replica: int, trial: str) -> bool:
        return await self._should(replica, "trial", trial)

    async def call(self) -> None:
        if not await self._should(0, OPEN, "x"):
            raise RuntimeError("ratelimit refused the open descriptor")
