"""The LiteLLM proxy as the LLM-gateway peer: three replicas sharing the benchmark's Redis, in front of
the stand-in LLM server, with an RPM limit per deployment.

Each model (one per accuracy trial, and ``open`` for overhead) is one deployment with ``rpm`` set,
routed with ``usage-based-routing-v2`` (the strategy that enforces a deployment's rpm before the
call) and ``enable_pre_call_checks``; the replicas share usage through Redis (``router_settings``
``redis_host``/``redis_port``). No database; a master key made per run (the proxy refuses to start
without one) sent as ``Authorization: Bearer``. It starts offline with
``LITELLM_LOCAL_MODEL_COST_MAP=True`` (else it fetches a price list at import) and telemetry off.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.peers.harness import stop, wait_http
from bench.peers.install import LITELLM_VERSION, ensure_litellm, safe_env
from tests.support.redis_server import free_port

OPEN = "open"
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
    "OPENAI_API_KEY": "sk-bench-unused",
}


def config(trials: list[str], limit: int, upstream: str, redis_port: int, key: str) -> dict[str, Any]:
    """The proxy's config.yaml: a deployment per model, each with its rpm."""

    def deployment(name: str, rpm: int) -> dict[str, Any]:
        return {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{name}",
                "api_base": upstream + "/v1",
                "api_key": "sk-bench-unused",
                "rpm": rpm,
            },
        }

    return {
        "model_list": [deployment(t, limit) for t in trials] + [deployment(OPEN, 10**9)],
        "router_settings": {
            "routing_strategy": "usage-based-routing-v2",
            "enable_pre_call_checks": True,
            "redis_host": "127.0.0.1",
            "redis_port": redis_port,
            "num_retries": 0,
        },
        "litellm_settings": {"num_retries": 0, "request_timeout": 30, "telemetry": False},
        "general_settings": {"master_key": key},
    }


class LiteLLMProxy:
    """Three `litellm --config` processes; ``decide`` is one chat completion (200 or 429)."""

    replicas = 3
    version = LITELLM_VERSION

    def __init__(self, redis_port: int, upstream: str, trials: list[str], limit: int, folder: Path) -> None:
        self.key = "sk-" + secrets.token_hex(32)
        self.conf = config(trials, limit, upstream, redis_port, self.key)
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LiteLLMProxy:
        exe = ensure_litellm()
        path = self.folder / "litellm.yaml"
        path.write_text(yaml.safe_dump(self.conf))
        env = safe_env(OFFLINE_ENV)
        try:
            for i in range(self.replicas):
                port = free_port()
                log = (self.folder / f"litellm-{i}.log").open("wb")
                self.procs.append(
                    subprocess.Popen(  # noqa: ASYNC220 (spawned once at set-up, not on a hot path)
                        [str(exe), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=self.folder,
                    )
                )
                log.close()  # the child holds its own copy
                self.urls.append(f"http://127.0.0.1:{port}")
            for url, proc in zip(self.urls, self.procs, strict=True):
                await wait_http(url + "/health/liveliness", within=180, proc=proc)
        except BaseException:
            stop(self.procs)
            raise
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200), headers={"Authorization": f"Bearer {self.key}"}
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        stop(self.procs)

    def pids(self) -> list[int]:
        return [self.procs[0].pid]

    async def decide(self, replica: int, trial: str) -> bool:
        assert self.session is not None
        body = {"model": trial, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        async with self.session.post(self.urls[replica] + "/v1/chat/completions", json=body) as r:
            text = await r.text()
            if r.status == 429:
                return False
            if r.status != 200:
                raise RuntimeError(f"litellm answered {r.status}: {text[:200]}")
        return True

    async def call(self) -> None:
        if not await self.decide(0, OPEN):
            raise RuntimeError("litellm refused a request on the open model")
