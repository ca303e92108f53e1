"""Fixtures for proxy tests: real `fleet-limiter serve` processes (tests/support/fleet.py) in front
of the stand-in LLM server (tests/fakes/llm_server.py), all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.support.fleet import Fleet, Instance
from tests.support.http import http
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

ADMIN_TOKEN = "proxy-tests-admin-token"
ENV = {"FLEET_LIMITER_ADMIN_TOKEN": ADMIN_TOKEN}


def model(
    name: str, url: str, protocol: str = "openai", limits: dict[str, int] | None = None, **upstream: Any
) -> dict[str, Any]:
    """A policy model forwarded to ``url``."""
    return {
        "name": name,
        "limits": limits or {"maxConcurrentRequests": 8},
        "upstream": {"url": url, "protocol": protocol, **upstream},
    }


def spec(
    models: list[dict[str, Any]], job_types: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    """A policy spec with one job type (``chat``) unless told otherwise."""
    return {
        "models": models,
        "jobTypes": job_types or [{"name": "chat", "ratio": 1.0, "estimate": {"tokens": 500}}],
        **extra,
    }


def start_proxy(
    fleet: Fleet,
    policy: str,
    models: list[dict[str, Any]],
    job_types: list[dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
) -> Instance:
    """One instance of a policy of its own (``policy``) proxying ``models``, with the admin token."""
    fleet.write_policy(policy, spec(models, job_types))
    (inst,) = fleet.start(1, env={**ENV, **(env or {})})
    return inst


def day_tokens_used(inst: Instance, name: str) -> int:
    """Tokens the model's current day window has used on this instance (reservations settled)."""
    return int(inst.allocation()["budgets"][name]["tokensPerDay"]["used"])


def openai_client(inst: Instance, job_type: str | None = None) -> openai.OpenAI:
    """The real OpenAI SDK pointed at the instance. ``max_retries=0``: the SDK would retry 5xx on
    its own and hide what the proxy answered."""
    headers = {"X-Job-Type": job_type} if job_type else None
    return openai.OpenAI(
        base_url=inst.url + "/v1", api_key="client-key", max_retries=0, timeout=30, default_headers=headers
    )


def async_openai_client(inst: Instance) -> openai.AsyncOpenAI:
    """The SDK's async client, as :func:`openai_client`."""
    return openai.AsyncOpenAI(base_url=inst.url + "/v1", api_key="client-key", max_retries=0, timeout=30)


def metric(inst: Instance, name: str, labels: str) -> float:
    """One sample of /metrics (0 when absent); ``labels`` as exposed: ``model="m",reason="r"``."""
    status, text, _ = http("GET", inst.url + "/metrics")
    assert status == 200
    prefix = f"{name}{{{labels}}} "
    return next((float(x.removeprefix(prefix)) for x in text.splitlines() if x.startswith(prefix)), 0.0)


def stats(inst: Instance, name: str) -> dict[str, Any]:
    """One model's entry of /queue/stats."""
    return inst.get(f"/queue/stats?model={name}")["models"][name]  # type: ignore[no-any-return]


def in_flight(inst: Instance) -> int:
    """Leases held on the instance, over all job types."""
    return sum(j["inFlight"] for j in inst.allocation()["jobTypes"].values())


def settled(inst: Instance, name: str) -> None:
    """Wait until the model has nothing active or queued and every lease is back."""
    wait_until(
        lambda: (
            (s := stats(inst, name))["active_requests"] == 0
            and s["queued_requests"] == 0
            and in_flight(inst) == 0
        ),
        timeout=10,
    )


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    """A stand-in LLM server of this test's own."""
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def module_llm() -> Iterator[FakeLLMServer]:
    """A stand-in LLM server shared by a module's tests (each test uses models of its own)."""
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def module_fleet(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Fleet]:
    """A fleet shared by a module's tests."""
    redis_server.start()
    f = Fleet(tmp_path_factory.mktemp("proxy-fleet"), redis_server.url)
    yield f
    f.close()


@dataclass
class Answer:
    """One HTTP answer, timed."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> Answer:
    """POST a JSON body and read the whole answer."""
    start = time.monotonic()
    async with session.post(url, json=body, headers=headers) as resp:
        raw = await resp.read()
        return Answer(resp.status, dict(resp.headers), raw, time.monotonic() - start)


async def burst(url: str, body: Any, n: int, headers: dict[str, str] | None = None) -> list[Answer]:
    """``n`` concurrent POSTs; each must end within 30 s (no request may hang)."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        return list(await asyncio.gather(*(post(session, url, body, headers) for _ in range(n))))


def admin_update(
    inst: Instance, body: Any, token: str | None = ADMIN_TOKEN
) -> tuple[int, Any, dict[str, str]]:
    """POST /admin/queue/update."""
    return http("POST", inst.url + "/admin/queue/update", body, token=token)
